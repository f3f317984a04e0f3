//! Support code for [`export_plugin!`](crate::export_plugin). Not a public API.
//!
//! Hook detection uses "autoref specialization": for a concrete plugin type `P`, the call
//! `(&Probe::<P>::new()).gh_on_rows(..)` resolves to [`ViaOnRows`] (implemented for `Probe<P>`
//! when `P: OnRows`, found without an extra autoref) before [`DefaultOnRows`] (implemented for
//! every `&Probe<P>`, found only after one more autoref). It only works where `P` is a concrete
//! type, which is the case inside the macro's expansion.

use std::cell::OnceCell;
use std::marker::PhantomData;

use crate::{
    Command, Config, Hook, HttpMessage, HttpResult, OnCommand, OnHttpRequest, OnHttpResponse, OnRows,
    OnStatement, Plugin, PluginInfo, RowBatch, RowsResult, SessionInfo, Statement, Verdict,
};

/// The plugin value of this instance, built once from the host's config.
pub struct Instance<P>(OnceCell<Result<P, String>>);

impl<P: Plugin> Instance<P> {
    pub const fn new() -> Self {
        Instance(OnceCell::new())
    }

    pub fn with<R>(&self, f: impl FnOnce(&P) -> Result<R, String>) -> Result<R, String> {
        match self.0.get_or_init(|| P::new(&Config::from_host())) {
            Ok(plugin) => f(plugin),
            Err(e) => Err(format!("{} failed to initialise: {e}", P::NAME)),
        }
    }
}

impl<P: Plugin> Default for Instance<P> {
    fn default() -> Self {
        Self::new()
    }
}

pub fn describe<P: Plugin>(implemented: &[(Hook, bool)]) -> PluginInfo {
    PluginInfo {
        name: P::NAME.to_owned(),
        version: P::VERSION.to_owned(),
        hooks: implemented
            .iter()
            .filter(|(_, yes)| *yes)
            .map(|(hook, _)| *hook)
            .collect(),
        wants_http_body: P::WANTS_HTTP_BODY,
    }
}

pub struct Probe<P>(PhantomData<fn() -> P>);

impl<P> Probe<P> {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Probe(PhantomData)
    }
}

fn no_edits() -> RowsResult {
    RowsResult {
        edits: Vec::new(),
        findings: Vec::new(),
    }
}

fn allow_http() -> HttpResult {
    HttpResult {
        verdict: Verdict::Allow,
        new_body: None,
        findings: Vec::new(),
    }
}

macro_rules! hook_dispatch {
    ($via:ident, $default:ident, $trait:ident, $has:ident, $call:ident, $method:ident,
     $arg:ty, $ret:ty, $fallback:expr) => {
        pub trait $via<P> {
            fn $has(&self) -> bool;
            fn $call(&self, plugin: &P, session: &SessionInfo, arg: &$arg) -> Result<$ret, String>;
        }

        impl<P: $trait> $via<P> for Probe<P> {
            fn $has(&self) -> bool {
                true
            }
            fn $call(&self, plugin: &P, session: &SessionInfo, arg: &$arg) -> Result<$ret, String> {
                plugin.$method(session, arg)
            }
        }

        pub trait $default<P> {
            fn $has(&self) -> bool;
            fn $call(&self, plugin: &P, session: &SessionInfo, arg: &$arg) -> Result<$ret, String>;
        }

        impl<P> $default<P> for &Probe<P> {
            fn $has(&self) -> bool {
                false
            }
            fn $call(&self, _plugin: &P, _session: &SessionInfo, _arg: &$arg) -> Result<$ret, String> {
                Ok($fallback)
            }
        }
    };
}

hook_dispatch!(
    ViaOnStatement,
    DefaultOnStatement,
    OnStatement,
    gh_has_on_statement,
    gh_on_statement,
    on_statement,
    Statement,
    Verdict,
    Verdict::Allow
);
hook_dispatch!(
    ViaOnRows,
    DefaultOnRows,
    OnRows,
    gh_has_on_rows,
    gh_on_rows,
    on_rows,
    RowBatch,
    RowsResult,
    no_edits()
);
hook_dispatch!(
    ViaOnCommand,
    DefaultOnCommand,
    OnCommand,
    gh_has_on_command,
    gh_on_command,
    on_command,
    Command,
    Verdict,
    Verdict::Allow
);
hook_dispatch!(
    ViaOnHttpRequest,
    DefaultOnHttpRequest,
    OnHttpRequest,
    gh_has_on_http_request,
    gh_on_http_request,
    on_http_request,
    HttpMessage,
    HttpResult,
    allow_http()
);
hook_dispatch!(
    ViaOnHttpResponse,
    DefaultOnHttpResponse,
    OnHttpResponse,
    gh_has_on_http_response,
    gh_on_http_response,
    on_http_response,
    HttpMessage,
    HttpResult,
    allow_http()
);
