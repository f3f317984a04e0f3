//! Guest-side SDK for Gatehouse WebAssembly plugins.
//!
//! A plugin is a Rust `cdylib` built for `wasm32-wasip2`, which makes it a WebAssembly component
//! exporting the `gatehouse:plugin@0.1.0` world (`wit/plugin.wit` in this crate). This crate
//! gives it:
//!
//! - [`bindings`]: the `wit-bindgen` bindings of that world, and the WIT types re-exported at the
//!   crate root ([`SessionInfo`], [`Statement`], [`RowBatch`], [`Verdict`], ...);
//! - [`Plugin`] (name, version, construction from the plugin's config) and one trait per hook
//!   ([`OnStatement`], [`OnRows`], [`OnCommand`], [`OnHttpRequest`], [`OnHttpResponse`]);
//! - [`export_plugin!`], which wires a type to the world's exports and generates `describe`
//!   from the hook traits the type implements (hooks it does not implement allow everything and
//!   are not listed, so Gatehouse never calls them);
//! - [`host`]: the plugin's log and config imports;
//! - [`rows`]: a validated view of a [`RowBatch`] (iterate cells without copying) and a builder
//!   for the [`RowsResult`] (cell edits + findings);
//! - [`mask`]: masking strategies — full (`****`), partial (keep the last 4), and a keyed
//!   deterministic hash token (`tok_…`, HMAC-SHA256) so that joins on masked values still match.
//!
//! See the crate's README for a tutorial.
//!
//! ```ignore
//! use gatehouse_plugin_sdk::{export_plugin, Config, OnRows, Plugin, RowBatch, RowsResult, SessionInfo};
//!
//! struct Nothing;
//! impl Plugin for Nothing {
//!     const NAME: &'static str = "nothing";
//!     const VERSION: &'static str = env!("CARGO_PKG_VERSION");
//!     fn new(_config: &Config) -> Result<Self, String> { Ok(Nothing) }
//! }
//! impl OnRows for Nothing {
//!     fn on_rows(&self, _s: &SessionInfo, _b: &RowBatch) -> Result<RowsResult, String> {
//!         Ok(RowsResult { edits: vec![], findings: vec![] })
//!     }
//! }
//! export_plugin!(Nothing);
//! ```

pub mod host;
pub mod mask;
pub mod rows;

#[doc(hidden)]
pub mod __private;

/// The `wit-bindgen` bindings of the `gatehouse:plugin@0.1.0` world.
///
/// Plugins normally use the re-exports at the crate root and [`export_plugin!`] instead.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "plugin",
        pub_export_macro: true,
        additional_derives: [PartialEq, Eq],
        default_bindings_module: "gatehouse_plugin_sdk::bindings",
    });
}

pub use bindings::gatehouse::plugin::types::{
    CellEdit, Column, Command, Finding, HoldRequest, Hook, HttpHead, HttpMessage, HttpResult, Level,
    PluginInfo, Protocol, RowBatch, RowsResult, SessionInfo, Statement, Verdict,
};

/// The version of the WIT package this SDK implements.
pub const WIT_VERSION: &str = "0.1.0";

/// A plugin's configuration: the `config` table of its `[[plugin]]` entry in the gateway config,
/// as a JSON document (`{}` when none is given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    raw: String,
}

impl Config {
    /// A configuration from its JSON text (an empty or blank text means `{}`).
    pub fn from_json(raw: impl Into<String>) -> Self {
        let raw = raw.into();
        if raw.trim().is_empty() {
            Config { raw: "{}".to_owned() }
        } else {
            Config { raw }
        }
    }

    /// The configuration the host gives this plugin instance ([`host::config`]).
    pub fn from_host() -> Self {
        Config::from_json(host::config())
    }

    /// The JSON text.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// Deserializes the configuration into the plugin's own type (use `#[serde(default)]` and
    /// `#[serde(deny_unknown_fields)]` as appropriate). The error names the problem.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_str(&self.raw).map_err(|e| format!("invalid plugin config: {e}"))
    }

    /// The configuration as a generic JSON value.
    pub fn value(&self) -> Result<serde_json::Value, String> {
        self.parse()
    }
}

/// What every plugin is: a name, a version, and a constructor from its configuration.
///
/// Gatehouse may create a fresh instance of a plugin per session or per call; [`Plugin::new`]
/// runs once per instance, lazily before its first hook call, and the value is kept for the
/// instance's later calls. If `new` fails, every hook call of that instance fails with its
/// error (and Gatehouse fails closed), so validate the configuration there.
pub trait Plugin: Sized + 'static {
    /// The plugin's name, as reported by `describe` (e.g. `pii-mask`).
    const NAME: &'static str;
    /// The plugin's version, usually `env!("CARGO_PKG_VERSION")`.
    const VERSION: &'static str;
    /// Whether the HTTP hooks want the body bytes.
    const WANTS_HTTP_BODY: bool = false;

    /// Builds the plugin from its configuration.
    fn new(config: &Config) -> Result<Self, String>;
}

