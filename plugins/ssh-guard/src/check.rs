//! The rules, over a command line parsed by [`crate::shell`].
//!
//! Every simple command is looked at after its wrappers are taken off (`sudo`, `env`, `nice`,
//! `timeout`, `xargs`, …; see [`resolve`]), with its command word normalised (`/bin/rm`, `\rm`,
//! `'rm'` and `r""m` are all `rm`). Scripts given to `bash -c`, `eval`, `su -c`, `env -S`, an
//! alias or a shell's here-document are parsed and checked in turn, and so is every command and
//! process substitution, wherever it is (arguments, assignments, redirections, here-documents).
//! A command word computed at run time (`$X`, `$(…)`) cannot be known: its arguments are checked
//! for dangerous shapes, and checked as a command of their own (`$SUDO reboot`).

use std::borrow::Cow;

use crate::shell::{self, Cmd, Piece, Pipeline, RedirOp, Redirect, Script, Simple, Word};

/// Longest command line checked (in bytes); a longer one is denied as unparseable.
pub const MAX_LINE: usize = 128 * 1024;
/// Most text (in bytes) parsed again for the scripts inside a line (`bash -c`, `eval`, …),
/// all of them together; beyond it the line is denied as unparseable.
pub const MAX_NESTED_TEXT: usize = 128 * 1024;
/// Scripts given to a shell inside a command substitution are looked into for a download up
/// to this size and depth.
const MAX_PEEK_TEXT: usize = 4096;
const MAX_PEEK_DEPTH: usize = 8;

/// The built-in rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    RmRoot,
    DiskWipe,
    DeviceWrite,
    DownloadExec,
    Power,
    ForkBomb,
    ChmodRoot,
    Unparseable,
}

impl Rule {
    pub const ALL: [Rule; 8] = [
        Rule::RmRoot,
        Rule::DiskWipe,
        Rule::DeviceWrite,
        Rule::DownloadExec,
        Rule::Power,
        Rule::ForkBomb,
        Rule::ChmodRoot,
        Rule::Unparseable,
    ];

    /// The rule's stable id, as used in the config and in reasons (`ssh-guard/<id>: …`).
    pub fn id(self) -> &'static str {
        match self {
            Rule::RmRoot => "rm-root",
            Rule::DiskWipe => "disk-wipe",
            Rule::DeviceWrite => "device-write",
            Rule::DownloadExec => "download-exec",
            Rule::Power => "power",
            Rule::ForkBomb => "fork-bomb",
            Rule::ChmodRoot => "chmod-root",
            Rule::Unparseable => "unparseable",
        }
    }

    pub fn from_id(id: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.id() == id)
    }
}

/// A configured rule: a command whose name is `words[0]` and whose arguments contain the other
/// words, in that order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extra {
    pub id: String,
    pub words: Vec<String>,
}

/// What a rule found: its id (built-in or extra) and what it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub id: String,
    pub what: String,
}

/// Checks a command line; the findings in the order met (an unparseable line last).
pub fn check(line: &str, extra: &[Extra]) -> Vec<Finding> {
    if line.len() > MAX_LINE {
        return vec![Finding {
            id: Rule::Unparseable.id().to_owned(),
            what: format!(
                "the command line is too long to check ({} bytes, at most {MAX_LINE})",
                line.len()
            ),
        }];
    }
    let parsed = shell::parse(line);
    let mut walker = Walker {
        extra,
        findings: Vec::new(),
        cwd: None,
        nested_text: 0,
    };
    walker.script(&parsed.script, 0);
    if let Some(problem) = parsed.problem {
        walker.found(
            Rule::Unparseable,
            format!("the command line could not be parsed ({problem}), so it cannot be checked"),
        );
    }
    walker.findings
}

// ---- names and lists ----

/// Directories directly under `/` that must not be deleted or re-owned recursively.
const SYSTEM_DIRS: [&str; 16] = [
    "etc", "usr", "bin", "sbin", "boot", "var", "lib", "lib32", "lib64", "home", "root", "opt", "srv", "dev",
    "proc", "sys",
];

const DOWNLOADERS: [&str; 3] = ["curl", "wget", "fetch"];

const SHELLS: [&str; 9] = ["sh", "bash", "dash", "zsh", "ksh", "ash", "mksh", "yash", "fish"];

/// `/dev` entries that are not devices one can wreck by writing to them.
const HARMLESS_DEVICES: [&str; 9] = [
    "null", "zero", "full", "stdout", "stderr", "stdin", "tty", "random", "urandom",
];

/// Paths that are a process's standard input.
const STDIN_PATHS: [&str; 4] = ["-", "/dev/stdin", "/dev/fd/0", "/proc/self/fd/0"];

// ---- the walk ----

/// What a command does with its standard input and output, for the pipeline around it.
#[derive(Debug, Clone, Default)]
struct Flow {
    /// It downloads (`curl`, `wget`, `fetch`), its output is what it downloaded.
    download: Option<String>,
    /// It runs its standard input as code (`sh`, `python3 -`, …).
    interpreter: Option<String>,
    /// That interpreter is a shell.
    shell: bool,
    /// It prints literal text (`echo …`, `printf …`).
    output: Option<String>,
}

struct Walker<'a> {
    extra: &'a [Extra],
    findings: Vec<Finding>,
    /// The working directory, when a `cd` earlier in the line made it known (with [`HOME`]
    /// for a home directory).
    cwd: Option<String>,
    /// Bytes of nested scripts parsed so far.
    nested_text: usize,
}

