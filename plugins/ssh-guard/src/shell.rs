//! A small parser for the shell command language: POSIX `sh` plus the bash extensions people
//! type (`$'…'`, `[[ … ]]`, `<( … )`, `&>`, `|&`, brace expansion, here-strings).
//!
//! It builds just enough structure for the rules in [`crate::check`]: a script is a list of
//! pipelines; a pipeline is a list of commands; a command is a simple command (assignments,
//! words, redirections), a group (`( … )`, `{ …; }`, a `case`), or a function definition. A
//! word keeps its pieces apart: literal text (and whether it was quoted), parameter
//! expansions, command and process substitutions (parsed recursively) and arithmetic.
//! Reserved words of loops and conditionals (`if`, `then`, `do`, `done`, …) and `time` are
//! skipped: the commands inside them are kept in order and marked conditional. `(( … ))` and
//! `for (( … ))` are arithmetic words. Here-document bodies are read and attached to their
//! redirection. Nesting is limited ([`MAX_NESTING`]) and so is brace expansion, so that any
//! input is parsed in bounded time and stack.
//!
//! The parser never fails: on input the shell would reject or wait for more of (an unterminated
//! quote, `$(` without `)`, a line ending in `|`), it closes what is open at the end of the
//! input, keeps going, and reports the first problem in [`Parsed::problem`]. The caller decides
//! (ssh-guard denies such input).

/// Nesting limit for commands, `$( … )`, `( … )`, `{ … }`, backquotes and `${ … }` inside
/// each other (and `bash -c '…'` / `eval` scripts inside commands).
pub const MAX_NESTING: usize = 48;
/// Largest number of words one brace expansion may produce.
pub const MAX_BRACE_WORDS: usize = 256;
/// Largest word (in characters, with at most [`MAX_BRACE_GROUPS`] unquoted `{`) that brace
/// expansion is tried on; a larger one is a problem.
pub const MAX_BRACE_CHARS: usize = 4096;
pub const MAX_BRACE_GROUPS: usize = 64;

