//! The `gatehouse:plugin` world, generated from `plugin-sdk/wit` (the single source of the
//! contract), and the host side of its imports.
//!
//! `bindgen!` emits `unsafe` blocks and `unsafe impl`s (lifting and lowering of the canonical
//! ABI), which is why this crate denies rather than forbids `unsafe_code` and allows it here.

#[allow(unsafe_code, missing_docs, clippy::all)]
mod generated {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../../plugin-sdk/wit",
        additional_derives: [PartialEq, Eq],
    });
}

pub(crate) use generated::Plugin as Bindings;
pub(crate) use generated::PluginPre as BindingsPre;
pub(crate) use generated::gatehouse::plugin::host::Host as HostImports;
pub(crate) use generated::gatehouse::plugin::types::Host as TypesImports;
pub use generated::gatehouse::plugin::types::{
    CellEdit, Column, Command, Finding, HoldRequest, Hook, HttpHead, HttpMessage, HttpResult, Level,
    PluginInfo as WitPluginInfo, Protocol, RowBatch, RowsResult, SessionInfo, Statement, Verdict,
};

/// The WIT package this host implements, e.g. for `gatehouse plugin check` output.
pub const WIT_PACKAGE: &str = "gatehouse:plugin@0.1.0";

impl Hook {
    /// Every hook, in WIT order.
    pub const ALL: [Hook; 5] = [
        Hook::OnStatement,
        Hook::OnRows,
        Hook::OnCommand,
        Hook::OnHttpRequest,
        Hook::OnHttpResponse,
    ];

    /// The WIT name, e.g. `on-rows`.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::OnStatement => "on-statement",
            Hook::OnRows => "on-rows",
            Hook::OnCommand => "on-command",
            Hook::OnHttpRequest => "on-http-request",
            Hook::OnHttpResponse => "on-http-response",
        }
    }

    pub(crate) fn bit(self) -> u8 {
        match self {
            Hook::OnStatement => 1,
            Hook::OnRows => 2,
            Hook::OnCommand => 4,
            Hook::OnHttpRequest => 8,
            Hook::OnHttpResponse => 16,
        }
    }
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Protocol {
    /// The WIT name, e.g. `postgres`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Postgres => "postgres",
            Protocol::Ssh => "ssh",
            Protocol::Http => "http",
        }
    }
}

impl Verdict {
    /// `allow`, `deny` or `hold`.
    pub fn kind(&self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny(_) => "deny",
            Verdict::Hold(_) => "hold",
        }
    }
}
