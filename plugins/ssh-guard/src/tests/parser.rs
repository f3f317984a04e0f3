//! The shell parser's interesting cases, checked through a compact rendering of its tree:
//! pipelines `;`-separated (`?` before a conditional one, `&` after a background one), commands
//! `|`-separated, a simple command in `[…]`, quoted text in `"…"`, expansions as `$name`,
//! `${name<op>operand}`, `$(…)`, `<(…)`, `((…))`.

use crate::shell::{Cmd, Parsed, Piece, Pipeline, Redirect, Script, Word, decode_ansi_c, parse};

fn script(s: &Script) -> String {
    s.pipelines.iter().map(pipeline).collect::<Vec<_>>().join("; ")
}

fn pipeline(p: &Pipeline) -> String {
    let cmds = p.commands.iter().map(cmd).collect::<Vec<_>>().join(" | ");
    format!(
        "{}{cmds}{}",
        if p.conditional { "?" } else { "" },
        if p.background { " &" } else { "" }
    )
}

fn cmd(c: &Cmd) -> String {
    match c {
        Cmd::Simple(s) => {
            let mut parts: Vec<String> = s.assigns.iter().map(|w| format!("{}=", word(w))).collect();
            parts.extend(s.words.iter().map(word));
            parts.extend(s.redirects.iter().map(redirect));
            format!("[{}]", parts.join(" "))
        }
        Cmd::Group {
            script: inner,
            subshell,
            redirects,
        } => {
            let (open, close) = if *subshell { ("(", ")") } else { ("{", "}") };
            let r: Vec<String> = redirects.iter().map(redirect).collect();
            format!("{open}{}{close}{}", script(inner), r.concat())
        }
        Cmd::Function { name, body } => format!("{name}() {}", cmd(body)),
    }
}

fn redirect(r: &Redirect) -> String {
    let fd = r.fd.map(|n| n.to_string()).unwrap_or_default();
    let doc = r
        .heredoc
        .as_ref()
        .map(|d| format!("<<{:?}{}>>", d.body, if d.expands { "*" } else { "" }))
        .unwrap_or_default();
    format!("{fd}{}{}{doc}", r.op.symbol(), word(&r.target))
}

fn word(w: &Word) -> String {
    pieces(&w.pieces)
}

fn pieces(ps: &[Piece]) -> String {
    ps.iter()
        .map(|p| match p {
            Piece::Lit { text, quoted: false } => text.clone(),
            Piece::Lit { text, quoted: true } => format!("\"{text}\""),
            Piece::Param {
                name, op, operand, ..
            } => match operand {
                None if op.is_empty() => format!("${name}"),
                None => format!("${{{name}{op}}}"),
                Some(o) => format!("${{{name}{op}{}}}", word(o)),
            },
            Piece::Subst { script: s, .. } => format!("$({})", script(s)),
            Piece::ProcSubst { script: s, .. } => format!("<({})", script(s)),
            Piece::Arith { inner, raw } if inner.is_empty() => raw.clone(),
            Piece::Arith { inner, .. } => format!("(({}))", pieces(inner)),
        })
        .collect()
}

fn tree(text: &str) -> String {
    let Parsed { script: s, problem } = parse(text);
    assert_eq!(problem, None, "problem in {text:?}");
    script(&s)
}

fn problem(text: &str) -> String {
    parse(text)
        .problem
        .unwrap_or_else(|| panic!("no problem in {text:?}"))
}

#[test]
fn lists_and_pipelines() {
    assert_eq!(tree("a | b && c; d &"), "[a] | [b]; ?[c]; [d] &");
    assert_eq!(tree("a || b\nc"), "[a]; ?[b]; [c]");
    assert_eq!(tree("a |& b"), "[a] | [b]");
    assert_eq!(tree("a |\n b"), "[a] | [b]");
    assert_eq!(tree("! a"), "[a]");
    assert_eq!(tree("a # b | c"), "[a]");
    assert_eq!(tree("a \\\n b"), "[a b]");
    assert_eq!(tree(""), "");
}

#[test]
fn quoting_and_escapes() {
    assert_eq!(tree("r\"\"m -rf /"), "[r\"\"m -rf /]");
    assert_eq!(tree("'rm' \\rm"), "[\"rm\" \"r\"m]");
    assert_eq!(tree("$'\\x72\\x6d' $'a\\'b'"), "[\"rm\" \"a'b\"]");
    assert_eq!(
        tree("echo \"a $X `b`\" 'c $Y'"),
        "[echo \"a \"$X\" \"$([b])\"\" \"c $Y\"]"
    );
    assert_eq!(tree("echo \"\\$x \\\" \\a\""), "[echo \"$x \" \\a\"]");
    assert_eq!(tree("echo a\rb"), "[echo a b]");
}

#[test]
fn expansions() {
    assert_eq!(tree("echo $(a $(b) `c`)"), "[echo $([a $([b]) $([c])])]");
    assert_eq!(
        tree("echo ${a:-$(b)} ${#x} ${x//a/b}"),
        "[echo ${a:-$([b])} $#x ${x//a/b}]"
    );
    assert_eq!(tree("echo ${!BASH*} ${a[@]} $@ $1"), "[echo $!BASH* $a[@] $@ $1]");
    assert_eq!(tree("cat <(a) >(b)"), "[cat <([a]) <([b])]");
    assert_eq!(tree("echo $((1 + $(a)))"), "[echo (($([a])))]");
    assert_eq!(tree("A=1 B=$(x) cmd arg=2"), "[A=1= B=$([x])= cmd arg=2]");
    assert_eq!(tree("a=(1 \"2 3\")"), "[a=(1\" \"\"2 3\"\" \")=]");
}

