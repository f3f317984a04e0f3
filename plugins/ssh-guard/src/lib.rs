//! `ssh-guard`: denies dangerous shell commands in SSH sessions (`on-command`), parsed as shell
//! words rather than matched as substrings.
//!
//! Config (every key optional; the defaults are shown):
//!
//! ```json
//! {
//!   "disable": [],
//!   "hold": [],
//!   "approvers": ["ops"],
//!   "hold_in": null,
//!   "extra": []
//! }
//! ```
//!
//! - `disable`: rule ids that are turned off;
//! - `hold`: rule ids whose hits wait for approval by one of `approvers` (groups) instead of
//!   being denied;
//! - `hold_in`: `{"tag": "env", "values": ["prod"], "approvers": ["ops"]}` (the defaults of its
//!   keys): on a target whose tag `tag` has one of `values`, every hit waits for approval by one
//!   of its `approvers` instead of being denied; `null` turns it off;
//! - `extra`: more rules, `{"id": "kubectl-delete", "words": ["kubectl", "delete"]}`: a command
//!   named `words[0]` (after the wrappers are taken off) whose arguments contain the other words,
//!   in that order, is denied (or held) with that id.
//!
//! The built-in rule ids: `rm-root`, `disk-wipe`, `device-write`, `download-exec`, `power`,
//! `fork-bomb`, `chmod-root`, `unparseable` (see [`check`] and the README). Reasons read
//! `ssh-guard/<id>: …`. Commands of kind `exec` and `shell-line` (and any kind this plugin does
//! not know) are checked; `sftp` and `scp` operations are not shell commands and are allowed.

pub mod check;
pub mod shell;

use gatehouse_plugin_sdk::{
    Command, Config, OnCommand, Plugin, SessionInfo, Verdict, deny, export_plugin, hold,
};

pub use check::{Extra, Finding, Rule};

/// On which targets hits wait for approval instead of being denied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldIn {
    #[serde(default = "default_tag")]
    pub tag: String,
    #[serde(default = "default_values")]
    pub values: Vec<String>,
    #[serde(default = "default_approvers")]
    pub approvers: Vec<String>,
}

fn default_tag() -> String {
    "env".to_owned()
}

fn default_values() -> Vec<String> {
    vec!["prod".to_owned()]
}

fn default_approvers() -> Vec<String> {
    vec!["ops".to_owned()]
}

/// The plugin's JSON config.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshGuard {
    #[serde(default)]
    pub disable: Vec<String>,
    #[serde(default)]
    pub hold: Vec<String>,
    #[serde(default = "default_approvers")]
    pub approvers: Vec<String>,
    #[serde(default)]
    pub hold_in: Option<HoldIn>,
    #[serde(default)]
    pub extra: Vec<Extra>,
}

impl SshGuard {
    /// Whether a command of this kind is shell text.
    fn is_shell(kind: &str) -> bool {
        !matches!(kind, "sftp" | "scp")
    }

    pub fn verdict(&self, session: &SessionInfo, cmd: &Command) -> Verdict {
        if !Self::is_shell(&cmd.kind) {
            return Verdict::Allow;
        }
        let mut held: Option<(Vec<String>, String)> = None;
        for f in check::check(&cmd.line, &self.extra) {
            if self.disable.contains(&f.id) {
                continue;
            }
            let reason = format!("ssh-guard/{}: {}", f.id, f.what);
            if self.hold.contains(&f.id) {
                held.get_or_insert_with(|| (self.approvers.clone(), format!("{reason} needs approval")));
                continue;
            }
            if let Some(h) = &self.hold_in
                && let Some(value) = session.tag(&h.tag).filter(|v| h.values.iter().any(|x| x == v))
            {
                held.get_or_insert_with(|| {
                    (
                        h.approvers.clone(),
                        format!("{reason} needs approval on a target with {}={value}", h.tag),
                    )
                });
                continue;
            }
            return deny(reason);
        }
        match held {
            Some((approvers, reason)) => hold(approvers, reason),
            None => Verdict::Allow,
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.approvers.is_empty() {
            return Err("ssh-guard: approvers must name at least one group".to_owned());
        }
        if let Some(h) = &self.hold_in
            && h.approvers.is_empty()
        {
            return Err("ssh-guard: hold_in.approvers must name at least one group".to_owned());
        }
        for (k, e) in self.extra.iter().enumerate() {
            let well_formed =
                e.id.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && e.id
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !well_formed {
                return Err(format!(
                    "ssh-guard: extra rule id `{}` must be lowercase letters, digits and `-`",
                    e.id
                ));
            }
            if Rule::from_id(&e.id).is_some() || self.extra[..k].iter().any(|o| o.id == e.id) {
                return Err(format!("ssh-guard: extra rule id `{}` is already taken", e.id));
            }
            if e.words.is_empty() || e.words.iter().any(|w| w.is_empty()) {
                return Err(format!(
                    "ssh-guard: extra rule `{}` needs a non-empty list of non-empty words",
                    e.id
                ));
            }
        }
        for (key, ids) in [("disable", &self.disable), ("hold", &self.hold)] {
            if let Some(id) = ids
                .iter()
                .find(|id| Rule::from_id(id).is_none() && !self.extra.iter().any(|e| &e.id == *id))
            {
                let known: Vec<&str> = Rule::ALL
                    .iter()
                    .map(|r| r.id())
                    .chain(self.extra.iter().map(|e| e.id.as_str()))
                    .collect();
                return Err(format!(
                    "ssh-guard: unknown rule id `{id}` in {key} (known: {})",
                    known.join(", ")
                ));
            }
        }
        Ok(())
    }
}

impl Plugin for SshGuard {
    const NAME: &'static str = "ssh-guard";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: &Config) -> Result<Self, String> {
        let guard: SshGuard = config.parse()?;
        guard.validate()?;
        Ok(guard)
    }
}

impl OnCommand for SshGuard {
    fn on_command(&self, session: &SessionInfo, cmd: &Command) -> Result<Verdict, String> {
        Ok(self.verdict(session, cmd))
    }
}

export_plugin!(SshGuard);

#[cfg(test)]
mod tests;