impl Walker<'_> {
    fn found(&mut self, rule: Rule, what: String) {
        self.findings.push(Finding {
            id: rule.id().to_owned(),
            what,
        });
    }

    fn script(&mut self, script: &Script, depth: usize) -> Flow {
        let mut flow = Flow::default();
        if depth > shell::MAX_NESTING + 2 {
            return flow;
        }
        for p in &script.pipelines {
            let f = self.pipeline(p, depth);
            flow.download = flow.download.or(f.download);
            if flow.interpreter.is_none() {
                flow.interpreter = f.interpreter;
                flow.shell = f.shell;
            }
        }
        flow
    }

    fn pipeline(&mut self, p: &Pipeline, depth: usize) -> Flow {
        let flows: Vec<Flow> = p.commands.iter().map(|c| self.cmd(c, depth)).collect();
        // `echo 'rm -rf /' | sh`: the text is the script.
        for pair in flows.windows(2) {
            if let [from, to] = pair
                && let (Some(text), Some(shell)) = (&from.output, &to.interpreter)
                && to.shell
            {
                self.nested(shell, text, depth);
            }
        }
        let mut download: Option<&str> = None;
        for f in &flows {
            if let (Some(d), Some(i)) = (download, &f.interpreter) {
                let what = format!("`{d}` piped into `{i}` runs what it downloads");
                self.found(Rule::DownloadExec, what);
                break;
            }
            if let Some(d) = &f.download {
                download = Some(d);
            }
        }
        let first = flows.first();
        Flow {
            download: flows.iter().find_map(|f| f.download.clone()),
            interpreter: first.and_then(|f| f.interpreter.clone()),
            shell: first.is_some_and(|f| f.shell),
            output: None,
        }
    }

    fn cmd(&mut self, cmd: &Cmd, depth: usize) -> Flow {
        match cmd {
            Cmd::Simple(s) => self.simple(s, depth),
            Cmd::Group {
                script, redirects, ..
            } => {
                self.redirects(redirects, depth);
                self.script(script, depth + 1)
            }
            Cmd::Function { name, body } => {
                if fork_bomb(name, body, false, 0) {
                    self.found(
                        Rule::ForkBomb,
                        format!(
                            "the function `{name}` runs itself in a pipe or in the background (a fork bomb)"
                        ),
                    );
                }
                self.cmd(body, depth + 1);
                Flow::default()
            }
        }
    }

    fn simple(&mut self, s: &Simple, depth: usize) -> Flow {
        for w in s.assigns.iter().chain(&s.words) {
            self.expansions(&w.pieces, depth);
        }
        self.redirects(&s.redirects, depth);
        let words = split_words(&s.words);
        self.invocation(&words, &s.redirects, depth)
    }

    /// The command and process substitutions in a word, wherever they are.
    fn expansions(&mut self, pieces: &[Piece], depth: usize) {
        for p in pieces {
            match p {
                Piece::Lit { .. } => {}
                Piece::Param { operand, .. } => {
                    if let Some(w) = operand {
                        self.expansions(&w.pieces, depth);
                    }
                }
                Piece::Subst { script, .. } | Piece::ProcSubst { script, .. } => {
                    self.script(script, depth + 1);
                }
                Piece::Arith { inner, .. } => self.expansions(inner, depth),
            }
        }
    }

    fn redirects(&mut self, redirects: &[Redirect], depth: usize) {
        for r in redirects {
            self.expansions(&r.target.pieces, depth);
            if let Some(doc) = &r.heredoc {
                self.expansions(&doc.expansions.pieces, depth);
            }
            if !r.op.writes_to(&r.target) {
                continue;
            }
            let shown = format!("{}{}", r.op.symbol(), r.target.raw);
            if let Some(dev) = block_device(&r.target) {
                self.found(
                    Rule::DeviceWrite,
                    format!("the redirection `{shown}` writes to the block device `{dev}`"),
                );
            }
            if path_shape(&r.target)
                .known()
                .is_some_and(|p| normalize(&p) == "/proc/sysrq-trigger")
            {
                self.found(
                    Rule::Power,
                    format!("the redirection `{shown}` writes to the kernel's SysRq trigger"),
                );
            }
        }
    }

    /// A parsed script given to `by` (`bash -c`, `eval`, …).
    fn nested(&mut self, by: &str, text: &str, depth: usize) {
        self.nested_text = self.nested_text.saturating_add(text.len());
        if self.nested_text > MAX_NESTED_TEXT {
            self.found(
                Rule::Unparseable,
                format!("the scripts inside the command line (`{by}`) are too large to check"),
            );
            return;
        }
        let parsed = shell::parse_at(text, depth + 1);
        self.script(&parsed.script, depth + 1);
        if let Some(problem) = parsed.problem {
            self.found(
                Rule::Unparseable,
                format!("the script run by `{by}` could not be parsed ({problem}), so it cannot be checked"),
            );
        }
    }

    fn invocation(&mut self, words: &[Word], redirects: &[Redirect], depth: usize) -> Flow {
        if depth > shell::MAX_NESTING + 2 {
            return Flow::default();
        }
        match resolve(words) {
            Resolved::Nothing => Flow::default(),
            Resolved::Script { by, text } => {
                self.nested(&by, &text, depth);
                Flow::default()
            }
            Resolved::Dynamic { word, args } => {
                self.dynamic(word, args, redirects, depth);
                Flow::default()
            }
            Resolved::Command { name, args } => self.command(&name, args, redirects, depth),
        }
    }

    /// A command word computed at run time.
    fn dynamic(&mut self, word: &Word, args: &[Word], redirects: &[Redirect], depth: usize) {
        if depth > shell::MAX_NESTING + 2 {
            return;
        }
        if let Some(d) = word_downloads(word, depth) {
            self.found(
                Rule::DownloadExec,
                format!("the output of `{d}` is run as a command (`{}`)", show(&word.raw)),
            );
        }
        let shown = show(&word.raw);
        let rm = rm_args(args);
        if rm.no_preserve_root {
            self.found(
                Rule::RmRoot,
                format!("a command computed at run time (`{shown}`) with `--no-preserve-root`"),
            );
        } else if rm.recursive
            && rm.force
            && let Some(t) = rm.root_target(self.cwd.as_deref())
        {
            self.found(
                Rule::RmRoot,
                format!("a command computed at run time (`{shown}`) with the arguments of a recursive delete of `{t}`"),
            );
        }
        if let Some(dev) = args.iter().find_map(dd_output_device) {
            self.found(
                Rule::DeviceWrite,
                format!("a command computed at run time (`{shown}`) with the argument `of={dev}`"),
            );
        }
        // It may expand to nothing, or to a wrapper (`$SUDO reboot`).
        if !args.is_empty() {
            let _ = self.invocation(args, redirects, depth + 1);
        }
    }

    /// A known command, after its wrappers: the rules.
    fn command(&mut self, name: &str, args: &[Word], redirects: &[Redirect], depth: usize) -> Flow {
        let shown = show_command(name, args);
        let mut flow = Flow::default();
        if DOWNLOADERS.contains(&name) {
            flow.download = Some(name.to_owned());
        }
        if let Some(mode) = code_source(name, args) {
            // The code it runs comes from an argument or from its standard input: a download
            // there (`bash <(curl …)`, `python3 -c "$(curl …)"`, `sh < <(curl …)`) is run.
            let feeds = redirects
                .iter()
                .filter(|r| r.op.feeds_stdin(r.fd))
                .map(|r| &r.target)
                .chain(
                    redirects
                        .iter()
                        .filter_map(|r| r.heredoc.as_ref().map(|h| &h.expansions)),
                );
            if let Some(d) = args.iter().chain(feeds).find_map(|w| word_downloads(w, depth)) {
                self.found(
                    Rule::DownloadExec,
                    format!("`{name}` runs code downloaded by `{d}` (`{shown}`)"),
                );
            }
            if mode == CodeFrom::Stdin {
                let stdin = redirects.iter().rev().find(|r| r.op.feeds_stdin(r.fd));
                match stdin {
                    None => {
                        flow.interpreter = Some(name.to_owned());
                        flow.shell = is_shell(name);
                    }
                    Some(r) if is_shell(name) => match (&r.op, &r.heredoc) {
                        (RedirOp::HereString, _) => self.nested(name, &word_text(&r.target), depth),
                        (RedirOp::HereDoc { .. }, Some(doc)) => self.nested(name, &doc.body, depth),
                        _ => {}
                    },
                    Some(_) => {}
                }
            }
        }
        if name == "echo" || name == "printf" {
            flow.output = literal_output(name, args);
        }
        match name {
            "cd" | "pushd" => self.cwd = self.change_dir(args),
            "popd" => self.cwd = None,
            "cat" if operands(args).next().is_none() => {
                // `cat <<EOF | sh`: the here-document is the output.
                flow.output = redirects
                    .iter()
                    .rev()
                    .find(|r| r.op.feeds_stdin(r.fd))
                    .and_then(|r| match (&r.op, &r.heredoc) {
                        (RedirOp::HereString, _) => Some(word_text(&r.target)),
                        (RedirOp::HereDoc { .. }, Some(doc)) => Some(doc.body.clone()),
                        _ => None,
                    });
            }
            "find" => self.find(args, &shown, depth),
            "alias" => {
                for a in args {
                    if let Some((alias, value)) = a.split_assignment() {
                        self.nested(&format!("alias {alias}"), &word_text(&value), depth);
                    }
                }
            }
            _ => {
                if let Some((rule, what)) = rule_hit(name, args, &shown, self.cwd.as_deref()) {
                    self.found(rule, what);
                }
            }
        }
        for e in self.extra {
            if extra_matches(e, name, args) {
                let what = format!("`{}` is not allowed (`{shown}`)", e.words.join(" "));
                self.findings.push(Finding {
                    id: e.id.clone(),
                    what,
                });
            }
        }
        flow
    }

    /// The working directory after `cd ARGS`, if known.
    fn change_dir(&self, args: &[Word]) -> Option<String> {
        let Some(target) = operands(args).next() else {
            return Some(HOME.to_string());
        };
        match path_shape(target) {
            PathShape::Known(p) if p == "-" => None,
            PathShape::Known(p) if is_rooted(&p) => Some(p),
            PathShape::Known(p) => self.cwd.as_ref().map(|dir| format!("{dir}/{p}")),
            PathShape::Prefix(_) => None,
        }
    }

    /// `find ROOT -delete` (nothing but traversal options), and the commands of `-exec`.
    fn find(&mut self, args: &[Word], shown: &str, depth: usize) {
        let start = args
            .iter()
            .take_while(|a| {
                a.literal()
                    .is_none_or(|t| !(t.starts_with('-') || t == "(" || t == "!"))
            })
            .count();
        let (paths, expr) = args.split_at(start);
        let mut k = 0;
        let mut filters = false;
        let mut delete = false;
        while let Some(a) = expr.get(k) {
            k += 1;
            let Some(t) = a.literal() else {
                filters = true;
                continue;
            };
            match t.as_str() {
                "-delete" => delete = true,
                "-exec" | "-execdir" | "-ok" | "-okdir" => {
                    let end = expr[k..]
                        .iter()
                        .position(|w| w.literal().is_some_and(|t| t == ";" || t == "+"))
                        .map_or(expr.len(), |p| k + p);
                    let command = &expr[k..end];
                    // With nothing filtered out before it, `{}` is every path, the starting
                    // points first: `find / -exec rm -rf {} +` deletes `/`.
                    let root = paths
                        .iter()
                        .find(|p| root_target(p, self.cwd.as_deref()).is_some())
                        .filter(|_| !filters);
                    match root {
                        Some(root) => {
                            let replaced: Vec<Word> = command
                                .iter()
                                .map(|w| {
                                    if w.literal().is_some_and(|t| t == "{}") {
                                        root
                                    } else {
                                        w
                                    }
                                })
                                .cloned()
                                .collect();
                            let _ = self.invocation(&replaced, &[], depth + 1);
                        }
                        None => {
                            let _ = self.invocation(command, &[], depth + 1);
                        }
                    }
                    k = end + 1;
                    filters = true;
                }
                "-xdev"
                | "-mount"
                | "-depth"
                | "-d"
                | "-ignore_readdir_race"
                | "-noleaf"
                | "-P"
                | "-H"
                | "-L" => {}
                "-mindepth" | "-maxdepth" => k += 1,
                _ => filters = true,
            }
        }
        if delete
            && !filters
            && let Some(t) = paths.iter().find_map(|p| root_target(p, self.cwd.as_deref()))
        {
            self.found(
                Rule::RmRoot,
                format!("`find … -delete` of everything under `{t}` (`{shown}`)"),
            );
        }
    }
}