/// `on-statement`: before a SQL statement runs (after Cedar allowed it).
pub trait OnStatement: Plugin {
    fn on_statement(&self, session: &SessionInfo, stmt: &Statement) -> Result<Verdict, String>;
}

/// `on-rows`: for each batch of result rows before it reaches the client. Return only the cells
/// you changed (see [`rows::RowsOutput`]).
pub trait OnRows: Plugin {
    fn on_rows(&self, session: &SessionInfo, batch: &RowBatch) -> Result<RowsResult, String>;
}

/// `on-command`: before an SSH exec request, shell line or file transfer runs.
pub trait OnCommand: Plugin {
    fn on_command(&self, session: &SessionInfo, cmd: &Command) -> Result<Verdict, String>;
}

/// `on-http-request`: before an HTTP request is forwarded.
pub trait OnHttpRequest: Plugin {
    fn on_http_request(&self, session: &SessionInfo, req: &HttpMessage) -> Result<HttpResult, String>;
}

/// `on-http-response`: before an HTTP response reaches the client.
pub trait OnHttpResponse: Plugin {
    fn on_http_response(&self, session: &SessionInfo, resp: &HttpMessage) -> Result<HttpResult, String>;
}

/// `Verdict::Allow`.
pub fn allow() -> Verdict {
    Verdict::Allow
}

/// `Verdict::Deny(reason)`.
pub fn deny(reason: impl Into<String>) -> Verdict {
    Verdict::Deny(reason.into())
}

/// `Verdict::Hold`: wait for approval by someone in one of the `approvers` groups.
pub fn hold<S: Into<String>>(approvers: impl IntoIterator<Item = S>, reason: impl Into<String>) -> Verdict {
    Verdict::Hold(HoldRequest {
        approvers: approvers.into_iter().map(Into::into).collect(),
        reason: reason.into(),
    })
}

/// An HTTP result that only carries a verdict (no body replacement, no findings).
pub fn http_verdict(verdict: Verdict) -> HttpResult {
    HttpResult {
        verdict,
        new_body: None,
        findings: Vec::new(),
    }
}

impl SessionInfo {
    /// The value of a target tag (e.g. `tag("env") == Some("prod")`).
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.target_tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the principal is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

impl Hook {
    /// The hook's WIT name, e.g. `on-rows`.
    pub fn wit_name(self) -> &'static str {
        match self {
            Hook::OnStatement => "on-statement",
            Hook::OnRows => "on-rows",
            Hook::OnCommand => "on-command",
            Hook::OnHttpRequest => "on-http-request",
            Hook::OnHttpResponse => "on-http-response",
        }
    }
}

/// The `plugin-info` that [`export_plugin!`] makes `describe` return for a plugin type: its
/// name, version, and the hooks whose traits it implements. Usable in native tests:
/// `assert_eq!(describe!(MyPlugin).hooks, [Hook::OnRows])`.
#[macro_export]
macro_rules! describe {
    ($ty:ty) => {{
        #[allow(unused_imports)]
        use $crate::__private::{
            DefaultOnCommand as _, DefaultOnHttpRequest as _, DefaultOnHttpResponse as _, DefaultOnRows as _,
            DefaultOnStatement as _, ViaOnCommand as _, ViaOnHttpRequest as _, ViaOnHttpResponse as _,
            ViaOnRows as _, ViaOnStatement as _,
        };
        let probe = $crate::__private::Probe::<$ty>::new();
        $crate::__private::describe::<$ty>(&[
            ($crate::Hook::OnStatement, (&probe).gh_has_on_statement()),
            ($crate::Hook::OnRows, (&probe).gh_has_on_rows()),
            ($crate::Hook::OnCommand, (&probe).gh_has_on_command()),
            ($crate::Hook::OnHttpRequest, (&probe).gh_has_on_http_request()),
            ($crate::Hook::OnHttpResponse, (&probe).gh_has_on_http_response()),
        ])
    }};
}

