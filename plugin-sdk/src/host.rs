//! The plugin's imports: a log line, and its own configuration.
//!
//! Compiled for a non-wasm target (native unit tests of plugin logic), the imports are replaced:
//! log lines go to stderr and [`config`] returns the `GATEHOUSE_PLUGIN_CONFIG` environment
//! variable, or `{}`.

use std::sync::OnceLock;

use crate::Level;

/// Writes a line to the gateway's log, tagged with the plugin's name.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::gatehouse::plugin::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[plugin {level:?}] {message}");
}

pub fn trace(message: &str) {
    log(Level::Trace, message);
}

pub fn debug(message: &str) {
    log(Level::Debug, message);
}

pub fn info(message: &str) {
    log(Level::Info, message);
}

pub fn warn(message: &str) {
    log(Level::Warn, message);
}

pub fn error(message: &str) {
    log(Level::Error, message);
}

/// The plugin's configuration as JSON (`{}` when none is given). Fetched from the host once per
/// instance and cached.
pub fn config() -> &'static str {
    static CONFIG: OnceLock<String> = OnceLock::new();
    CONFIG.get_or_init(fetch_config)
}

#[cfg(target_arch = "wasm32")]
fn fetch_config() -> String {
    crate::bindings::gatehouse::plugin::host::config()
}

#[cfg(not(target_arch = "wasm32"))]
fn fetch_config() -> String {
    std::env::var("GATEHOUSE_PLUGIN_CONFIG").unwrap_or_else(|_| "{}".to_owned())
}
