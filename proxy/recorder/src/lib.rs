//! Gatehouse recorder: the append-only, hash-chained event log in RocksDB.
//!
//! # Write path ("no record, no access")
//!
//! [`Recorder::append`] hands an event to one dedicated writer thread and waits until it is
//! durable. The writer drains everything queued (up to `max_batch` events), assigns each event
//! its `seq`, `prev_hash` and `hash`, writes the whole group — events, the chain head and
//! the session summaries that changed in more than their counters (the counters follow
//! within 100 ms; readers apply the events past them: `summaries.rs`) — as **one**
//! `WriteBatch` (WAL fsync for
//! [`Durability::Sync`](gatehouse_core::config::Durability::Sync), WAL write without fsync for
//! `Buffered`) and then answers every waiter. If the write fails, every event of the batch is
//! refused, the chain head does not move, and the next batch reopens the database and recomputes
//! the head from what is durable, so the recorder recovers once the cause (e.g. a full disk) is
//! gone. [`Recorder::append_nowait`] is the fire-and-forget variant for results and session ends.
//! The search indexes are written for committed batches by a second thread that trails the
//! writer (`indexer.rs`); searches read the few events it has not reached yet, so what is
//! durable is searchable.
//!
//! With `Sync`, a batch is fsynced only if someone waits for it: events nobody awaits
//! (results, notices, session ends, which record what already happened) are written to the
//! WAL and become durable with the next awaited batch's fsync or at most 100 ms later. A
//! process crash loses none of them (they are in the OS once written); a power loss may lose
//! the last 100 ms of them, never a decision. This halves the fsyncs of a serial client.
//!
//! # Storage layout
//!
//! | column family | key | value |
//! |---|---|---|
//! | `events` | seq, u64 big-endian | the event's JSON (see below) |
//! | `by_session` | session id ‖ `0x00` ‖ seq (u64 BE) | empty; written by earlier versions only (kept for a rollback, deleted with their events): a session's events are found through the search indexes' session term (`s`) and, past their mark, by reading the log |
//! | `sessions` | session id | JSON [`SessionSummary`], written by the writer (counters at most 100 ms late; see `summaries.rs`) |
//! | `meta` | `head` / `format` / `index_format` / `postings_indexed` / `postings_spread` / `summaries_through` | `{"seq":N,"hash":"…"}` / `gatehouse-log-v1` / `postings-v2` / seq the search indexes reach (u64 BE) / widest time range of an index block (µs, i64 BE) / seq every stored summary holds (u64 BE) |
//! | `checkpoints` | seq of the last event covered (u64 BE) | JSON [`Checkpoint`] |
//! | `search` | per block of events: a directory entry and a posting list per term, and a manifest (see `search.rs`) | |
//!
//! # Chain encoding, v1
//!
//! Events are numbered from 1 without gaps. For each event:
//!
//! - **canonical bytes** = the compact `serde_json` serialization of the [`Event`] with
//!   `hash` set to the empty string: no whitespace, fields in struct declaration order
//!   (`seq, time_us, session_id, principal, body, prev_hash, hash`; `body` carries its `kind`
//!   tag first, then its fields in declaration order). The bytes therefore end with
//!   `,"hash":""}`.
//! - **hash** = SHA-256(prev ‖ canonical bytes), where *prev* is the previous event's hash as
//!   32 raw bytes (not hex); for seq 1 it is 32 zero bytes ([`GENESIS_HASH`]). `prev_hash` and
//!   `hash` are written as 64 lowercase hex digits.
//! - The **stored value** is the canonical bytes with the hex hash placed between the final
//!   pair of quotes, i.e. the serialization of the finished event.
//!
//! A verifier never re-serializes: it takes the stored bytes, checks they end with
//! `,"hash":"<64 hex>"}`, replaces the digits with nothing to get the canonical bytes, and
//! recomputes the hash. Verification therefore does not depend on this crate's types (fields
//! added later do not break old events) and works on exported records too.

//! # Signed checkpoints and offline verification
//!
//! With `[recorder.checkpoints]`, the writer adds an Ed25519-signed [`Checkpoint`] of the chain
//! head to the group commit every `every_events` events or `every_secs` seconds, signs an idle
//! head once the interval has passed, and signs whatever is left when the log closes (format
//! and keys: `checkpoint.rs`). [`LogReader::verify`] and [`verify_bundle`] check a log or an
//! exported bundle against public keys only; [`verify`] documents exactly what they detect and
//! what they cannot. [`export_bundle`] writes a time window as an evidence bundle
//! (`bundle.rs`). [`restore_from_sink`] rebuilds a log from the shipped segments, verified as
//! they are read, for windows local retention no longer holds (`restore.rs`).

mod bundle;
mod checkpoint;
mod error;
mod event;
mod indexer;
pub mod ocsf;
mod reader;
mod report;
mod restore;
pub mod search;
pub mod ship;
mod store;
mod summaries;
mod transcript;
pub mod verify;
mod writer;

pub use bundle::{BundleSummary, ExportOptions, export_bundle, verify_bundle};
pub use checkpoint::{CHECKPOINT_FORMAT, Checkpoint, CheckpointSigner, PublicKeys, SignatureError, key_id};
pub use error::RecorderError;
pub use event::{
    ApprovalRecord, CHAIN_FORMAT, Event, EventBody, GENESIS_HASH, HoldRecord, NewEvent, OpError,
    PluginRecord, VoteRecord, canonical_from_stored, chain_hash, decode_hash,
};
pub use reader::LogReader;
pub use restore::{Restored, restore_from_sink};
pub use search::{SearchQuery, SearchResult};
pub use ship::{ShipStatus, Shipper, Sink, describe_ranges, verify_sink};
pub use store::{Floor, RestoredStart, SessionSummary};
pub use transcript::{clean as escape_controls, render_transcript};
pub use verify::{Finding, FindingKind, Outcome, TailPolicy, VerifyReport};
pub use writer::{GATEWAY_SESSION, Recorder, RecorderStats};

#[cfg(test)]
mod tests;