/// Exports a type implementing [`Plugin`] (and any of the hook traits) as the plugin's
/// component exports.
///
/// `describe` is generated from the hook traits the type implements; the other hooks answer
/// `allow` (or "no edits") and are not listed. `describe` also builds the plugin from its config
/// and logs the error if that fails. Use it once per plugin crate, at the top level:
///
/// ```ignore
/// gatehouse_plugin_sdk::export_plugin!(MyPlugin);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($ty:ty) => {
        const _: () = {
            #[allow(unused_imports)]
            use $crate::__private::{
                DefaultOnCommand as _, DefaultOnHttpRequest as _, DefaultOnHttpResponse as _,
                DefaultOnRows as _, DefaultOnStatement as _, ViaOnCommand as _, ViaOnHttpRequest as _,
                ViaOnHttpResponse as _, ViaOnRows as _, ViaOnStatement as _,
            };

            ::std::thread_local! {
                static GATEHOUSE_INSTANCE: $crate::__private::Instance<$ty> =
                    const { $crate::__private::Instance::new() };
            }

            fn gatehouse_probe() -> $crate::__private::Probe<$ty> {
                $crate::__private::Probe::new()
            }

            struct GatehousePluginExports;

            impl $crate::bindings::Guest for GatehousePluginExports {
                fn describe() -> $crate::PluginInfo {
                    // Build the plugin now, so that a bad config shows in the log at load time
                    // (`describe` cannot fail; the hooks will return the error).
                    if let Err(e) = GATEHOUSE_INSTANCE.with(|i| i.with(|_| Ok(()))) {
                        $crate::host::error(&e);
                    }
                    $crate::describe!($ty)
                }

                fn on_statement(
                    session: $crate::SessionInfo,
                    stmt: $crate::Statement,
                ) -> ::std::result::Result<$crate::Verdict, ::std::string::String> {
                    GATEHOUSE_INSTANCE
                        .with(|i| i.with(|p| (&gatehouse_probe()).gh_on_statement(p, &session, &stmt)))
                }

                fn on_rows(
                    session: $crate::SessionInfo,
                    batch: $crate::RowBatch,
                ) -> ::std::result::Result<$crate::RowsResult, ::std::string::String> {
                    GATEHOUSE_INSTANCE
                        .with(|i| i.with(|p| (&gatehouse_probe()).gh_on_rows(p, &session, &batch)))
                }

                fn on_command(
                    session: $crate::SessionInfo,
                    cmd: $crate::Command,
                ) -> ::std::result::Result<$crate::Verdict, ::std::string::String> {
                    GATEHOUSE_INSTANCE
                        .with(|i| i.with(|p| (&gatehouse_probe()).gh_on_command(p, &session, &cmd)))
                }

                fn on_http_request(
                    session: $crate::SessionInfo,
                    req: $crate::HttpMessage,
                ) -> ::std::result::Result<$crate::HttpResult, ::std::string::String> {
                    GATEHOUSE_INSTANCE
                        .with(|i| i.with(|p| (&gatehouse_probe()).gh_on_http_request(p, &session, &req)))
                }

                fn on_http_response(
                    session: $crate::SessionInfo,
                    resp: $crate::HttpMessage,
                ) -> ::std::result::Result<$crate::HttpResult, ::std::string::String> {
                    GATEHOUSE_INSTANCE
                        .with(|i| i.with(|p| (&gatehouse_probe()).gh_on_http_response(p, &session, &resp)))
                }
            }

    $crate::bindings::export!(GatehousePluginExports with_types_in $crate::bindings);
        };
    };
}

/// Values for native unit tests of plugin logic.
pub mod testing {
    use crate::{Protocol, SessionInfo, Statement};

    /// A PostgreSQL session of user `alice` (group `dev`) on target `db` tagged `env=dev`.
    pub fn session() -> SessionInfo {
        SessionInfo {
            session_id: "test-session".to_owned(),
            principal: "alice".to_owned(),
            principal_kind: "user".to_owned(),
            on_behalf_of: None,
            groups: vec!["dev".to_owned()],
            target: "db".to_owned(),
            target_tags: vec![("env".to_owned(), "dev".to_owned())],
            protocol: Protocol::Postgres,
            source: "127.0.0.1:50000".to_owned(),
        }
    }

    /// The same session on a target with the given tags.
    pub fn session_with_tags(tags: &[(&str, &str)]) -> SessionInfo {
        SessionInfo {
            target_tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..session()
        }
    }

    /// A statement with the given text, kind and parse-tree command, touching no tables.
    pub fn statement(text: &str, kind: &str, command: &str) -> Statement {
        Statement {
            text: text.to_owned(),
            kind: kind.to_owned(),
            command: command.to_owned(),
            tables_read: Vec::new(),
            tables_written: Vec::new(),
            functions: Vec::new(),
            has_where: false,
        }
    }
}