/// The rules about a single command (name after its wrappers, arguments, the working
/// directory when known).
fn rule_hit(name: &str, args: &[Word], shown: &str, cwd: Option<&str>) -> Option<(Rule, String)> {
    let lits = || args.iter().filter_map(Word::literal);
    match name {
        "rm" => {
            let rm = rm_args(args);
            if rm.no_preserve_root {
                return Some((Rule::RmRoot, format!("`rm --no-preserve-root` (`{shown}`)")));
            }
            let t = rm.root_target(cwd).filter(|_| rm.recursive)?;
            Some((Rule::RmRoot, format!("recursive delete of `{t}` (`{shown}`)")))
        }
        "chmod" | "chown" | "chgrp" => {
            let recursive = lits().take_while(|t| t != "--").any(|t| {
                t == "--recursive" || (t.starts_with('-') && !t.starts_with("--") && t.contains('R'))
            });
            let t = operands(args)
                .find_map(|w| root_target(w, cwd))
                .filter(|_| recursive)?;
            Some((
                Rule::ChmodRoot,
                format!("recursive `{name}` of `{t}` (`{shown}`)"),
            ))
        }
        "mkswap" | "shred" | "blkdiscard" => {
            let dev = operands(args).find_map(device_path)?;
            Some((
                Rule::DiskWipe,
                format!("`{name}` on the device `{dev}` (`{shown}`)"),
            ))
        }
        "wipefs" => lits()
            .any(|t| {
                t.starts_with("--all") || t.starts_with("--offset") || is_short_cluster_with(&t, &['a', 'o'])
            })
            .then(|| (Rule::DiskWipe, format!("`wipefs` erasing signatures (`{shown}`)"))),
        "fdisk" | "cfdisk" | "gdisk" | "sfdisk" | "parted" | "sgdisk" => {
            let dev = operands(args)
                .find_map(device_path)
                .filter(|_| !partition_read_only(name, args))?;
            Some((
                Rule::DiskWipe,
                format!("`{name}` can rewrite the partition table of `{dev}` (`{shown}`)"),
            ))
        }
        n if is_mkfs(n) => (!lits().any(|t| matches!(t.as_str(), "-V" | "--version" | "-h" | "--help")))
            .then(|| {
                (
                    Rule::DiskWipe,
                    format!("`{name}` makes a new filesystem (`{shown}`)"),
                )
            }),
        "dd" => {
            let dev = args.iter().find_map(dd_output_device)?;
            Some((
                Rule::DeviceWrite,
                format!("`dd` writes to the device `{dev}` (`{shown}`)"),
            ))
        }
        "tee" | "cp" => {
            let dev = operands(args).find_map(block_device)?;
            Some((
                Rule::DeviceWrite,
                format!("`{name}` writes to the block device `{dev}` (`{shown}`)"),
            ))
        }
        "shutdown" | "reboot" | "halt" | "poweroff" => {
            let cancel = name == "shutdown" && lits().any(|t| matches!(t.as_str(), "-c" | "--help"));
            (!cancel).then(|| (Rule::Power, format!("`{name}` (`{shown}`)")))
        }
        "init" | "telinit" => lits()
            .any(|t| t == "0" || t == "6")
            .then(|| (Rule::Power, format!("`{name}` to runlevel 0 or 6 (`{shown}`)"))),
        "systemctl" => systemctl_power(args).then(|| {
            (
                Rule::Power,
                format!("`systemctl` stopping or restarting the machine (`{shown}`)"),
            )
        }),
        _ => None,
    }
}

