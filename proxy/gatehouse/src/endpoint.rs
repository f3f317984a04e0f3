//! A small operator-facing TCP endpoint (the metrics endpoint, the admin API) as a pingora
//! service of its own: the socket is bound before the server starts, so `127.0.0.1:0` works and
//! the real address can be reported; one thread, never competing with the PostgreSQL listeners'
//! runtimes; at most [`MAX_CONNECTIONS`] connections at once (more are closed at accept); it
//! stops accepting at shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::Service;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

/// Connections served at once per endpoint.
pub const MAX_CONNECTIONS: usize = 64;

/// Serves one accepted connection.
pub type Handler = Arc<dyn Fn(TcpStream) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A bound endpoint, not yet serving.
pub struct Endpoint {
    /// Also the `event` of the line [`report`](Self::report) prints, and the service name.
    name: &'static str,
    pub addr: SocketAddr,
    socket: Option<std::net::TcpListener>,
    handler: Handler,
}

impl Endpoint {
    pub fn bind(name: &'static str, addr: SocketAddr, handler: Handler) -> std::io::Result<Endpoint> {
        let socket = std::net::TcpListener::bind(addr)?;
        socket.set_nonblocking(true)?;
        Ok(Endpoint {
            name,
            addr: socket.local_addr()?,
            socket: Some(socket),
            handler,
        })
    }

    /// The machine-readable line `gatehouse serve` prints for it on stdout, after the
    /// listeners' `listening` lines: `{"event":"metrics","addr":"127.0.0.1:9464"}`.
    pub fn report(&self) {
        use std::io::Write as _;
        let line = serde_json::json!({"event": self.name, "addr": self.addr.to_string()});
        let mut out = std::io::stdout().lock();
        // A closed stdout is no reason not to serve.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// Accept until `shutdown` turns true (or its sender is gone).
    pub async fn serve(&mut self, mut shutdown: watch::Receiver<bool>) {
        let Some(socket) = self.socket.take() else { return };
        let listener = match TcpListener::from_std(socket) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(endpoint = self.name, "cannot register listener: {e}");
                return;
            }
        };
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((tcp, _peer)) => {
                        // Over the limit: close at once rather than queue.
                        let Ok(permit) = slots.clone().try_acquire_owned() else { continue };
                        let connection = (self.handler)(tcp);
                        tokio::spawn(async move {
                            connection.await;
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        tracing::warn!(endpoint = self.name, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break },
            }
        }
    }
}

#[async_trait]
impl Service for Endpoint {
    async fn start_service(&mut self, _fds: Option<ListenFds>, shutdown: ShutdownWatch, _per_fd: usize) {
        self.serve(shutdown).await;
    }

    fn name(&self) -> &str {
        self.name
    }

    fn threads(&self) -> Option<usize> {
        Some(1)
    }
}
