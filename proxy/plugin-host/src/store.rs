//! What each plugin instance's `Store` holds: a locked-down WASI context (no files, no
//! sockets, no environment, no arguments; stdout/stderr captured into the log), the memory
//! limiter, and the state behind the `host` imports (`log`, `config`).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::wit::{HostImports, Level, TypesImports};

/// `host.log` lines per call; more are counted and reported as one line.
const MAX_LOG_LINES_PER_CALL: u32 = 64;
/// Longest log line (bytes); longer ones are cut at a character boundary.
const MAX_LOG_LINE: usize = 2048;
/// Bytes of stdout/stderr per stream and call that reach the log.
const MAX_STDIO_PER_CALL: usize = 16 * 1024;
/// Table elements an instance may grow to.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// The `T` of every plugin `Store<T>`.
pub(crate) struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    plugin: Arc<str>,
    config_json: Arc<str>,
    log_lines: u32,
    log_dropped: u32,
    stdout: CapturedOutput,
    stderr: CapturedOutput,
}

impl StoreState {
    pub(crate) fn new(plugin: Arc<str>, config_json: Arc<str>, memory_cap: usize) -> StoreState {
        let stdout = CapturedOutput::new(Arc::clone(&plugin), "stdout");
        let stderr = CapturedOutput::new(Arc::clone(&plugin), "stderr");
        let mut builder = WasiCtxBuilder::new();
        builder
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        StoreState {
            wasi: builder.build(),
            table: ResourceTable::new(),
            limiter: Limiter {
                memory_cap,
                memory_hit: false,
            },
            plugin,
            config_json,
            log_lines: 0,
            log_dropped: 0,
            stdout,
            stderr,
        }
    }

    /// Reset the per-call budgets.
    pub(crate) fn begin_call(&mut self) {
        self.log_lines = 0;
        self.log_dropped = 0;
        self.limiter.memory_hit = false;
    }

    /// Flush partial stdio lines and report what the budgets dropped.
    pub(crate) fn end_call(&mut self) {
        self.stdout.finish_call();
        self.stderr.finish_call();
        if self.log_dropped > 0 {
            tracing::warn!(
                target: "gatehouse_plugin",
                plugin = %self.plugin,
                dropped = self.log_dropped,
                "plugin log lines over the per-call limit were dropped"
            );
            self.log_dropped = 0;
        }
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl HostImports for StoreState {
    fn log(&mut self, level: Level, message: String) {
        if self.log_lines >= MAX_LOG_LINES_PER_CALL {
            self.log_dropped = self.log_dropped.saturating_add(1);
            return;
        }
        self.log_lines += 1;
        let message = truncate(&message, MAX_LOG_LINE);
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(target: "gatehouse_plugin", plugin, "{message}"),
            Level::Debug => tracing::debug!(target: "gatehouse_plugin", plugin, "{message}"),
            Level::Info => tracing::info!(target: "gatehouse_plugin", plugin, "{message}"),
            Level::Warn => tracing::warn!(target: "gatehouse_plugin", plugin, "{message}"),
            Level::Error => tracing::error!(target: "gatehouse_plugin", plugin, "{message}"),
        }
    }

    fn config(&mut self) -> String {
        self.config_json.to_string()
    }
}

impl TypesImports for StoreState {}

/// Cut `s` to at most `max` bytes at a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Caps linear memory per instance and remembers whether the cap was hit, so that the trap
/// that usually follows (Rust's allocator aborts) is reported as a memory fault.
pub(crate) struct Limiter {
    memory_cap: usize,
    pub(crate) memory_hit: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.memory_hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// A guest stdout/stderr: complete lines go to the log (tagged with the plugin and stream),
/// bounded per call. Never blocks, never fails.
#[derive(Clone)]
pub(crate) struct CapturedOutput {
    state: Arc<Mutex<OutputState>>,
}

struct OutputState {
    plugin: Arc<str>,
    stream: &'static str,
    partial: Vec<u8>,
    this_call: usize,
    dropped: usize,
}

impl CapturedOutput {
    fn new(plugin: Arc<str>, stream: &'static str) -> CapturedOutput {
        CapturedOutput {
            state: Arc::new(Mutex::new(OutputState {
                plugin,
                stream,
                partial: Vec::new(),
                this_call: 0,
                dropped: 0,
            })),
        }
    }

    fn push(&self, mut bytes: &[u8]) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let room = MAX_STDIO_PER_CALL.saturating_sub(state.this_call);
        if bytes.len() > room {
            state.dropped = state.dropped.saturating_add(bytes.len() - room);
            bytes = &bytes[..room];
        }
        state.this_call += bytes.len();
        for chunk in bytes.split_inclusive(|&b| b == b'\n') {
            if let Some(line) = chunk.strip_suffix(b"\n") {
                state.partial.extend_from_slice(line);
                state.emit();
            } else {
                state.partial.extend_from_slice(chunk);
                if state.partial.len() >= MAX_LOG_LINE {
                    state.emit();
                }
            }
        }
    }

    fn finish_call(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !state.partial.is_empty() {
            state.emit();
        }
        if state.dropped > 0 {
            tracing::warn!(
                target: "gatehouse_plugin",
                plugin = %state.plugin,
                stream = state.stream,
                dropped_bytes = state.dropped,
                "plugin output over the per-call limit was dropped"
            );
        }
        state.this_call = 0;
        state.dropped = 0;
    }
}

impl OutputState {
    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.partial);
        let line = truncate(text.trim_end_matches('\r'), MAX_LOG_LINE);
        let plugin = &*self.plugin;
        // stderr is where a Rust guest's panic message goes.
        if self.stream == "stderr" {
            tracing::warn!(target: "gatehouse_plugin", plugin, stream = "stderr", "{line}");
        } else {
            tracing::info!(target: "gatehouse_plugin", plugin, stream = "stdout", "{line}");
        }
        self.partial.clear();
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for CapturedOutput {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[test]
    fn captured_output_is_bounded_per_call() {
        let out = CapturedOutput::new(Arc::from("p"), "stdout");
        out.push(&vec![b'x'; MAX_STDIO_PER_CALL + 10]);
        {
            let state = out.state.lock().unwrap();
            assert_eq!(state.this_call, MAX_STDIO_PER_CALL);
            assert_eq!(state.dropped, 10);
        }
        out.finish_call();
        let state = out.state.lock().unwrap();
        assert_eq!(state.this_call, 0);
        assert!(state.partial.is_empty());
    }
}