// ---- resolving a command through its wrappers ----

enum Resolved<'w> {
    /// No command runs (`sudo -l`, `command -v rm`, `xargs` with none).
    Nothing,
    Command {
        name: String,
        args: &'w [Word],
    },
    /// The command word is computed at run time.
    Dynamic {
        word: &'w Word,
        args: &'w [Word],
    },
    /// A script given as text to a shell (`bash -c`, `eval`, `su -c`, `env -S`).
    Script {
        by: String,
        text: String,
    },
}

/// How a wrapper's options are read.
struct Opts {
    /// Short options taking an argument (the rest of the cluster, or the next word).
    short_arg: &'static str,
    /// Short options taking an optional argument, attached only.
    short_attached: &'static str,
    /// Long options (without `--`) taking an argument (`=value` or the next word).
    long_arg: &'static [&'static str],
    /// Operands before the command (`timeout`'s duration, `chroot`'s directory).
    operands: usize,
    /// `NAME=value` words before the command are skipped.
    assignments: bool,
    /// `-N` is an option (`nice -10`).
    numeric: bool,
}

const NO_OPTS: Opts = Opts {
    short_arg: "",
    short_attached: "",
    long_arg: &[],
    operands: 0,
    assignments: false,
    numeric: false,
};

const SUDO: Opts = Opts {
    short_arg: "ughpCDrtTUR",
    long_arg: &[
        "user",
        "group",
        "host",
        "prompt",
        "close-from",
        "chdir",
        "role",
        "type",
        "command-timeout",
        "other-user",
        "chroot",
    ],
    assignments: true,
    ..NO_OPTS
};
const DOAS: Opts = Opts {
    short_arg: "uC",
    ..NO_OPTS
};
const ENV: Opts = Opts {
    short_arg: "uCS",
    long_arg: &[
        "unset",
        "chdir",
        "split-string",
        "block-signal",
        "default-signal",
        "ignore-signal",
    ],
    assignments: true,
    ..NO_OPTS
};
const NICE: Opts = Opts {
    short_arg: "n",
    long_arg: &["adjustment"],
    numeric: true,
    ..NO_OPTS
};
const IONICE: Opts = Opts {
    short_arg: "cnpPu",
    long_arg: &["class", "classdata", "pid", "pgid", "uid"],
    ..NO_OPTS
};
const TIMEOUT: Opts = Opts {
    short_arg: "sk",
    long_arg: &["signal", "kill-after"],
    operands: 1,
    ..NO_OPTS
};
const XARGS: Opts = Opts {
    short_arg: "aEILnPsd",
    short_attached: "eil",
    long_arg: &[
        "arg-file",
        "delimiter",
        "max-lines",
        "max-args",
        "max-procs",
        "max-chars",
        "process-slot-var",
    ],
    ..NO_OPTS
};
const EXEC: Opts = Opts {
    short_arg: "a",
    ..NO_OPTS
};
const TIME: Opts = Opts {
    short_arg: "fo",
    long_arg: &["format", "output"],
    ..NO_OPTS
};
const STDBUF: Opts = Opts {
    short_arg: "ioe",
    long_arg: &["input", "output", "error"],
    ..NO_OPTS
};
const CHROOT: Opts = Opts {
    long_arg: &["userspec", "groups"],
    operands: 1,
    ..NO_OPTS
};
const RUNUSER: Opts = Opts {
    short_arg: "ugGsw",
    long_arg: &["user", "group", "supp-group", "shell", "whitelist-environment"],
    ..NO_OPTS
};

/// The index of the command word after a wrapper's options (and operands) starting at
/// `start`; `None` when there is none. A word computed at run time is taken for the command.
fn skip_options(words: &[Word], start: usize, o: &Opts) -> Option<usize> {
    let mut i = start;
    let mut operands = o.operands;
    let mut options = true;
    loop {
        let w = words.get(i)?;
        let Some(t) = w.literal() else {
            if operands > 0 {
                operands -= 1;
                i += 1;
                continue;
            }
            return Some(i);
        };
        if options && t == "--" {
            options = false;
            i += 1;
            continue;
        }
        if options && let Some(long) = t.strip_prefix("--") {
            i += if !long.contains('=') && o.long_arg.contains(&long) {
                2
            } else {
                1
            };
            continue;
        }
        if options
            && t.len() > 1
            && let Some(cluster) = t.strip_prefix('-')
        {
            if o.numeric && cluster.bytes().all(|b| b.is_ascii_digit()) {
                i += 1;
                continue;
            }
            let mut takes_next = false;
            for (k, c) in cluster.char_indices() {
                if o.short_arg.contains(c) {
                    takes_next = k + c.len_utf8() == cluster.len();
                    break;
                }
                if o.short_attached.contains(c) {
                    break;
                }
            }
            i += if takes_next { 2 } else { 1 };
            continue;
        }
        if options && o.assignments && w.assignment_name().is_some() {
            i += 1;
            continue;
        }
        if operands > 0 {
            operands -= 1;
            i += 1;
            continue;
        }
        return Some(i);
    }
}

/// The command a simple command's words run, through its wrappers.
fn resolve(words: &[Word]) -> Resolved<'_> {
    let mut i = 0;
    loop {
        let Some(word) = words.get(i) else {
            return Resolved::Nothing;
        };
        let rest = words.get(i + 1..).unwrap_or_default();
        let Some(name) = command_name(word) else {
            return Resolved::Dynamic { word, args: rest };
        };
        let opts = match name.as_str() {
            "sudo" => &SUDO,
            "doas" => &DOAS,
            "nice" => &NICE,
            "ionice" => &IONICE,
            "timeout" => &TIMEOUT,
            "xargs" => &XARGS,
            "exec" => &EXEC,
            "time" => &TIME,
            "stdbuf" => &STDBUF,
            "chroot" => &CHROOT,
            "nohup" | "busybox" | "toybox" | "builtin" | "setsid" => &NO_OPTS,
            "env" => {
                if let Some(text) = env_split_string(rest) {
                    return Resolved::Script {
                        by: "env -S".to_owned(),
                        text,
                    };
                }
                &ENV
            }
            "command" => {
                let prints = rest
                    .iter()
                    .map_while(|w| w.literal().filter(|t| t.starts_with('-') && t != "--"))
                    .any(|t| t.contains('v') || t.contains('V'));
                if prints {
                    return Resolved::Nothing;
                }
                &NO_OPTS
            }
            "eval" => {
                return Resolved::Script {
                    by: "eval".to_owned(),
                    text: words_text(rest),
                };
            }
            "su" | "runuser" => {
                if let Some(text) = su_command(rest) {
                    return Resolved::Script { by: name, text };
                }
                let direct = name == "runuser"
                    && rest
                        .iter()
                        .filter_map(Word::literal)
                        .any(|t| t == "-u" || t.starts_with("--user"));
                if !direct {
                    return Resolved::Nothing;
                }
                &RUNUSER
            }
            n if SHELLS.contains(&n) => {
                if let ShellRun::Script(script) = shell_run(rest) {
                    return Resolved::Script {
                        by: format!("{name} -c"),
                        text: word_text(script),
                    };
                }
                return Resolved::Command { name, args: rest };
            }
            _ => return Resolved::Command { name, args: rest },
        };
        match skip_options(words, i + 1, opts) {
            Some(j) => i = j,
            None => return Resolved::Nothing,
        }
    }
}

