//! Configuration: one [`PluginConfig`] per `[[plugin]]` entry, and the process-wide
//! [`HostConfig`] of the engine. Plain serde types (`deny_unknown_fields`), meant to be
//! embedded in (or re-exported from) the gateway config.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What happens to the operation when a plugin faults (trap, timeout, memory, malformed
/// return, plugin error, quarantine).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Deny the statement/command/request, fully mask the batch (the default).
    #[default]
    Closed,
    /// Carry on as if the plugin were not configured (the fault is still recorded).
    Open,
}

impl FailMode {
    /// `closed` or `open`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailMode::Closed => "closed",
            FailMode::Open => "open",
        }
    }
}

/// Default per-call deadline.
pub const DEFAULT_TIMEOUT_MS: u64 = 100;
/// Default memory cap per instance.
pub const DEFAULT_MEMORY_MB: u64 = 64;

/// One plugin: a `.wasm` component, its configuration and its limits. Targets refer to
/// plugins by `name`, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Unique name in the gateway config; what targets list, metrics and records use.
    pub name: String,
    /// The component file (`wasm32-wasip2`). Watched for changes by content hash.
    pub path: PathBuf,
    /// `closed` (default) or `open`.
    #[serde(default)]
    pub fail: FailMode,
    /// The plugin's own configuration, handed to it as JSON through `host.config`.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// Wall-time deadline per hook call, in milliseconds (default 100).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Linear memory cap per instance, in MiB (default 64).
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// Optional fuel (wasm instruction budget) per hook call; needs [`HostConfig::fuel`].
    #[serde(default)]
    pub fuel: Option<u64>,
}

impl PluginConfig {
    /// A config with the defaults: fail closed, `{}` config, 100 ms, 64 MiB, no fuel.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> PluginConfig {
        PluginConfig {
            name: name.into(),
            path: path.into(),
            fail: FailMode::Closed,
            config: empty_object(),
            timeout_ms: DEFAULT_TIMEOUT_MS,
            memory_mb: DEFAULT_MEMORY_MB,
            fuel: None,
        }
    }

    /// The per-call deadline.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

fn default_memory_mb() -> u64 {
    DEFAULT_MEMORY_MB
}

/// Process-wide settings of the plugin engine ([`crate::PluginHost`]). Every field has a
/// default, so `HostConfig::default()` (or an empty table) is a working configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Most plugin instances alive at once across all sessions (pooling allocator slots);
    /// one per session per plugin in its chain.
    pub max_instances: u32,
    /// Largest `memory_mb` any plugin may ask for (size of a pool slot's usable memory).
    pub max_memory_mb: u64,
    /// Epoch tick: the granularity of call deadlines, in milliseconds.
    pub epoch_tick_ms: u64,
    /// Compile plugins with fuel metering (slower code), so `fuel` limits can be used.
    pub fuel: bool,
    /// Cap on what one hook call may return: bytes of cell edits, bodies and strings.
    /// More is a malformed return.
    pub max_output_bytes: u64,
    /// Faults within `quarantine_window_secs` that quarantine a plugin.
    pub quarantine_faults: u32,
    /// The window for counting faults, in seconds.
    pub quarantine_window_secs: u64,
    /// How long a quarantined plugin is skipped (with its fail-mode behaviour), in seconds.
    pub quarantine_secs: u64,
}

impl Default for HostConfig {
    fn default() -> HostConfig {
        HostConfig {
            max_instances: 1000,
            max_memory_mb: 1024,
            epoch_tick_ms: 10,
            fuel: false,
            max_output_bytes: 16 << 20,
            quarantine_faults: 5,
            quarantine_window_secs: 60,
            quarantine_secs: 60,
        }
    }
}

impl HostConfig {
    /// The defaults, with `fuel` switched on when any of `plugins` sets a fuel budget.
    pub fn for_plugins(plugins: &[PluginConfig]) -> HostConfig {
        HostConfig {
            fuel: plugins.iter().any(|p| p.fuel.is_some()),
            ..HostConfig::default()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    #[test]
    fn plugin_config_defaults_and_unknown_fields() {
        let c: PluginConfig = serde_json::from_str(r#"{"name":"pii","path":"/x.wasm"}"#).unwrap();
        assert_eq!(c, PluginConfig::new("pii", "/x.wasm"));
        assert!(serde_json::from_str::<PluginConfig>(r#"{"name":"a","path":"b","nope":1}"#).is_err());
        let c: PluginConfig = serde_json::from_str(
            r#"{"name":"a","path":"b","fail":"open","config":{"k":[1]},"timeout_ms":5,"memory_mb":8,"fuel":10}"#,
        )
        .unwrap();
        assert_eq!(c.fail, FailMode::Open);
        assert_eq!(c.fuel, Some(10));
        assert_eq!(c.config["k"][0], 1);
    }

    #[test]
    fn host_config_defaults() {
        let c: HostConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, HostConfig::default());
        assert!(serde_json::from_str::<HostConfig>(r#"{"bogus":1}"#).is_err());
        let mut p = PluginConfig::new("a", "b");
        assert!(!HostConfig::for_plugins(std::slice::from_ref(&p)).fuel);
        p.fuel = Some(1);
        assert!(HostConfig::for_plugins(&[p]).fuel);
    }
}