/// The result of [`parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub script: Script,
    /// The first reason the input is not a complete, well-formed command line.
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Script {
    pub pipelines: Vec<Pipeline>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    pub commands: Vec<Cmd>,
    /// Followed by `&`.
    pub background: bool,
    /// Runs depending on an earlier status (after `&&` / `||`) or inside `if`, `while`,
    /// `until`, `for`, `select` or `case`.
    pub conditional: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    Simple(Simple),
    /// `( … )` (`subshell`), `{ …; }` or `case … esac`, with the redirections after it.
    Group {
        script: Script,
        subshell: bool,
        redirects: Vec<Redirect>,
    },
    /// `name() body` or `function name body`.
    Function {
        name: String,
        body: Box<Cmd>,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Simple {
    /// `NAME=value` words before the command word.
    pub assigns: Vec<Word>,
    pub words: Vec<Word>,
    pub redirects: Vec<Redirect>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub fd: Option<u32>,
    pub op: RedirOp,
    /// The file, descriptor, here-document delimiter or here-string.
    pub target: Word,
    /// For `<<` / `<<-`: the body.
    pub heredoc: Option<HereDoc>,
    doc: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HereDoc {
    pub body: String,
    /// Whether the body undergoes expansion (the delimiter was not quoted); `expansions` then
    /// holds its parameter expansions and command substitutions.
    pub expands: bool,
    pub expansions: Word,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirOp {
    /// `<`
    In,
    /// `>`
    Out,
    /// `>>`
    Append,
    /// `>|`
    Clobber,
    /// `<>`
    ReadWrite,
    /// `<<`, `<<-`
    HereDoc { strip_tabs: bool },
    /// `<<<`
    HereString,
    /// `<&`
    DupIn,
    /// `>&` (to a descriptor, or to a file like `&>`)
    DupOut,
    /// `&>`
    OutErr,
    /// `&>>`
    AppendErr,
}

impl RedirOp {
    pub fn symbol(self) -> &'static str {
        match self {
            RedirOp::In => "<",
            RedirOp::Out => ">",
            RedirOp::Append => ">>",
            RedirOp::Clobber => ">|",
            RedirOp::ReadWrite => "<>",
            RedirOp::HereDoc { strip_tabs: false } => "<<",
            RedirOp::HereDoc { strip_tabs: true } => "<<-",
            RedirOp::HereString => "<<<",
            RedirOp::DupIn => "<&",
            RedirOp::DupOut => ">&",
            RedirOp::OutErr => "&>",
            RedirOp::AppendErr => "&>>",
        }
    }

    /// Whether the redirection can write to the file it names (for `>&`, when the target is
    /// not a descriptor number or `-`).
    pub fn writes_to(self, target: &Word) -> bool {
        match self {
            RedirOp::Out | RedirOp::Append | RedirOp::Clobber | RedirOp::ReadWrite => true,
            RedirOp::OutErr | RedirOp::AppendErr => true,
            RedirOp::DupOut => !target
                .literal()
                .is_some_and(|t| t == "-" || (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))),
            RedirOp::In | RedirOp::HereDoc { .. } | RedirOp::HereString | RedirOp::DupIn => false,
        }
    }

    /// Whether the redirection feeds the command's standard input.
    pub fn feeds_stdin(self, fd: Option<u32>) -> bool {
        matches!(
            self,
            RedirOp::In | RedirOp::HereDoc { .. } | RedirOp::HereString | RedirOp::ReadWrite
        ) && fd.is_none_or(|n| n == 0)
    }
}

/// A shell word: its pieces, and the source text it came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Word {
    pub pieces: Vec<Piece>,
    pub raw: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal text; `quoted` when it came from quotes or a backslash escape (so it is not
    /// subject to globbing, tilde expansion or brace expansion).
    Lit { text: String, quoted: bool },
    /// `$NAME`, `${NAME}`, `${NAME<op><operand>}`, `$1`, `$@`, …
    Param {
        name: String,
        /// `""`, `":-"`, `"-"`, `":="`, `":?"`, `"#"`, `"%"`, `"/"`, …
        op: String,
        operand: Option<Word>,
        quoted: bool,
        raw: String,
    },
    /// `$( … )` or `` ` … ` ``
    Subst {
        script: Script,
        quoted: bool,
        raw: String,
    },
    /// `<( … )` or `>( … )`
    ProcSubst { script: Script, raw: String },
    /// `$(( … ))` or `$[ … ]`, with the expansions inside it.
    Arith { inner: Vec<Piece>, raw: String },
}

impl Word {
    fn lit(text: &str) -> Word {
        Word {
            pieces: vec![Piece::Lit {
                text: text.to_owned(),
                quoted: false,
            }],
            raw: text.to_owned(),
        }
    }

    /// The word's value when it is only literal text (quotes removed).
    pub fn literal(&self) -> Option<String> {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Lit { text, .. } => out.push_str(text),
                _ => return None,
            }
        }
        Some(out)
    }

    /// Whether the word is exactly `s`, unquoted (a reserved word, an operator-like word).
    pub fn is_bare(&self, s: &str) -> bool {
        matches!(self.pieces.as_slice(), [Piece::Lit { text, quoted: false }] if text == s)
    }

    /// `NAME=…`, `NAME+=…` or `NAME[sub]=…` with an unquoted name: an assignment when it comes
    /// before the command word.
    pub fn assignment_name(&self) -> Option<&str> {
        let Some(Piece::Lit { text, quoted: false }) = self.pieces.first() else {
            return None;
        };
        let eq = text.find('=')?;
        let mut name = &text[..eq];
        name = name.strip_suffix('+').unwrap_or(name);
        if let Some(open) = name.find('[') {
            if !name.ends_with(']') {
                return None;
            }
            name = &name[..open];
        }
        let mut chars = name.chars();
        let first = chars.next()?;
        ((first.is_ascii_alphabetic() || first == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then_some(name)
    }

    /// For an assignment word: the name and the value as a word of its own.
    pub fn split_assignment(&self) -> Option<(String, Word)> {
        let name = self.assignment_name()?.to_owned();
        let Some(Piece::Lit { text, .. }) = self.pieces.first() else {
            return None;
        };
        let eq = text.find('=')?;
        let mut pieces = Vec::with_capacity(self.pieces.len());
        pieces.push(Piece::Lit {
            text: text[eq + 1..].to_owned(),
            quoted: false,
        });
        pieces.extend(self.pieces.iter().skip(1).cloned());
        let raw = self
            .raw
            .split_once('=')
            .map(|(_, v)| v.to_owned())
            .unwrap_or_default();
        Some((name, Word { pieces, raw }))
    }
}

/// Parses a command line (one or more lines).
pub fn parse(text: &str) -> Parsed {
    parse_at(text, 0)
}

/// [`parse`] for text found inside another command (`bash -c '…'`, `eval …`), `depth` levels
/// down.
pub fn parse_at(text: &str, depth: usize) -> Parsed {
    let mut p = Parser {
        src: text.chars().collect(),
        pos: 0,
        depth,
        problem: None,
        peeked: None,
        pending: Vec::new(),
        docs: Vec::new(),
        nesting: 0,
        dangling: None,
    };
    if depth > MAX_NESTING {
        p.fail("it is nested too deeply");
        return Parsed {
            script: Script::default(),
            problem: p.problem,
        };
    }
    let mut script = p.parse_list(Term::Top);
    let mut docs = std::mem::take(&mut p.docs);
    fill_script(&mut script, &mut docs);
    Parsed {
        script,
        problem: p.problem,
    }
}

/// Decodes the backslash escapes of `$'…'` (and of `echo -e` / `printf` formats).
pub fn decode_ansi_c(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        if c != '\\' || i >= chars.len() {
            out.push(c);
            continue;
        }
        let e = chars[i];
        i += 1;
        let simple = match e {
            'a' => Some('\u{7}'),
            'b' => Some('\u{8}'),
            'e' | 'E' => Some('\u{1b}'),
            'f' => Some('\u{c}'),
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            'v' => Some('\u{b}'),
            '\\' => Some('\\'),
            '\'' => Some('\''),
            '"' => Some('"'),
            '?' => Some('?'),
            _ => None,
        };
        if let Some(ch) = simple {
            out.push(ch);
            continue;
        }
        let (radix, max) = match e {
            '0'..='7' => {
                i -= 1;
                (8, 3)
            }
            'x' => (16, 2),
            'u' => (16, 4),
            'U' => (16, 8),
            'c' => {
                if let Some(&x) = chars.get(i) {
                    i += 1;
                    out.push(char::from_u32(u32::from(x) & 0x1f).unwrap_or('\u{fffd}'));
                } else {
                    out.push_str("\\c");
                }
                continue;
            }
            _ => {
                out.push('\\');
                out.push(e);
                continue;
            }
        };
        let mut value: u32 = 0;
        let mut n = 0;
        while n < max {
            let Some(d) = chars.get(i).and_then(|c| c.to_digit(radix)) else {
                break;
            };
            value = value.saturating_mul(radix).saturating_add(d);
            i += 1;
            n += 1;
        }
        if n == 0 {
            out.push('\\');
            out.push(e);
        } else {
            out.push(char::from_u32(value).unwrap_or('\u{fffd}'));
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Term {
    Top,
    Paren,
    Brace,
    CaseItem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Semi,
    Amp,
    AndIf,
    OrIf,
    Pipe,
    PipeAmp,
    LParen,
    RParen,
    DSemi,
}

#[derive(Debug)]
enum Tok {
    Eof,
    Newline,
    Op(Op),
    Redir { fd: Option<u32>, op: RedirOp },
    Word(Vec<Word>),
}

/// What the next token is, without its words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peek {
    Eof,
    Newline,
    Op(Op),
    Redir,
    /// A word; `Some` when it is a reserved word (unquoted).
    Word(Option<&'static str>),
}

const KEYWORDS: [&str; 21] = [
    "if", "then", "else", "elif", "fi", "do", "done", "while", "until", "for", "select", "case", "esac",
    "function", "{", "}", "!", "[[", "]]", "in", "time",
];

struct PendingDoc {
    index: usize,
    delimiter: String,
    strip_tabs: bool,
    expands: bool,
}

struct Parser {
    src: Vec<char>,
    pos: usize,
    depth: usize,
    problem: Option<String>,
    peeked: Option<Tok>,
    pending: Vec<PendingDoc>,
    docs: Vec<Option<HereDoc>>,
    /// Depth of `if`/`while`/`until`/`for`/`select`/`case`.
    nesting: usize,
    /// An operator after which a command must follow (`&&`, `||`, `|`).
    dangling: Option<&'static str>,
}

fn is_meta(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '\r' | '\n' | ';' | '&' | '|' | '(' | ')' | '<' | '>'
    )
}

impl Parser {
    fn fail(&mut self, why: &str) {
        if self.problem.is_none() {
            self.problem = Some(why.to_owned());
        }
    }

    /// One nesting level down (`{ … }`, a function body, `case`, `${ … }`); `false` (and the
    /// rest of the input skipped) when that is too deep.
    fn enter(&mut self) -> bool {
        if self.depth >= MAX_NESTING {
            self.fail("it is nested too deeply");
            self.pos = self.src.len();
            self.peeked = None;
            return false;
        }
        self.depth += 1;
        true
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn cur(&self) -> Option<char> {
        self.src.get(self.pos).copied()
    }

    fn at(&self, offset: usize) -> Option<char> {
        self.src.get(self.pos + offset).copied()
    }

    fn text(&self, from: usize) -> String {
        self.src[from.min(self.src.len())..self.pos.min(self.src.len())]
            .iter()
            .collect()
    }

    // ---- tokens ----

    fn fill_peek(&mut self) {
        if self.peeked.is_none() {
            let t = self.lex();
            self.peeked = Some(t);
        }
    }

    fn peek(&mut self) -> Peek {
        self.fill_peek();
        match &self.peeked {
            None | Some(Tok::Eof) => Peek::Eof,
            Some(Tok::Newline) => Peek::Newline,
            Some(Tok::Op(op)) => Peek::Op(*op),
            Some(Tok::Redir { .. }) => Peek::Redir,
            Some(Tok::Word(ws)) => Peek::Word(match ws.as_slice() {
                [w] => KEYWORDS.iter().copied().find(|k| w.is_bare(k)),
                _ => None,
            }),
        }
    }

    fn next(&mut self) -> Tok {
        match self.peeked.take() {
            Some(t) => t,
            None => self.lex(),
        }
    }

    fn bump(&mut self) {
        let _ = self.next();
    }

    fn lex(&mut self) -> Tok {
        loop {
            match self.cur() {
                None => return Tok::Eof,
                Some(' ' | '\t' | '\r') => self.pos += 1,
                Some('\\') if self.at(1) == Some('\n') => self.pos += 2,
                Some('#') => {
                    while self.cur().is_some_and(|c| c != '\n') {
                        self.pos += 1;
                    }
                }
                Some('\n') => {
                    self.pos += 1;
                    self.read_heredocs();
                    return Tok::Newline;
                }
                Some(c) => return self.lex_token(c),
            }
        }
    }

    fn lex_token(&mut self, c: char) -> Tok {
        let two = (c, self.at(1).unwrap_or('\0'));
        let three = self.at(2).unwrap_or('\0');
        let (op, len) = match two {
            (';', ';') if three == '&' => (Some(Op::DSemi), 3),
            (';', ';') | (';', '&') => (Some(Op::DSemi), 2),
            (';', _) => (Some(Op::Semi), 1),
            ('&', '&') => (Some(Op::AndIf), 2),
            ('&', '>') => {
                let (op, len) = if three == '>' {
                    (RedirOp::AppendErr, 3)
                } else {
                    (RedirOp::OutErr, 2)
                };
                self.pos += len;
                return Tok::Redir { fd: None, op };
            }
            ('&', _) => (Some(Op::Amp), 1),
            ('|', '|') => (Some(Op::OrIf), 2),
            ('|', '&') => (Some(Op::PipeAmp), 2),
            ('|', _) => (Some(Op::Pipe), 1),
            ('(', _) => (Some(Op::LParen), 1),
            (')', _) => (Some(Op::RParen), 1),
            _ => (None, 0),
        };
        if let Some(op) = op {
            self.pos += len;
            return Tok::Op(op);
        }
        if (c == '<' || c == '>') && two.1 == '(' {
            return self.word_token();
        }
        if c == '<' || c == '>' {
            return self.redirect(None);
        }
        if c.is_ascii_digit() {
            let mut end = self.pos;
            while self.src.get(end).is_some_and(char::is_ascii_digit) {
                end += 1;
            }
            if matches!(self.src.get(end), Some('<' | '>')) && self.src.get(end + 1) != Some(&'(') {
                let fd: String = self.src[self.pos..end].iter().collect();
                self.pos = end;
                return self.redirect(Some(fd.parse().unwrap_or(u32::MAX)));
            }
        }
        self.word_token()
    }

    fn redirect(&mut self, fd: Option<u32>) -> Tok {
        let c = self.cur().unwrap_or('\0');
        let n1 = self.at(1).unwrap_or('\0');
        let n2 = self.at(2).unwrap_or('\0');
        let (op, len) = if c == '<' {
            match (n1, n2) {
                ('<', '<') => (RedirOp::HereString, 3),
                ('<', '-') => (RedirOp::HereDoc { strip_tabs: true }, 3),
                ('<', _) => (RedirOp::HereDoc { strip_tabs: false }, 2),
                ('&', _) => (RedirOp::DupIn, 2),
                ('>', _) => (RedirOp::ReadWrite, 2),
                _ => (RedirOp::In, 1),
            }
        } else {
            match n1 {
                '>' => (RedirOp::Append, 2),
                '&' => (RedirOp::DupOut, 2),
                '|' => (RedirOp::Clobber, 2),
                _ => (RedirOp::Out, 1),
            }
        };
        self.pos += len;
        Tok::Redir { fd, op }
    }

    fn word_token(&mut self) -> Tok {
        let word = self.word();
        if word.assignment_name().is_some() {
            return Tok::Word(vec![word]);
        }
        match brace_expand(&word) {
            Some(words) => Tok::Word(words),
            None => {
                self.fail("a brace expansion is too large");
                Tok::Word(vec![word])
            }
        }
    }

    // ---- words ----

    fn word(&mut self) -> Word {
        let start = self.pos;
        let mut pieces = Vec::new();
        let mut lit = String::new();
        if let (Some('<' | '>'), Some('(')) = (self.cur(), self.at(1)) {
            self.pos += 2;
            let script = self.nested_list();
            pieces.push(Piece::ProcSubst {
                script,
                raw: self.text(start),
            });
        }
        while let Some(c) = self.cur() {
            match c {
                '(' if lit.ends_with(['@', '!', '+', '*', '?']) => {
                    self.extglob(&mut lit);
                }
                '(' if pieces.is_empty() && is_array_assignment(&lit) => {
                    self.array(&mut lit, &mut pieces);
                }
                c if is_meta(c) => break,
                '\\' => match self.at(1) {
                    Some('\n') => self.pos += 2,
                    Some(e) => {
                        flush(&mut lit, &mut pieces);
                        pieces.push(Piece::Lit {
                            text: e.to_string(),
                            quoted: true,
                        });
                        self.pos += 2;
                    }
                    None => {
                        self.fail("it ends with a backslash");
                        self.pos += 1;
                    }
                },
                '\'' => {
                    flush(&mut lit, &mut pieces);
                    let text = self.single_quoted();
                    pieces.push(Piece::Lit { text, quoted: true });
                }
                '"' => {
                    flush(&mut lit, &mut pieces);
                    self.double_quoted(&mut pieces);
                }
                '$' => {
                    flush(&mut lit, &mut pieces);
                    self.dollar(false, &mut pieces);
                }
                '`' => {
                    flush(&mut lit, &mut pieces);
                    let p = self.backquoted(false);
                    pieces.push(p);
                }
                _ => {
                    lit.push(c);
                    self.pos += 1;
                }
            }
        }
        flush(&mut lit, &mut pieces);
        Word {
            pieces,
            raw: self.text(start),
        }
    }

    /// `@( … )`, `!( … )`, … (extended globs): kept as literal glob text.
    fn extglob(&mut self, lit: &mut String) {
        let mut depth = 0usize;
        while let Some(c) = self.cur() {
            lit.push(c);
            self.pos += 1;
            match c {
                '(' => depth += 1,
                ')' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return;
                    }
                }
                '\\' => {
                    if let Some(e) = self.cur() {
                        lit.push(e);
                        self.pos += 1;
                    }
                }
                _ => {}
            }
        }
        self.fail("unterminated extended glob `(`");
    }

    /// `NAME=( … )`: the elements become part of the assignment word.
    fn array(&mut self, lit: &mut String, pieces: &mut Vec<Piece>) {
        lit.push('(');
        self.pos += 1;
        flush(lit, pieces);
        loop {
            match self.cur() {
                None => {
                    self.fail("unterminated array `(`");
                    return;
                }
                Some(' ' | '\t' | '\n' | '\r') => self.pos += 1,
                Some(')') => {
                    self.pos += 1;
                    pieces.push(Piece::Lit {
                        text: ")".to_owned(),
                        quoted: false,
                    });
                    return;
                }
                Some(c) if is_meta(c) => {
                    self.fail("unexpected operator in an array");
                    return;
                }
                Some(_) => {
                    let before = self.pos;
                    let element = self.word();
                    pieces.extend(element.pieces);
                    pieces.push(Piece::Lit {
                        text: " ".to_owned(),
                        quoted: true,
                    });
                    if self.pos == before {
                        self.pos += 1;
                    }
                }
            }
        }
    }

    fn single_quoted(&mut self) -> String {
        self.pos += 1;
        let mut text = String::new();
        loop {
            match self.cur() {
                None => {
                    self.fail("unterminated single quote");
                    return text;
                }
                Some('\'') => {
                    self.pos += 1;
                    return text;
                }
                Some(c) => {
                    text.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    fn double_quoted(&mut self, pieces: &mut Vec<Piece>) {
        self.pos += 1;
        let mut lit = String::new();
        loop {
            match self.cur() {
                None => {
                    self.fail("unterminated double quote");
                    break;
                }
                Some('"') => {
                    self.pos += 1;
                    break;
                }
                Some('\\') => match self.at(1) {
                    Some('\n') => self.pos += 2,
                    Some(e @ ('$' | '`' | '"' | '\\')) => {
                        lit.push(e);
                        self.pos += 2;
                    }
                    _ => {
                        lit.push('\\');
                        self.pos += 1;
                    }
                },
                Some('$') => {
                    flush_quoted(&mut lit, pieces);
                    self.dollar(true, pieces);
                }
                Some('`') => {
                    flush_quoted(&mut lit, pieces);
                    let p = self.backquoted(true);
                    pieces.push(p);
                }
                Some(c) => {
                    lit.push(c);
                    self.pos += 1;
                }
            }
        }
        // Always a piece, even when empty: `""` is an (empty) argument and `r""m` is `rm`.
        pieces.push(Piece::Lit {
            text: lit,
            quoted: true,
        });
    }

    /// At `$`.
    fn dollar(&mut self, quoted: bool, pieces: &mut Vec<Piece>) {
        let start = self.pos;
        self.pos += 1;
        match self.cur() {
            Some('\'') if !quoted => {
                let text = self.ansi_c();
                pieces.push(Piece::Lit { text, quoted: true });
            }
            Some('"') if !quoted => self.double_quoted(pieces),
            Some('(') if self.at(1) == Some('(') => {
                self.pos += 2;
                let inner = self.arith_body();
                pieces.push(Piece::Arith {
                    inner,
                    raw: self.text(start),
                });
            }
            Some('(') => {
                self.pos += 1;
                let script = self.nested_list();
                pieces.push(Piece::Subst {
                    script,
                    quoted,
                    raw: self.text(start),
                });
            }
            Some('[') => {
                self.pos += 1;
                while self.cur().is_some_and(|c| c != ']') {
                    self.pos += 1;
                }
                if self.cur().is_none() {
                    self.fail("unterminated `$[`");
                }
                self.pos += 1;
                pieces.push(Piece::Arith {
                    inner: Vec::new(),
                    raw: self.text(start),
                });
            }
            Some('{') => {
                let p = self.braced_param(start, quoted);
                pieces.push(p);
            }
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let mut name = String::new();
                while let Some(c) = self.cur().filter(|c| c.is_ascii_alphanumeric() || *c == '_') {
                    name.push(c);
                    self.pos += 1;
                }
                pieces.push(Piece::Param {
                    name,
                    op: String::new(),
                    operand: None,
                    quoted,
                    raw: self.text(start),
                });
            }
            Some(c) if c.is_ascii_digit() || "@*#?$!-".contains(c) => {
                self.pos += 1;
                pieces.push(Piece::Param {
                    name: c.to_string(),
                    op: String::new(),
                    operand: None,
                    quoted,
                    raw: self.text(start),
                });
            }
            _ => pieces.push(Piece::Lit {
                text: "$".to_owned(),
                quoted,
            }),
        }
    }

    /// At the second `(` of `((` (arithmetic command, `for ((`): the expression as one word.
    fn arith_word(&mut self) -> Word {
        let start = self.pos.saturating_sub(1);
        self.pos += 1;
        let inner = self.arith_body();
        let raw = self.text(start);
        Word {
            pieces: vec![Piece::Arith {
                inner,
                raw: raw.clone(),
            }],
            raw,
        }
    }

    /// After `$((`: up to the matching `))`.
    fn arith_body(&mut self) -> Vec<Piece> {
        let mut inner = Vec::new();
        let mut depth = 0usize;
        loop {
            match self.cur() {
                None => {
                    self.fail("unterminated `$((`");
                    return inner;
                }
                Some('(') => {
                    depth += 1;
                    self.pos += 1;
                }
                Some(')') if depth == 0 => {
                    self.pos += 1;
                    if self.cur() == Some(')') {
                        self.pos += 1;
                    } else {
                        self.fail("unterminated `$((`");
                    }
                    return inner;
                }
                Some(')') => {
                    depth -= 1;
                    self.pos += 1;
                }
                Some('$') => self.dollar(true, &mut inner),
                Some('`') => {
                    let p = self.backquoted(true);
                    inner.push(p);
                }
                Some('\'') => {
                    let _ = self.single_quoted();
                }
                Some('"') => self.double_quoted(&mut inner),
                Some(_) => self.pos += 1,
            }
        }
    }

    /// At the `{` of `${`.
    fn braced_param(&mut self, start: usize, quoted: bool) -> Piece {
        self.pos += 1;
        if !self.enter() {
            return Piece::Param {
                name: String::new(),
                op: String::new(),
                operand: None,
                quoted,
                raw: self.text(start),
            };
        }
        let piece = self.braced_param_body(start, quoted);
        self.leave();
        piece
    }

    fn braced_param_body(&mut self, start: usize, quoted: bool) -> Piece {
        let mut name = String::new();
        if let Some(c @ ('#' | '!')) = self.cur()
            && self.at(1).is_some_and(|n| n != '}')
        {
            name.push(c);
            self.pos += 1;
        }
        match self.cur() {
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                while let Some(c) = self.cur().filter(|c| c.is_ascii_alphanumeric() || *c == '_') {
                    name.push(c);
                    self.pos += 1;
                }
                // `${!prefix*}`, `${!prefix@}`: the names starting with a prefix.
                if name.starts_with('!')
                    && let Some(c @ ('*' | '@')) = self.cur()
                    && self.at(1) == Some('}')
                {
                    name.push(c);
                    self.pos += 1;
                }
            }
            Some(c) if c.is_ascii_digit() => {
                while let Some(c) = self.cur().filter(char::is_ascii_digit) {
                    name.push(c);
                    self.pos += 1;
                }
            }
            Some(c) if "@*#?$!-".contains(c) => {
                name.push(c);
                self.pos += 1;
            }
            _ => {}
        }
        if self.cur() == Some('[') {
            while let Some(c) = self.cur() {
                name.push(c);
                self.pos += 1;
                if c == ']' {
                    break;
                }
            }
        }
        let mut op = String::new();
        let mut operand = None;
        if self.cur().is_some_and(|c| c != '}') {
            const OPS: [&str; 22] = [
                ":-", ":=", ":+", ":?", "##", "%%", "//", "/#", "/%", "^^", ",,", "-", "=", "+", "?", "#",
                "%", "/", "^", ",", ":", "@",
            ];
            for candidate in OPS {
                let n = candidate.chars().count();
                if self.src.len() >= self.pos + n
                    && self.src[self.pos..self.pos + n]
                        .iter()
                        .copied()
                        .eq(candidate.chars())
                {
                    op = candidate.to_owned();
                    self.pos += n;
                    break;
                }
            }
            if op.is_empty() {
                self.fail("bad `${…}` expansion");
            }
            operand = Some(self.param_operand());
        }
        if self.cur() == Some('}') {
            self.pos += 1;
        } else {
            self.fail("unterminated `${`");
        }
        Piece::Param {
            name,
            op,
            operand,
            quoted,
            raw: self.text(start),
        }
    }

    /// The operand of `${NAME<op>…}`, up to the `}` that closes it (not consumed).
    fn param_operand(&mut self) -> Word {
        let start = self.pos;
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut depth = 0usize;
        while let Some(c) = self.cur() {
            match c {
                '}' if depth == 0 => break,
                '}' => {
                    depth -= 1;
                    lit.push(c);
                    self.pos += 1;
                }
                '{' => {
                    depth += 1;
                    lit.push(c);
                    self.pos += 1;
                }
                '\\' => {
                    flush(&mut lit, &mut pieces);
                    if let Some(e) = self.at(1) {
                        pieces.push(Piece::Lit {
                            text: e.to_string(),
                            quoted: true,
                        });
                    }
                    self.pos += 2;
                }
                '\'' => {
                    flush(&mut lit, &mut pieces);
                    let text = self.single_quoted();
                    pieces.push(Piece::Lit { text, quoted: true });
                }
                '"' => {
                    flush(&mut lit, &mut pieces);
                    self.double_quoted(&mut pieces);
                }
                '$' => {
                    flush(&mut lit, &mut pieces);
                    self.dollar(false, &mut pieces);
                }
                '`' => {
                    flush(&mut lit, &mut pieces);
                    let p = self.backquoted(false);
                    pieces.push(p);
                }
                _ => {
                    lit.push(c);
                    self.pos += 1;
                }
            }
        }
        flush(&mut lit, &mut pieces);
        Word {
            pieces,
            raw: self.text(start),
        }
    }

    /// At `$'`: the decoded text.
    fn ansi_c(&mut self) -> String {
        self.pos += 1;
        let mut body = String::new();
        loop {
            match self.cur() {
                None => {
                    self.fail("unterminated `$'` quote");
                    break;
                }
                Some('\'') => {
                    self.pos += 1;
                    break;
                }
                Some('\\') => {
                    body.push('\\');
                    if let Some(e) = self.at(1) {
                        body.push(e);
                    }
                    self.pos += 2;
                }
                Some(c) => {
                    body.push(c);
                    self.pos += 1;
                }
            }
        }
        decode_ansi_c(&body)
    }

    /// At `` ` ``: the command inside, parsed.
    fn backquoted(&mut self, in_double_quotes: bool) -> Piece {
        let start = self.pos;
        self.pos += 1;
        let mut text = String::new();
        loop {
            match self.cur() {
                None => {
                    self.fail("unterminated backquote");
                    break;
                }
                Some('`') => {
                    self.pos += 1;
                    break;
                }
                Some('\\') => match self.at(1) {
                    Some(e) if e == '$' || e == '`' || e == '\\' || (in_double_quotes && e == '"') => {
                        text.push(e);
                        self.pos += 2;
                    }
                    _ => {
                        text.push('\\');
                        self.pos += 1;
                    }
                },
                Some(c) => {
                    text.push(c);
                    self.pos += 1;
                }
            }
        }
        let script = self.sub_parse(&text, Term::Top);
        Piece::Subst {
            script,
            quoted: in_double_quotes,
            raw: self.text(start),
        }
    }

    /// A list up to the `)` closing `$(`, `<(` or `(`, one nesting level down.
    fn nested_list(&mut self) -> Script {
        if self.depth >= MAX_NESTING {
            self.fail("it is nested too deeply");
            self.pos = self.src.len();
            return Script::default();
        }
        // The caller is in the middle of a token: nothing is peeked, and the list below consumes
        // its closing `)` without looking further.
        let saved_dangling = self.dangling.take();
        let saved_nesting = std::mem::replace(&mut self.nesting, 0);
        self.depth += 1;
        let script = self.parse_list(Term::Paren);
        self.depth -= 1;
        self.nesting = saved_nesting;
        self.dangling = saved_dangling;
        script
    }

    /// Parses `text` as a list of its own (backquotes, here-document bodies), one level down.
    fn sub_parse(&mut self, text: &str, term: Term) -> Script {
        if self.depth >= MAX_NESTING {
            self.fail("it is nested too deeply");
            return Script::default();
        }
        let saved_src = std::mem::replace(&mut self.src, text.chars().collect());
        let saved_pos = std::mem::replace(&mut self.pos, 0);
        let saved_peek = self.peeked.take();
        let saved_pending = std::mem::take(&mut self.pending);
        let saved_nesting = std::mem::replace(&mut self.nesting, 0);
        let saved_dangling = self.dangling.take();
        self.depth += 1;
        let script = self.parse_list(term);
        self.depth -= 1;
        self.src = saved_src;
        self.pos = saved_pos;
        self.peeked = saved_peek;
        self.pending = saved_pending;
        self.nesting = saved_nesting;
        self.dangling = saved_dangling;
        script
    }

    /// The expansions of an unquoted here-document body (text with `$…` and backquotes, where
    /// quotes are literal).
    fn heredoc_expansions(&mut self, body: &str) -> Word {
        if self.depth >= MAX_NESTING {
            self.fail("it is nested too deeply");
            return Word::default();
        }
        let saved_src = std::mem::replace(&mut self.src, body.chars().collect());
        let saved_pos = std::mem::replace(&mut self.pos, 0);
        let saved_peek = self.peeked.take();
        let saved_pending = std::mem::take(&mut self.pending);
        self.depth += 1;
        let mut pieces = Vec::new();
        let mut lit = String::new();
        while let Some(c) = self.cur() {
            match c {
                '\\' => {
                    match self.at(1) {
                        Some(e @ ('$' | '`' | '\\')) => lit.push(e),
                        Some('\n') => {}
                        Some(e) => {
                            lit.push('\\');
                            lit.push(e);
                        }
                        None => lit.push('\\'),
                    }
                    self.pos += 2;
                }
                '$' => {
                    flush_quoted(&mut lit, &mut pieces);
                    self.dollar(true, &mut pieces);
                }
                '`' => {
                    flush_quoted(&mut lit, &mut pieces);
                    let p = self.backquoted(true);
                    pieces.push(p);
                }
                _ => {
                    lit.push(c);
                    self.pos += 1;
                }
            }
        }
        flush_quoted(&mut lit, &mut pieces);
        self.depth -= 1;
        self.src = saved_src;
        self.pos = saved_pos;
        self.peeked = saved_peek;
        self.pending = saved_pending;
        Word {
            pieces,
            raw: body.to_owned(),
        }
    }

    /// After a newline: the bodies of the here-documents started on the line before.
    fn read_heredocs(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        for doc in pending {
            let mut body = String::new();
            while self.pos < self.src.len() {
                let end = self.src[self.pos..]
                    .iter()
                    .position(|&c| c == '\n')
                    .map_or(self.src.len(), |i| self.pos + i);
                let line: String = self.src[self.pos..end].iter().collect();
                self.pos = (end + 1).min(self.src.len());
                let line = if doc.strip_tabs {
                    line.trim_start_matches('\t').to_owned()
                } else {
                    line
                };
                if line.trim_end_matches('\r') == doc.delimiter {
                    break;
                }
                body.push_str(&line);
                body.push('\n');
            }
            let expansions = if doc.expands {
                self.heredoc_expansions(&body)
            } else {
                Word::default()
            };
            if let Some(slot) = self.docs.get_mut(doc.index) {
                *slot = Some(HereDoc {
                    body,
                    expands: doc.expands,
                    expansions,
                });
            }
        }
    }

    // ---- structure ----

    fn parse_list(&mut self, term: Term) -> Script {
        let mut script = Script::default();
        let mut conditional = false;
        loop {
            match self.peek() {
                Peek::Eof => {
                    if let Some(op) = self.dangling {
                        self.fail(&format!("it ends with `{op}`"));
                    }
                    match term {
                        Term::Top => {}
                        Term::Paren => self.fail("missing `)`"),
                        Term::Brace => self.fail("missing `}`"),
                        Term::CaseItem => self.fail("missing `esac`"),
                    }
                    break;
                }
                Peek::Newline => {
                    self.bump();
                    if self.dangling.is_none() {
                        conditional = false;
                    }
                }
                Peek::Op(Op::Semi) => {
                    self.bump();
                    self.separator_after_command(";");
                    conditional = false;
                }
                Peek::Op(Op::Amp) => {
                    self.bump();
                    match script.pipelines.last_mut() {
                        Some(p) if self.dangling.is_none() => p.background = true,
                        _ => self.fail("unexpected `&`"),
                    }
                    conditional = false;
                }
                Peek::Op(op @ (Op::AndIf | Op::OrIf)) => {
                    self.bump();
                    let symbol = if op == Op::AndIf { "&&" } else { "||" };
                    self.separator_after_command(symbol);
                    self.dangling = Some(symbol);
                    conditional = true;
                }
                Peek::Op(Op::RParen) => {
                    self.bump();
                    if term == Term::Paren {
                        if let Some(op) = self.dangling {
                            self.fail(&format!("`{op}` before `)`"));
                        }
                        break;
                    }
                    self.fail("unexpected `)`");
                }
                Peek::Op(Op::DSemi) => {
                    if term == Term::CaseItem {
                        self.bump();
                        break;
                    }
                    self.bump();
                    self.fail("unexpected `;;`");
                }
                Peek::Op(Op::Pipe | Op::PipeAmp) => {
                    self.bump();
                    self.fail("unexpected `|`");
                }
                Peek::Word(Some("}")) if term == Term::Brace => {
                    self.bump();
                    break;
                }
                Peek::Word(Some("esac")) if term == Term::CaseItem => break,
                Peek::Word(Some("if" | "while" | "until")) => {
                    self.bump();
                    self.nesting += 1;
                }
                Peek::Word(Some("then" | "do" | "else" | "elif" | "!")) => self.bump(),
                Peek::Word(Some("fi" | "done" | "esac")) => {
                    self.bump();
                    self.nesting = self.nesting.saturating_sub(1);
                }
                Peek::Word(Some("}")) => {
                    self.bump();
                    self.fail("unexpected `}`");
                }
                Peek::Word(kw) => {
                    if matches!(kw, Some("for" | "select")) {
                        self.nesting += 1;
                    }
                    let p = self.pipeline(conditional);
                    script.pipelines.push(p);
                }
                Peek::Redir | Peek::Op(Op::LParen) => {
                    let p = self.pipeline(conditional);
                    script.pipelines.push(p);
                }
            }
        }
        script
    }

    fn separator_after_command(&mut self, symbol: &str) {
        if let Some(op) = self.dangling {
            self.fail(&format!("`{symbol}` right after `{op}`"));
        }
    }

    fn pipeline(&mut self, conditional: bool) -> Pipeline {
        self.dangling = None;
        let conditional = conditional || self.nesting > 0;
        let mut commands = vec![self.command()];
        while matches!(self.peek(), Peek::Op(Op::Pipe | Op::PipeAmp)) {
            self.bump();
            while self.peek() == Peek::Newline {
                self.bump();
            }
            match self.peek() {
                Peek::Eof => {
                    self.fail("it ends with `|`");
                    break;
                }
                Peek::Word(_) | Peek::Redir | Peek::Op(Op::LParen) => commands.push(self.command()),
                _ => {
                    self.fail("`|` without a command after it");
                    break;
                }
            }
        }
        Pipeline {
            commands,
            background: false,
            conditional,
        }
    }

    fn command(&mut self) -> Cmd {
        if !self.enter() {
            return Cmd::Simple(Simple::default());
        }
        let cmd = self.command_body();
        self.leave();
        cmd
    }

    fn command_body(&mut self) -> Cmd {
        match self.peek() {
            // `(( … ))`: an arithmetic command (the `(` peeked, the second one next).
            Peek::Op(Op::LParen) if self.cur() == Some('(') => {
                self.bump();
                let word = self.arith_word();
                let redirects = self.trailing_redirects();
                Cmd::Simple(Simple {
                    assigns: Vec::new(),
                    words: vec![word],
                    redirects,
                })
            }
            Peek::Op(Op::LParen) => {
                self.bump();
                let script = self.nested_list();
                let redirects = self.trailing_redirects();
                Cmd::Group {
                    script,
                    subshell: true,
                    redirects,
                }
            }
            Peek::Word(Some("{")) => {
                self.bump();
                let script = self.parse_list(Term::Brace);
                let redirects = self.trailing_redirects();
                Cmd::Group {
                    script,
                    subshell: false,
                    redirects,
                }
            }
            // `time [-p] PIPELINE`: the keyword changes nothing here; `time (…)` is not `time()`.
            Peek::Word(Some("time")) => {
                self.bump();
                if matches!(self.peek(), Peek::Word(None))
                    && let Some(Tok::Word(ws)) = &self.peeked
                    && matches!(ws.as_slice(), [w] if w.is_bare("-p"))
                {
                    self.bump();
                }
                match self.peek() {
                    Peek::Word(_) | Peek::Redir | Peek::Op(Op::LParen) => self.command(),
                    _ => Cmd::Simple(Simple {
                        words: vec![Word::lit("time")],
                        ..Simple::default()
                    }),
                }
            }
            Peek::Word(Some("function")) => {
                self.bump();
                let name = match self.next() {
                    Tok::Word(ws) => ws.first().map(|w| w.raw.clone()).unwrap_or_default(),
                    _ => {
                        self.fail("`function` without a name");
                        String::new()
                    }
                };
                if self.peek() == Peek::Op(Op::LParen) {
                    self.bump();
                    if self.peek() == Peek::Op(Op::RParen) {
                        self.bump();
                    } else {
                        self.fail("expected `)` after `(`");
                    }
                }
                self.function_body(name)
            }
            Peek::Word(Some("case")) => self.case(),
            Peek::Word(Some("[[")) => self.conditional_expression(),
            _ => self.simple(),
        }
    }

    fn function_body(&mut self, name: String) -> Cmd {
        while self.peek() == Peek::Newline {
            self.bump();
        }
        let body = match self.peek() {
            Peek::Eof => {
                self.fail("a function without a body");
                Cmd::Simple(Simple::default())
            }
            _ => self.command(),
        };
        Cmd::Function {
            name,
            body: Box::new(body),
        }
    }

    fn trailing_redirects(&mut self) -> Vec<Redirect> {
        let mut redirects = Vec::new();
        while self.peek() == Peek::Redir {
            if let Some(r) = self.redirect_with_target() {
                redirects.push(r);
            }
        }
        redirects
    }

    fn redirect_with_target(&mut self) -> Option<Redirect> {
        let Tok::Redir { fd, op } = self.next() else {
            return None;
        };
        if !matches!(self.peek(), Peek::Word(_)) {
            self.fail("a redirection without a target");
            return None;
        }
        let Tok::Word(words) = self.next() else {
            return None;
        };
        let target = words.into_iter().next().unwrap_or_default();
        let mut doc = None;
        if let RedirOp::HereDoc { strip_tabs } = op {
            let index = self.docs.len();
            self.docs.push(None);
            self.pending.push(PendingDoc {
                index,
                delimiter: target.literal().unwrap_or_else(|| target.raw.clone()),
                strip_tabs,
                expands: target
                    .pieces
                    .iter()
                    .all(|p| matches!(p, Piece::Lit { quoted: false, .. })),
            });
            doc = Some(index);
        }
        Some(Redirect {
            fd,
            op,
            target,
            heredoc: None,
            doc,
        })
    }

    fn simple(&mut self) -> Cmd {
        let mut s = Simple::default();
        loop {
            match self.peek() {
                Peek::Word(_) => {
                    if let Tok::Word(words) = self.next() {
                        for w in words {
                            if s.words.is_empty() && w.assignment_name().is_some() {
                                s.assigns.push(w);
                            } else {
                                s.words.push(w);
                            }
                        }
                    }
                }
                Peek::Redir => {
                    if let Some(r) = self.redirect_with_target() {
                        s.redirects.push(r);
                    } else {
                        break;
                    }
                }
                Peek::Op(Op::LParen)
                    if self.cur() == Some('(')
                        && matches!(s.words.as_slice(), [w] if w.is_bare("for"))
                        && s.assigns.is_empty() =>
                {
                    self.bump();
                    let word = self.arith_word();
                    s.words.push(word);
                }
                Peek::Op(Op::LParen) => {
                    if s.words.len() == 1 && s.assigns.is_empty() && s.redirects.is_empty() {
                        self.bump();
                        if self.peek() == Peek::Op(Op::RParen) {
                            self.bump();
                        } else {
                            self.fail("expected `)` after `name(`");
                        }
                        let name = s.words.first().map(|w| w.raw.clone()).unwrap_or_default();
                        return self.function_body(name);
                    }
                    self.bump();
                    self.fail("unexpected `(`");
                    break;
                }
                _ => break,
            }
        }
        if s.words.is_empty() && s.assigns.is_empty() && s.redirects.is_empty() {
            // Nothing the loop could take: consume one token so the caller makes progress.
            if !matches!(self.peek(), Peek::Eof) {
                self.bump();
            }
            self.fail("a command was expected");
        }
        Cmd::Simple(s)
    }

    /// `case WORD in PATTERN) LIST ;; … esac`: a group of the lists (conditional), preceded by a
    /// command `case WORD PATTERN…` that carries the words' expansions.
    fn case(&mut self) -> Cmd {
        self.bump();
        let mut head = Simple {
            words: vec![Word::lit("case")],
            ..Simple::default()
        };
        match self.next() {
            Tok::Word(ws) => head.words.extend(ws),
            _ => self.fail("`case` without a word"),
        }
        while self.peek() == Peek::Newline {
            self.bump();
        }
        if let Peek::Word(Some("in")) = self.peek() {
            self.bump();
        } else {
            self.fail("`case` without `in`");
        }
        self.nesting += 1;
        let mut script = Script::default();
        loop {
            while matches!(self.peek(), Peek::Newline | Peek::Op(Op::Semi)) {
                self.bump();
            }
            match self.peek() {
                Peek::Eof => {
                    self.fail("missing `esac`");
                    break;
                }
                Peek::Word(Some("esac")) => {
                    self.bump();
                    break;
                }
                _ => {}
            }
            if self.peek() == Peek::Op(Op::LParen) {
                self.bump();
            }
            let mut ok = false;
            while let Tok::Word(ws) = self.next() {
                head.words.extend(ws);
                match self.peek() {
                    Peek::Op(Op::Pipe) => self.bump(),
                    Peek::Op(Op::RParen) => {
                        self.bump();
                        ok = true;
                        break;
                    }
                    _ => break,
                }
            }
            if !ok {
                self.fail("a bad `case` pattern");
                break;
            }
            let item = self.parse_list(Term::CaseItem);
            script.pipelines.extend(item.pipelines);
        }
        self.nesting = self.nesting.saturating_sub(1);
        script.pipelines.insert(
            0,
            Pipeline {
                commands: vec![Cmd::Simple(head)],
                background: false,
                conditional: false,
            },
        );
        let redirects = self.trailing_redirects();
        Cmd::Group {
            script,
            subshell: false,
            redirects,
        }
    }

    /// `[[ … ]]`: a command `[[` with the words inside (operators in it are not the shell's).
    fn conditional_expression(&mut self) -> Cmd {
        let mut s = Simple::default();
        loop {
            match self.peek() {
                Peek::Word(Some("]]")) => {
                    if let Tok::Word(ws) = self.next() {
                        s.words.extend(ws);
                    }
                    break;
                }
                Peek::Word(_) => {
                    if let Tok::Word(ws) = self.next() {
                        s.words.extend(ws);
                    }
                }
                Peek::Eof | Peek::Newline => {
                    self.fail("missing `]]`");
                    break;
                }
                Peek::Op(_) | Peek::Redir => self.bump(),
            }
        }
        Cmd::Simple(s)
    }
}

fn is_array_assignment(lit: &str) -> bool {
    lit.strip_suffix('=')
        .map(|n| n.strip_suffix('+').unwrap_or(n))
        .is_some_and(|n| {
            let mut chars = n.chars();
            chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

fn flush(lit: &mut String, pieces: &mut Vec<Piece>) {
    if !lit.is_empty() {
        pieces.push(Piece::Lit {
            text: std::mem::take(lit),
            quoted: false,
        });
    }
}

fn flush_quoted(lit: &mut String, pieces: &mut Vec<Piece>) {
    if !lit.is_empty() {
        pieces.push(Piece::Lit {
            text: std::mem::take(lit),
            quoted: true,
        });
    }
}

// ---- here-documents: attach bodies to their redirections ----

fn fill_script(script: &mut Script, docs: &mut [Option<HereDoc>]) {
    for p in &mut script.pipelines {
        for c in &mut p.commands {
            fill_cmd(c, docs);
        }
    }
}

fn fill_cmd(cmd: &mut Cmd, docs: &mut [Option<HereDoc>]) {
    match cmd {
        Cmd::Simple(s) => {
            for w in s.assigns.iter_mut().chain(s.words.iter_mut()) {
                fill_word(w, docs);
            }
            fill_redirects(&mut s.redirects, docs);
        }
        Cmd::Group {
            script, redirects, ..
        } => {
            fill_script(script, docs);
            fill_redirects(redirects, docs);
        }
        Cmd::Function { body, .. } => fill_cmd(body, docs),
    }
}

fn fill_redirects(redirects: &mut [Redirect], docs: &mut [Option<HereDoc>]) {
    for r in redirects {
        fill_word(&mut r.target, docs);
        if let Some(i) = r.doc
            && let Some(slot) = docs.get_mut(i)
        {
            r.heredoc = slot.take();
        }
        if let Some(h) = &mut r.heredoc {
            fill_word(&mut h.expansions, docs);
        }
    }
}

fn fill_word(word: &mut Word, docs: &mut [Option<HereDoc>]) {
    fill_pieces(&mut word.pieces, docs);
}

fn fill_pieces(pieces: &mut [Piece], docs: &mut [Option<HereDoc>]) {
    for p in pieces {
        match p {
            Piece::Lit { .. } => {}
            Piece::Param { operand, .. } => {
                if let Some(w) = operand {
                    fill_word(w, docs);
                }
            }
            Piece::Subst { script, .. } | Piece::ProcSubst { script, .. } => fill_script(script, docs),
            Piece::Arith { inner, .. } => fill_pieces(inner, docs),
        }
    }
}

// ---- brace expansion ----

#[derive(Clone)]
enum Item {
    Ch(char, bool),
    P(Piece),
}

/// `a{b,c}d` → `abd acd` (nested and repeated braces; `{x..y}` sequences are left as they are).
/// `None` when the expansion would produce more than [`MAX_BRACE_WORDS`] words.
fn brace_expand(word: &Word) -> Option<Vec<Word>> {
    let has_brace = word
        .pieces
        .iter()
        .any(|p| matches!(p, Piece::Lit { text, quoted: false } if text.contains('{')));
    if !has_brace {
        return Some(vec![word.clone()]);
    }
    let groups: usize = word
        .pieces
        .iter()
        .map(|p| match p {
            Piece::Lit { text, quoted: false } => text.matches('{').count(),
            _ => 0,
        })
        .sum();
    if groups > MAX_BRACE_GROUPS || word.raw.chars().count() > MAX_BRACE_CHARS {
        return None;
    }
    let mut items = Vec::new();
    for p in &word.pieces {
        match p {
            Piece::Lit { text, quoted } => items.extend(text.chars().map(|c| Item::Ch(c, *quoted))),
            other => items.push(Item::P(other.clone())),
        }
    }
    let mut out = Vec::new();
    if !expand_items(items, &mut out) {
        return None;
    }
    if out.len() == 1 {
        return Some(vec![word.clone()]);
    }
    Some(out.into_iter().map(from_items).collect())
}

fn expand_items(items: Vec<Item>, out: &mut Vec<Vec<Item>>) -> bool {
    let mut search_from = 0;
    while let Some(open) = items
        .iter()
        .skip(search_from)
        .position(|i| matches!(i, Item::Ch('{', false)))
        .map(|i| i + search_from)
    {
        let mut depth = 0usize;
        let mut commas = Vec::new();
        let mut close = None;
        for (k, item) in items.iter().enumerate().skip(open) {
            match item {
                Item::Ch('{', false) => depth += 1,
                Item::Ch('}', false) => {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(k);
                        break;
                    }
                }
                Item::Ch(',', false) if depth == 1 => commas.push(k),
                _ => {}
            }
        }
        let Some(close) = close else {
            break;
        };
        if commas.is_empty() {
            search_from = open + 1;
            continue;
        }
        let mut bounds = vec![open];
        bounds.extend(commas);
        bounds.push(close);
        for pair in bounds.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let mut alt = Vec::with_capacity(items.len());
            alt.extend(items[..open].iter().cloned());
            alt.extend(items[a + 1..b].iter().cloned());
            alt.extend(items[close + 1..].iter().cloned());
            if !expand_items(alt, out) {
                return false;
            }
        }
        return true;
    }
    out.push(items);
    out.len() <= MAX_BRACE_WORDS
}

fn from_items(items: Vec<Item>) -> Word {
    let mut pieces: Vec<Piece> = Vec::new();
    for item in items {
        match item {
            Item::Ch(c, quoted) => {
                if let Some(Piece::Lit { text, quoted: q }) = pieces.last_mut()
                    && *q == quoted
                {
                    text.push(c);
                    continue;
                }
                pieces.push(Piece::Lit {
                    text: c.to_string(),
                    quoted,
                });
            }
            Item::P(p) => pieces.push(p),
        }
    }
    // The expanded word as text (the quotes are gone: only for showing it).
    let mut raw = String::new();
    for p in &pieces {
        match p {
            Piece::Lit { text, .. } => raw.push_str(text),
            Piece::Param { raw: r, .. }
            | Piece::Subst { raw: r, .. }
            | Piece::ProcSubst { raw: r, .. }
            | Piece::Arith { raw: r, .. } => raw.push_str(r),
        }
    }
    Word { pieces, raw }
}