/// `env -S STRING …` / `--split-string=STRING`: the string and the words after it, as a script.
fn env_split_string(args: &[Word]) -> Option<String> {
    let mut i = 0;
    while let Some(t) = args.get(i).and_then(Word::literal) {
        if t == "--" || !t.starts_with('-') || t == "-" {
            return None;
        }
        let value = if let Some(v) = t.strip_prefix("--split-string=") {
            Some((v.to_owned(), i + 1))
        } else if t == "--split-string" {
            args.get(i + 1).map(|w| (word_text(w), i + 2))
        } else if !t.starts_with("--")
            && let Some((k, _)) = t
                .char_indices()
                .skip(1)
                .take_while(|(_, c)| *c != 'u' && *c != 'C')
                .find(|(_, c)| *c == 'S')
        {
            let attached = &t[k + 1..];
            if attached.is_empty() {
                args.get(i + 1).map(|w| (word_text(w), i + 2))
            } else {
                Some((attached.to_owned(), i + 1))
            }
        } else {
            None
        };
        if let Some((text, next)) = value {
            let rest = args.get(next..).unwrap_or_default();
            return Some(if rest.is_empty() {
                text
            } else {
                format!("{text} {}", words_text(rest))
            });
        }
        i += 1;
        // Options of env that take a separate argument.
        if matches!(t.as_str(), "-u" | "-C" | "--unset" | "--chdir") {
            i += 1;
        }
    }
    None
}

/// `su`/`runuser`'s `-c COMMAND` / `--command=COMMAND` / `--session-command COMMAND`: the
/// command's text.
fn su_command(args: &[Word]) -> Option<String> {
    let mut i = 0;
    while let Some(w) = args.get(i) {
        i += 1;
        let Some(t) = w.literal() else { continue };
        if t == "--" {
            return None;
        }
        if t == "--command" || t == "--session-command" {
            return args.get(i).map(word_text);
        }
        if let Some(v) = t
            .strip_prefix("--command=")
            .or_else(|| t.strip_prefix("--session-command="))
        {
            return Some(v.to_owned());
        }
        if let Some(cluster) = t.strip_prefix('-')
            && !cluster.starts_with('-')
            && cluster.ends_with('c')
        {
            return args.get(i).map(word_text);
        }
    }
    None
}

enum ShellRun<'w> {
    /// `-c SCRIPT`
    Script(&'w Word),
    /// Reads its script from standard input.
    Stdin,
    /// Runs a script file, or nothing.
    Other,
}

/// A shell, or the shell's `source` / `.` (they run shell code).
fn is_shell(name: &str) -> bool {
    SHELLS.contains(&name) || name == "source" || name == "."
}