#[test]
fn redirections() {
    assert_eq!(
        tree("a 2>&1 >f &>g &>>h >|i <j 3<>k"),
        "[a 2>&1 >f &>g &>>h >|i <j 3<>k]"
    );
    assert_eq!(tree("a <<< 'x y'"), "[a <<<\"x y\"]");
    assert_eq!(tree("(a) > f"), "([a])>f");
}

#[test]
fn here_documents() {
    assert_eq!(
        tree("cat <<EOF\nx $(y)\nEOF\nz"),
        "[cat <<EOF<<\"x $(y)\\n\"*>>]; [z]"
    );
    assert_eq!(tree("cat <<'EOF'\n$x\nEOF"), "[cat <<\"EOF\"<<\"$x\\n\">>]");
    assert_eq!(tree("cat <<-EOF\n\tx\n\tEOF"), "[cat <<-EOF<<\"x\\n\"*>>]");
    // The expansions of an unquoted body are parsed (and so are checked).
    let parsed = parse("cat <<EOF\n$(rm -rf /)\nEOF");
    let Cmd::Simple(s) = &parsed.script.pipelines[0].commands[0] else {
        panic!("not simple")
    };
    let doc = s.redirects[0].heredoc.as_ref().unwrap();
    assert_eq!(word(&doc.expansions), "$([rm -rf /])\"\n\"");
}

#[test]
fn compound_commands() {
    assert_eq!(tree(":(){ :|:& };:"), ":() {[:] | [:] &}; [:]");
    assert_eq!(tree("function f { g; }"), "f() {[g]}");
    assert_eq!(tree("f() ( g )"), "f() ([g])");
    assert_eq!(tree("if a; then b; else c; fi; d"), "?[a]; ?[b]; ?[c]; [d]");
    assert_eq!(tree("for x in a b; do c; done"), "?[for x in a b]; ?[c]");
    assert_eq!(
        tree("for ((i=0; i<3; i++)); do c; done"),
        "?[for ((i=0; i<3; i++))]; ?[c]"
    );
    assert_eq!(tree("(( x = 1 + 2 ))"), "[(( x = 1 + 2 ))]");
    assert_eq!(tree("while a; do b; done"), "?[a]; ?[b]");
    assert_eq!(
        tree("case $x in a|b) c ;; *) d ;; esac"),
        "{[case $x a b *]; ?[c]; ?[d]}"
    );
    assert_eq!(
        tree("[[ $x == *(a|b) && -f y ]] && z"),
        "[[[ $x == *(a|b) -f y ]]]; ?[z]"
    );
    assert_eq!(tree("time -p a | b"), "[a] | [b]");
    assert_eq!(tree("time (a)"), "([a])");
    assert_eq!(tree("ls !(keep)"), "[ls !(keep)]");
}

#[test]
fn brace_expansion() {
    assert_eq!(tree("echo a{b,c}d"), "[echo abd acd]");
    assert_eq!(tree("{rm,-rf,/}"), "[rm -rf /]");
    assert_eq!(tree("echo {a,b}{1,2}"), "[echo a1 a2 b1 b2]");
    assert_eq!(tree("echo {a,{b,c}}"), "[echo a b c]");
    assert_eq!(tree("find -exec x {} +"), "[find -exec x {} +]");
    assert_eq!(tree("echo {1..3} '{a,b}' {a}"), "[echo {1..3} \"{a,b}\" {a}]");
    assert_eq!(
        problem(&format!("echo {}", "{a,b}".repeat(20))),
        "a brace expansion is too large"
    );
}

#[test]
fn problems() {
    assert_eq!(problem("echo 'a"), "unterminated single quote");
    assert_eq!(problem("echo \"a"), "unterminated double quote");
    assert_eq!(problem("echo $(a"), "missing `)`");
    assert_eq!(problem("echo `a"), "unterminated backquote");
    assert_eq!(problem("echo ${a"), "unterminated `${`");
    assert_eq!(problem("a |"), "it ends with `|`");
    assert_eq!(problem("a &&"), "it ends with `&&`");
    assert_eq!(problem("a \\"), "it ends with a backslash");
    assert_eq!(problem("a )"), "unexpected `)`");
    assert_eq!(problem("{ a"), "missing `}`");
    assert_eq!(problem("a && && b"), "`&&` right after `&&`");
    assert_eq!(problem("a > "), "a redirection without a target");
    assert_eq!(problem(":(){:|:&};:"), "unexpected `}`");
    // Whatever could be parsed is kept.
    assert_eq!(script(&parse("rm -rf / 'x").script), "[rm -rf / \"x\"]");
}

#[test]
fn deep_nesting_is_a_problem_not_a_crash() {
    for text in [
        "$(".repeat(5000),
        "( ".repeat(5000),
        "{ ".repeat(5000),
        "f() ".repeat(5000),
        "${a:-".repeat(5000),
        "echo \"$(".repeat(5000),
        "time ".repeat(5000),
        "case x in x) ".repeat(5000),
    ] {
        assert_eq!(problem(&text), "it is nested too deeply", "{}", &text[..20]);
    }
    assert_eq!(
        problem(&format!("{}x{}", "$(".repeat(60), ")".repeat(60))),
        "it is nested too deeply"
    );
    assert!(
        parse(&format!("{}x{}", "$(".repeat(20), ")".repeat(20)))
            .problem
            .is_none()
    );
}

#[test]
fn ansi_c_escapes() {
    assert_eq!(decode_ansi_c("\\x72\\155\\u00e9\\n\\t\\\\\\q"), "rmé\n\t\\\\q");
    assert_eq!(decode_ansi_c("\\cA\\e"), "\u{1}\u{1b}");
}
