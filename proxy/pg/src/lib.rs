//! PostgreSQL front end and back end.
//!
//! The life of a connection, in module order: [`server`] accepts and runs the startup phase
//! (TLS, authentication through `gatehouse-identity`, the `connect` decision through the
//! guard, an upstream connection from [`upstream`]), then [`relay`] carries messages both ways:
//! each statement is classified ([`classify`]) and decided by the guard before it is forwarded.
//! This crate never makes a policy decision itself.

pub mod catalog;
pub mod classify;
pub mod literals;
mod mask;
pub mod proto;
mod relay;
pub mod results;
pub mod server;
mod stream;
pub mod tls;
pub mod upstream;

pub use server::{PgFront, PgFrontConfig};