/// How a shell called with `args` gets its script.
fn shell_run(args: &[Word]) -> ShellRun<'_> {
    let mut c = false;
    let mut s = false;
    let mut i = 0;
    while let Some(t) = args.get(i).and_then(Word::literal) {
        if t == "--" || t == "-" {
            i += 1;
            break;
        }
        if let Some(long) = t.strip_prefix("--") {
            i += if matches!(long, "rcfile" | "init-file") {
                2
            } else {
                1
            };
            continue;
        }
        if t.len() > 1 && (t.starts_with('-') || t.starts_with('+')) {
            let flags = &t[1..];
            if t.starts_with('-') {
                c |= flags.contains('c');
                s |= flags.contains('s');
            }
            i += if flags.ends_with(['o', 'O']) { 2 } else { 1 };
            continue;
        }
        break;
    }
    let operand = args.get(i);
    if c {
        return operand.map_or(ShellRun::Other, ShellRun::Script);
    }
    match operand {
        _ if s => ShellRun::Stdin,
        None => ShellRun::Stdin,
        Some(w) if w.literal().is_some_and(|t| STDIN_PATHS.contains(&t.as_str())) => ShellRun::Stdin,
        Some(_) => ShellRun::Other,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CodeFrom {
    /// An argument (`-c`, `-e`), a module (`-m`) or a script file.
    Elsewhere,
    Stdin,
}

/// For an interpreter (a shell, `source`, Python, Perl, Ruby, Node, PHP): where the code it
/// runs comes from. `None` for other commands.
fn code_source(name: &str, args: &[Word]) -> Option<CodeFrom> {
    if name == "source" || name == "." {
        let stdin = args
            .first()
            .and_then(Word::literal)
            .is_some_and(|a| STDIN_PATHS.contains(&a.as_str()));
        return Some(if stdin {
            CodeFrom::Stdin
        } else {
            CodeFrom::Elsewhere
        });
    }
    if SHELLS.contains(&name) {
        return Some(match shell_run(args) {
            ShellRun::Stdin => CodeFrom::Stdin,
            _ => CodeFrom::Elsewhere,
        });
    }
    // (code options, options taking an argument, options taking an attached one, long code
    // options, long options taking an argument)
    type Spec = (
        &'static str,
        &'static str,
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
    );
    let spec: Spec = if name.starts_with("python") || name.starts_with("pypy") {
        ("cm", "WX", "", &[], &["check-hash-based-pycs"])
    } else if name == "perl" || name.starts_with("perl5") {
        ("eE", "", "IMmCdDFilx0", &[], &[])
    } else if name == "ruby" {
        ("e", "rICE", "0FKTWxi", &[], &[])
    } else if name == "node" || name == "nodejs" {
        (
            "ep",
            "r",
            "",
            &["eval", "print"],
            &["require", "import", "loader", "input-type", "conditions"],
        )
    } else if name == "php" {
        ("rBRFE", "cdz", "", &[], &[])
    } else {
        return None;
    };
    let (code, with_arg, attached, long_code, long_arg) = spec;
    let mut i = 0;
    while let Some(w) = args.get(i) {
        i += 1;
        let Some(t) = w.literal() else {
            return Some(CodeFrom::Elsewhere);
        };
        if t == "--" {
            break;
        }
        if STDIN_PATHS.contains(&t.as_str()) {
            return Some(CodeFrom::Stdin);
        }
        if let Some(long) = t.strip_prefix("--") {
            let key = long.split('=').next().unwrap_or_default();
            if long_code.contains(&key) {
                return Some(CodeFrom::Elsewhere);
            }
            if !long.contains('=') && long_arg.contains(&key) {
                i += 1;
            }
            continue;
        }
        if let Some(cluster) = t.strip_prefix('-') {
            for (k, c) in cluster.char_indices() {
                if code.contains(c) {
                    return Some(CodeFrom::Elsewhere);
                }
                if with_arg.contains(c) {
                    if k + c.len_utf8() == cluster.len() {
                        i += 1;
                    }
                    break;
                }
                if attached.contains(c) {
                    break;
                }
            }
            continue;
        }
        return Some(CodeFrom::Elsewhere);
    }
    Some(match args.get(i) {
        Some(w) if !w.literal().is_some_and(|t| STDIN_PATHS.contains(&t.as_str())) => CodeFrom::Elsewhere,
        _ => CodeFrom::Stdin,
    })
}

/// Whether a substitution in `word` runs a download; the downloader's name.
fn word_downloads(word: &Word, depth: usize) -> Option<String> {
    pieces_download(&word.pieces, depth)
}

fn pieces_download(pieces: &[Piece], depth: usize) -> Option<String> {
    pieces.iter().find_map(|p| match p {
        Piece::Lit { .. } => None,
        Piece::Param { operand, .. } => operand.as_ref().and_then(|w| word_downloads(w, depth)),
        Piece::Subst { script, .. } | Piece::ProcSubst { script, .. } => script_downloads(script, depth + 1),
        Piece::Arith { inner, .. } => pieces_download(inner, depth),
    })
}

fn script_downloads(script: &Script, depth: usize) -> Option<String> {
    if depth > shell::MAX_NESTING + 2 {
        return None;
    }
    script
        .pipelines
        .iter()
        .flat_map(|p| &p.commands)
        .find_map(|c| cmd_downloads(c, depth))
}

fn cmd_downloads(cmd: &Cmd, depth: usize) -> Option<String> {
    match cmd {
        Cmd::Simple(s) => {
            let words = split_words(&s.words);
            match resolve(&words) {
                Resolved::Command { name, .. } if DOWNLOADERS.contains(&name.as_str()) => return Some(name),
                Resolved::Script { text, .. } if text.len() <= MAX_PEEK_TEXT && depth <= MAX_PEEK_DEPTH => {
                    let parsed = shell::parse_at(&text, depth + 1);
                    if let Some(d) = script_downloads(&parsed.script, depth + 1) {
                        return Some(d);
                    }
                }
                _ => {}
            }
            s.words.iter().find_map(|w| word_downloads(w, depth))
        }
        Cmd::Group { script, .. } => script_downloads(script, depth + 1),
        Cmd::Function { .. } => None,
    }
}

/// Whether the body of function `name` runs `name` in a pipeline or in the background.
fn fork_bomb(name: &str, cmd: &Cmd, concurrent: bool, depth: usize) -> bool {
    if depth > shell::MAX_NESTING + 2 {
        return false;
    }
    match cmd {
        Cmd::Simple(s) => {
            concurrent
                && split_words(&s.words)
                    .first()
                    .and_then(command_name)
                    .is_some_and(|n| n == name)
        }
        Cmd::Group { script, .. } => script.pipelines.iter().any(|p| {
            let concurrent = concurrent || p.background || p.commands.len() > 1;
            p.commands
                .iter()
                .any(|c| fork_bomb(name, c, concurrent, depth + 1))
        }),
        Cmd::Function { .. } => false,
    }
}

// ---- words ----

/// The command name a word stands for: its literal value without a directory (`/bin/rm` →
/// `rm`); `None` when it is computed at run time (an expansion, a glob).
fn command_name(word: &Word) -> Option<String> {
    let globs = word.pieces.iter().any(|p| {
        matches!(p, Piece::Lit { text, quoted: false }
            if text.contains(['*', '?']) || text.find('[').is_some_and(|k| text[k + 1..].contains(']')))
    });
    if globs {
        return None;
    }
    let text = word.literal()?;
    Some(match text.rsplit_once('/') {
        Some((_, base)) => base.to_owned(),
        None => text,
    })
}

/// The words of a simple command after the splits the shell does that matter here: an
/// unquoted `$IFS` / `${IFS}` separates words (`rm${IFS}-rf${IFS}/`), and an unquoted `$1`…`$9`
/// next to other text is taken as empty (`rm$IFS$9-rf`).
fn split_words(words: &[Word]) -> Cow<'_, [Word]> {
    let special = |w: &Word| w.pieces.iter().any(|p| is_ifs(p) || is_positional(p));
    if !words.iter().any(special) {
        return Cow::Borrowed(words);
    }
    let mut out = Vec::with_capacity(words.len());
    for w in words {
        let special = w.pieces.iter().any(|p| is_ifs(p) || is_positional(p));
        if !special {
            out.push(w.clone());
            continue;
        }
        let mut cur: Vec<Piece> = Vec::new();
        let alone = w.pieces.len() == 1;
        let part = |pieces: Vec<Piece>| {
            let mut raw = String::new();
            pieces_text(&pieces, &mut raw);
            Word { pieces, raw }
        };
        for p in &w.pieces {
            if is_ifs(p) {
                if !cur.is_empty() {
                    out.push(part(std::mem::take(&mut cur)));
                }
            } else if is_positional(p) && !alone {
                continue;
            } else {
                cur.push(p.clone());
            }
        }
        if !cur.is_empty() {
            out.push(part(cur));
        }
    }
    Cow::Owned(out)
}

fn is_ifs(p: &Piece) -> bool {
    matches!(p, Piece::Param { name, op, quoted: false, .. } if name == "IFS" && op.is_empty())
}

fn is_positional(p: &Piece) -> bool {
    matches!(p, Piece::Param { name, op, quoted: false, .. }
        if op.is_empty() && name.len() == 1 && name.bytes().all(|b| (b'1'..=b'9').contains(&b)))
}

/// A word as a shell would re-read it (`eval`, `bash -c`): literal text with the quotes
/// removed, expansions as written.
fn word_text(word: &Word) -> String {
    let mut out = String::new();
    pieces_text(&word.pieces, &mut out);
    out
}

fn pieces_text(pieces: &[Piece], out: &mut String) {
    for p in pieces {
        match p {
            Piece::Lit { text, .. } => out.push_str(text),
            Piece::Param { raw, .. }
            | Piece::Subst { raw, .. }
            | Piece::ProcSubst { raw, .. }
            | Piece::Arith { raw, .. } => out.push_str(raw),
        }
    }
}

fn words_text(words: &[Word]) -> String {
    words.iter().map(word_text).collect::<Vec<_>>().join(" ")
}

/// What `echo` / `printf` with only literal arguments print (escapes decoded; `printf`'s
/// format followed by its arguments, which is close enough to be read as a script).
fn literal_output(name: &str, args: &[Word]) -> Option<String> {
    let mut texts = args.iter().map(Word::literal).collect::<Option<Vec<String>>>()?;
    if name == "echo" {
        let flags = texts
            .iter()
            .take_while(|t| {
                t.len() > 1 && t.starts_with('-') && t[1..].chars().all(|c| matches!(c, 'n' | 'e' | 'E'))
            })
            .count();
        let escapes = texts[..flags].iter().any(|t| t.contains('e'));
        let text = texts.split_off(flags).join(" ");
        return Some(if escapes {
            shell::decode_ansi_c(&text)
        } else {
            text
        });
    }
    if texts.first().is_some_and(|t| t == "--") {
        texts.remove(0);
    }
    let mut rest = texts.into_iter();
    let format = shell::decode_ansi_c(&rest.next()?);
    let args: Vec<String> = rest.collect();
    Some(if args.is_empty() {
        format
    } else {
        format!("{format} {}", args.join(" "))
    })
}

