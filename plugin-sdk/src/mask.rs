//! Masking strategies: `full` (`****`), `partial` (keep the last 4 letters/digits) and `hash`
//! (keyed deterministic `tok_…` tokens, so joins on masked values still match).
//!
//! This is the gateway's own implementation (the `gatehouse-mask` crate, re-exported): a
//! plugin and a Cedar `@mask` column rule given the same key produce the same token for the
//! same value.

pub use gatehouse_mask::*;
