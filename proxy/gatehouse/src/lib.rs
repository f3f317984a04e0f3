//! The Gatehouse binary's wiring: configuration → components → a pingora `Server` with one
//! service per listener (and one for the `/metrics` endpoint). `main.rs` is only the command line.

pub mod admin;
pub mod app;
pub mod approvals_cli;
pub mod demo;
pub mod endpoint;
pub mod guard;
pub mod masking;
pub mod metrics;
pub mod pgcluster;
pub mod plugins;
pub mod whatif;