/// `-xyz` with one of `letters` in it (not a long option).
fn is_short_cluster_with(t: &str, letters: &[char]) -> bool {
    t.len() > 1 && t.starts_with('-') && !t.starts_with("--") && t[1..].contains(letters)
}

/// The arguments that are not options (everything after `--`).
fn operands(args: &[Word]) -> impl Iterator<Item = &Word> {
    let mut options = true;
    args.iter().filter(move |a| match a.literal() {
        Some(t) if options && t == "--" => {
            options = false;
            false
        }
        Some(t) if options && t.len() > 1 && t.starts_with('-') => false,
        _ => true,
    })
}

/// A word's value as a path: fully known, or only a literal prefix before a run-time part.
/// `~`, `~user` (unquoted, at the start) and `$HOME` become [`HOME`].
/// Stands for a home directory at the start of a path.
const HOME: char = '\u{1}';

enum PathShape {
    Known(String),
    Prefix(String),
}

impl PathShape {
    fn known(self) -> Option<String> {
        match self {
            PathShape::Known(p) => Some(p),
            PathShape::Prefix(_) => None,
        }
    }
}

fn path_shape(word: &Word) -> PathShape {
    let mut out = String::new();
    for (k, p) in word.pieces.iter().enumerate() {
        match p {
            Piece::Lit { text, quoted } => {
                if k == 0 && !quoted && text.starts_with('~') {
                    let end = text.find('/').unwrap_or(text.len());
                    out.push(HOME);
                    out.push_str(&text[end..]);
                } else {
                    out.push_str(text);
                }
            }
            Piece::Param { name, op, .. } if k == 0 && name == "HOME" && op.is_empty() => out.push(HOME),
            _ => return PathShape::Prefix(out),
        }
    }
    PathShape::Known(out)
}

/// `/a//b/./c/../d/` → `/a/b/d` (lexically; a leading [`HOME`] becomes `~`).
fn normalize(path: &str) -> String {
    let (head, rest) = match path.strip_prefix(HOME) {
        Some(rest) => ("~", rest),
        None => ("", path),
    };
    let absolute = head.is_empty() && rest.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for c in rest.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() && !absolute && head.is_empty() {
                    parts.push("..");
                }
            }
            _ => parts.push(c),
        }
    }
    let joined = parts.join("/");
    match (head, absolute) {
        ("~", _) if joined.is_empty() => "~".to_owned(),
        ("~", _) => format!("~/{joined}"),
        (_, true) => format!("/{joined}"),
        _ => joined,
    }
}

/// Whether a delete/chmod target is `/`, everything in it, a home directory, or a top-level
/// system directory (a relative path counts from `cwd`, when known); the target as shown.
fn root_target(word: &Word, cwd: Option<&str>) -> Option<String> {
    let mut shown = word.raw.clone();
    let path = match path_shape(word) {
        PathShape::Known(p) => p,
        // `/$X`: the root with a run-time name after it.
        PathShape::Prefix(p) => return (!p.is_empty() && p.chars().all(|c| c == '/')).then_some(shown),
    };
    let path = match cwd {
        Some(dir) if !is_rooted(&path) => {
            shown = format!("{shown}` in `{}", normalize(dir));
            format!("{dir}/{path}")
        }
        _ => path,
    };
    if !is_rooted(&path) {
        return None;
    }
    let n = normalize(&path);
    let mut parts: Vec<&str> = n.split('/').collect();
    // A last component that is all glob (`/*`, `~/.*`) means everything in the parent.
    if parts.len() > 1 && parts.last().is_some_and(|c| is_all_glob(c)) {
        parts.pop();
    }
    let dangerous = match parts.as_slice() {
        ["~"] | [""] | ["", ""] => true,
        ["", top] => SYSTEM_DIRS.iter().any(|d| glob_matches(top, d)),
        _ => false,
    };
    dangerous.then_some(shown)
}

/// An absolute path, or one in a home directory.
fn is_rooted(path: &str) -> bool {
    path.starts_with('/') || path.starts_with(HOME)
}

fn is_all_glob(c: &str) -> bool {
    !c.is_empty() && c.chars().all(|ch| matches!(ch, '*' | '.' | '?')) && c.contains(['*', '?'])
}

/// A small glob matcher (`*`, `?`, `[…]`, `[!…]`), for top-level directory names.
fn glob_matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    glob_at(&p, &n, 0)
}

fn glob_at(p: &[char], n: &[char], depth: usize) -> bool {
    if depth > 64 {
        return true;
    }
    match p.first() {
        None => n.is_empty(),
        Some('*') => (0..=n.len()).any(|k| glob_at(&p[1..], &n[k..], depth + 1)),
        Some('?') => !n.is_empty() && glob_at(&p[1..], &n[1..], depth + 1),
        Some('[') => {
            let Some(close) = p.iter().skip(2).position(|&c| c == ']').map(|k| k + 2) else {
                return n.first() == Some(&'[') && glob_at(&p[1..], &n[1..], depth + 1);
            };
            let Some(&c) = n.first() else { return false };
            let mut set = &p[1..close];
            let negate = matches!(set.first(), Some('!' | '^'));
            if negate {
                set = &set[1..];
            }
            let mut hit = false;
            let mut k = 0;
            while k < set.len() {
                if set.get(k + 1) == Some(&'-') && k + 2 < set.len() {
                    hit |= set[k] <= c && c <= set[k + 2];
                    k += 3;
                } else {
                    hit |= set[k] == c;
                    k += 1;
                }
            }
            hit != negate && glob_at(&p[close + 1..], &n[1..], depth + 1)
        }
        Some(&c) => n.first() == Some(&c) && glob_at(&p[1..], &n[1..], depth + 1),
    }
}

/// A path under `/dev` that is a device one can damage: the path (or its literal prefix).
fn device_path(word: &Word) -> Option<String> {
    let (path, known) = match path_shape(word) {
        PathShape::Known(p) => (normalize(&p), true),
        PathShape::Prefix(p) => (p, false),
    };
    let dev = path.strip_prefix("/dev/")?;
    let harmless = known
        && (HARMLESS_DEVICES.contains(&dev)
            || dev.starts_with("fd/")
            || dev.starts_with("pts/")
            || dev.starts_with("shm/"));
    (!harmless).then(|| word.raw.clone())
}

/// A block device (disk, partition, mapper, memory): the path as written.
fn block_device(word: &Word) -> Option<String> {
    let path = match path_shape(word) {
        PathShape::Known(p) => normalize(&p),
        PathShape::Prefix(p) => {
            if p == "/dev/" {
                return Some(word.raw.clone());
            }
            p
        }
    };
    let dev = path.strip_prefix("/dev/")?;
    const PREFIXES: [&str; 10] = [
        "sd", "nvme", "vd", "xvd", "hd", "mmcblk", "mapper/", "disk/", "dm-", "md",
    ];
    let block = PREFIXES.iter().any(|p| dev.starts_with(p)) || matches!(dev, "mem" | "kmem" | "port");
    block.then(|| word.raw.clone())
}

/// `dd`'s `of=/dev/…` when it is a device.
fn dd_output_device(word: &Word) -> Option<String> {
    // Take `of=` off the literal text it starts with, quoted or not (`"of=/dev/sda"`,
    // `o"f="/dev/sda`).
    let mut pieces: Vec<Piece> = word.pieces.clone();
    let mut need = "of=";
    while !need.is_empty() {
        let Some(Piece::Lit { text, .. }) = pieces.first_mut() else {
            return None;
        };
        if let Some(rest) = text.strip_prefix(need) {
            *text = rest.to_owned();
            need = "";
        } else if let Some(more) = need.strip_prefix(text.as_str()) {
            need = more;
            pieces.remove(0);
        } else {
            return None;
        }
    }
    let mut raw = String::new();
    pieces_text(&pieces, &mut raw);
    device_path(&Word { pieces, raw })
}

struct RmArgs<'w> {
    recursive: bool,
    force: bool,
    no_preserve_root: bool,
    operands: Vec<&'w Word>,
}

impl RmArgs<'_> {
    fn root_target(&self, cwd: Option<&str>) -> Option<String> {
        self.operands.iter().find_map(|w| root_target(w, cwd))
    }
}

/// `rm`'s options (clusters, long options and their unambiguous abbreviations) and operands.
/// An argument computed at run time may be options: it counts as `-rf`.
fn rm_args(args: &[Word]) -> RmArgs<'_> {
    let mut rm = RmArgs {
        recursive: false,
        force: false,
        no_preserve_root: false,
        operands: Vec::new(),
    };
    let mut options = true;
    for a in args {
        let Some(t) = a.literal() else {
            if options {
                rm.recursive = true;
                rm.force = true;
            }
            rm.operands.push(a);
            continue;
        };
        if !options || t == "-" || !t.starts_with('-') {
            rm.operands.push(a);
            continue;
        }
        if t == "--" {
            options = false;
            continue;
        }
        if let Some(long) = t.strip_prefix("--") {
            let long = long.split('=').next().unwrap_or_default();
            let is = |full: &str, shortest: usize| long.len() >= shortest && full.starts_with(long);
            rm.recursive |= is("recursive", 3);
            rm.force |= is("force", 1);
            rm.no_preserve_root |= is("no-preserve-root", 2);
            continue;
        }
        rm.recursive |= t.contains(['r', 'R']);
        rm.force |= t.contains('f');
    }
    rm
}

fn is_mkfs(name: &str) -> bool {
    name == "mkfs"
        || name.starts_with("mkfs.")
        || matches!(name, "mke2fs" | "mkdosfs" | "mkntfs" | "mkexfatfs")
}

/// Partition tools only listing or printing.
fn partition_read_only(name: &str, args: &[Word]) -> bool {
    let lits: Vec<String> = args.iter().filter_map(Word::literal).collect();
    let has = |opts: &[&str]| lits.iter().any(|t| opts.contains(&t.as_str()));
    match name {
        "fdisk" | "gdisk" | "cfdisk" => has(&["-l", "--list"]),
        "sfdisk" => has(&[
            "-l",
            "--list",
            "-d",
            "--dump",
            "-J",
            "--json",
            "-s",
            "--show-size",
            "-V",
            "--verify",
        ]),
        "parted" => {
            if has(&["-l", "--list"]) {
                return true;
            }
            // `parted [-s] DEVICE print`: the commands after the device.
            let after: Vec<&String> = lits
                .iter()
                .skip_while(|t| !t.starts_with("/dev/"))
                .skip(1)
                .filter(|t| !t.starts_with('-'))
                .collect();
            !after.is_empty()
                && after.iter().all(|t| {
                    matches!(
                        t.as_str(),
                        "print"
                            | "p"
                            | "unit"
                            | "s"
                            | "B"
                            | "kB"
                            | "MB"
                            | "GB"
                            | "MiB"
                            | "GiB"
                            | "%"
                            | "free"
                    )
                })
        }
        "sgdisk" => {
            let opts: Vec<&String> = lits.iter().filter(|t| t.starts_with('-')).collect();
            !opts.is_empty()
                && opts.iter().all(|t| {
                    matches!(
                        t.as_str(),
                        "-p" | "--print" | "-v" | "--verify" | "-L" | "--list-types"
                    ) || t.starts_with("-i")
                        || t.starts_with("--info")
                })
        }
        _ => false,
    }
}

/// `systemctl [OPTIONS] poweroff|reboot|halt|kexec|soft-reboot`, or starting/isolating their
/// targets.
fn systemctl_power(args: &[Word]) -> bool {
    const WITH_ARG: [&str; 10] = [
        "-H",
        "-M",
        "-t",
        "-p",
        "-n",
        "-o",
        "-s",
        "--host",
        "--machine",
        "--root",
    ];
    let mut i = 0;
    let mut verb = None;
    while let Some(w) = args.get(i) {
        i += 1;
        let Some(t) = w.literal() else { continue };
        if t.starts_with('-') {
            if WITH_ARG.contains(&t.as_str()) {
                i += 1;
            }
            continue;
        }
        verb = Some(t);
        break;
    }
    let Some(verb) = verb else { return false };
    if matches!(
        verb.as_str(),
        "poweroff" | "reboot" | "halt" | "kexec" | "soft-reboot"
    ) {
        return true;
    }
    matches!(
        verb.as_str(),
        "start" | "isolate" | "restart" | "reload-or-restart" | "try-restart"
    ) && args[i.min(args.len())..]
        .iter()
        .filter_map(Word::literal)
        .any(|t| {
            matches!(
                t.as_str(),
                "poweroff.target" | "reboot.target" | "halt.target" | "kexec.target" | "ctrl-alt-del.target"
            )
        })
}

/// Whether a configured rule matches a command.
fn extra_matches(e: &Extra, name: &str, args: &[Word]) -> bool {
    let Some((first, rest)) = e.words.split_first() else {
        return false;
    };
    let first = first.rsplit_once('/').map_or(first.as_str(), |(_, b)| b);
    if first != name {
        return false;
    }
    let mut want = rest.iter().peekable();
    for a in args {
        let Some(next) = want.peek() else { break };
        if a.literal().is_some_and(|t| t == **next) {
            want.next();
        }
    }
    want.peek().is_none()
}

/// A command line shortened for a reason.
fn show(text: &str) -> String {
    const MAX: usize = 100;
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= MAX {
        one_line
    } else {
        let mut s: String = one_line.chars().take(MAX).collect();
        s.push('…');
        s
    }
}

fn show_command(name: &str, args: &[Word]) -> String {
    let mut text = name.to_owned();
    for a in args {
        text.push(' ');
        text.push_str(&a.raw);
    }
    show(&text)
}
