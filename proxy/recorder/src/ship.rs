//! Shipping the log off the host (`[recorder.shipping]`), and verifying what was shipped.
//!
//! A compromised gateway can rewrite its local log (and, holding the signing key, re-sign it);
//! it cannot rewrite what already left. The shipper copies **sealed segments** to an object
//! store through the `object_store` crate (S3-compatible endpoints, or a filesystem path):
//!
//! - a segment is the run of events after the previous segment up to the next signed
//!   checkpoint (at most [`MAX_SEGMENT_EVENTS`]; a longer run is cut there and its last piece
//!   carries the checkpoint). Boundaries depend only on the log and the previous boundary, so
//!   after a crash the same segments are cut again;
//! - it is named by its seq range, `segments/<first>-<last>.seg` (20-digit, zero-padded, so
//!   names sort in log order): sending it again replaces the object with the same events;
//! - delivery is at least once, in order: the cursor (the last acknowledged seq and its hash,
//!   `<log dir>/shipping/cursor.json`, replaced atomically) moves only after the sink
//!   acknowledged the put; after an outage or a restart shipping resumes from it;
//! - the shipper reads the log through the writer's own database (see `view`) and holds one
//!   segment in memory: a slow or unreachable sink never slows down recording, the backlog
//!   just stays on disk.
//!   The backlog is exposed (metrics, `/healthz`) and logged and recorded when shipping starts
//!   failing, when it lags past `backlog_alert_events`, and when it recovers;
//! - before a segment leaves, its chain is checked (every hash, every link to the cursor's
//!   hash, the checkpoint's head): a locally tampered log is not shipped, the shipper stops
//!   and says so;
//! - with `encryption_key`, segments are encrypted with AES-256-GCM before they leave (a random
//!   96-bit nonce per object, the object's name as associated data, so a segment cannot be
//!   passed off under another range's name).
//!
//! # Segment format (`gatehouse-segment-v1`)
//!
//! Line 1: `{"format":"gatehouse-segment-v1","first_seq":F,"last_seq":L,"checkpoint":{…}|null}`;
//! then the events F..=L, one stored record per line, byte for byte as in the log. Encrypted:
//! `GHSEG-AES256GCM-V1\n`, the 12-byte nonce, then the ciphertext and tag of the above.
//!
//! [`verify_sink`] walks every segment in name order through the same checks as a local log
//! ([`crate::verify`]): an edited, removed, replaced or reordered segment shows as the finding
//! its events give. A sink that expires its oldest segments itself (`sink_expires`) is walked
//! from the first segment it holds.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use gatehouse_core::config::ShippingConfig;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutPayload};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::SecureRandom as _;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, PublicKeys};
use crate::error::RecorderError;
use crate::event::{canonical_from_stored, chain_hash, decode_hash};
use crate::reader::LogReader;
use crate::verify::{FindingKind, RecordedHead, VerifyReport, Walk};
use crate::writer::{GATEWAY_SESSION, Recorder};

/// Name of the segment format.
pub const SEGMENT_FORMAT: &str = "gatehouse-segment-v1";
/// Most events in one segment.
pub const MAX_SEGMENT_EVENTS: u64 = 50_000;
const ENC_MAGIC: &[u8] = b"GHSEG-AES256GCM-V1\n";
const SEGMENTS: &str = "segments";
/// A put or get that takes longer than this failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait between retries after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Serialize, Deserialize)]
struct SegmentHeader {
    format: String,
    first_seq: u64,
    last_seq: u64,
    checkpoint: Option<Checkpoint>,
}

/// Where segments go: an object store, a prefix in it, and the optional encryption key.
pub struct Sink {
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    url: String,
    key: Option<LessSafeKey>,
    /// The sink deletes its oldest segments itself (`sink_expires`): it is verified and
    /// restored from the first segment it holds.
    expires: bool,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("url", &self.url)
            .field("encrypted", &self.key.is_some())
            .field("expires", &self.expires)
            .finish()
    }
}

fn config_err(message: String) -> RecorderError {
    RecorderError::Invalid(format!("recorder.shipping: {message}"))
}

impl Sink {
    /// Build the sink `c` describes (resolving its secrets). Nothing is contacted yet.
    pub fn from_config(c: &ShippingConfig) -> Result<Sink, RecorderError> {
        let key = match &c.encryption_key {
            None => None,
            Some(r) => {
                let hex_key = r
                    .resolve()
                    .map_err(|e| config_err(format!("encryption_key: {e}")))?;
                let bytes = hex::decode(hex_key.trim())
                    .ok()
                    .filter(|b| b.len() == 32)
                    .ok_or_else(|| config_err("encryption_key: expected 64 hex digits (32 bytes)".into()))?;
                let unbound = UnboundKey::new(&AES_256_GCM, &bytes)
                    .map_err(|_| config_err("encryption_key: not an AES-256 key".into()))?;
                Some(LessSafeKey::new(unbound))
            }
        };
        let (store, prefix): (Arc<dyn ObjectStore>, String) =
            if let Some(rest) = c.sink.strip_prefix("file://") {
                let root = PathBuf::from(rest);
                if !root.is_absolute() {
                    return Err(config_err(format!(
                        "sink `{}`: the path must be absolute",
                        c.sink
                    )));
                }
                std::fs::create_dir_all(&root)
                    .map_err(|e| config_err(format!("sink `{}`: cannot create it: {e}", c.sink)))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&root)
                    .map_err(|e| config_err(format!("sink `{}`: {e}", c.sink)))?;
                (Arc::new(fs), String::new())
            } else if let Some(rest) = c.sink.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(config_err(format!("sink `{}` names no bucket", c.sink)));
                }
                let mut b = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(&c.region)
                    .with_allow_http(c.allow_http)
                    .with_client_options(
                        object_store::ClientOptions::new()
                            .with_timeout(REQUEST_TIMEOUT)
                            .with_connect_timeout(Duration::from_secs(5))
                            .with_allow_http(c.allow_http),
                    )
                    // Retries are the shipper's: it keeps the cursor and backs off itself.
                    .with_retry(object_store::RetryConfig {
                        max_retries: 1,
                        retry_timeout: Duration::from_secs(10),
                        ..object_store::RetryConfig::default()
                    });
                if let Some(e) = &c.endpoint {
                    b = b.with_endpoint(e);
                }
                match (&c.access_key_id, &c.secret_access_key) {
                    (Some(id), Some(secret)) => {
                        let id = id
                            .resolve()
                            .map_err(|e| config_err(format!("access_key_id: {e}")))?;
                        let secret = secret
                            .resolve()
                            .map_err(|e| config_err(format!("secret_access_key: {e}")))?;
                        b = b.with_access_key_id(id).with_secret_access_key(secret);
                    }
                    (None, None) => b = b.with_skip_signature(true),
                    _ => {
                        return Err(config_err(
                            "give both access_key_id and secret_access_key, or neither".into(),
                        ));
                    }
                }
                let s3 = b
                    .build()
                    .map_err(|e| config_err(format!("sink `{}`: {e}", c.sink)))?;
                (Arc::new(s3), prefix.trim_matches('/').to_string())
            } else {
                return Err(config_err(format!(
                    "sink `{}`: expected file:///absolute/path or s3://bucket[/prefix]",
                    c.sink
                )));
            };
        Ok(Sink {
            store,
            prefix: ObjPath::from(prefix),
            url: c.sink.clone(),
            key,
            expires: c.sink_expires,
        })
    }

    /// The sink's address as configured (no secrets).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the sink expires its oldest segments itself (`sink_expires`).
    pub fn expires(&self) -> bool {
        self.expires
    }

    fn name(first: u64, last: u64) -> String {
        format!("{SEGMENTS}/{first:020}-{last:020}.seg")
    }

    fn path(&self, name: &str) -> ObjPath {
        let mut p = self.prefix.clone();
        for part in name.split('/') {
            p = p.child(part);
        }
        p
    }

    /// Encrypt (if configured) and store segment `first..=last`.
    async fn put(&self, first: u64, last: u64, plain: Vec<u8>) -> Result<u64, String> {
        let name = Sink::name(first, last);
        let body = match &self.key {
            None => plain,
            Some(key) => seal(key, &name, plain)?,
        };
        let len = body.len() as u64;
        let path = self.path(&name);
        let put = self.store.put(&path, PutPayload::from(Bytes::from(body)));
        match tokio::time::timeout(REQUEST_TIMEOUT, put).await {
            Err(_) => Err(format!("storing {name} timed out")),
            Ok(Err(e)) => Err(format!("storing {name}: {e}")),
            Ok(Ok(_)) => Ok(len),
        }
    }

    /// Every segment in the sink as (first, last, name), in log order; objects that are not
    /// segments are returned separately.
    pub async fn list(&self) -> Result<(Vec<(u64, u64, String)>, Vec<String>), RecorderError> {
        self.list_from(0).await
    }

    /// [`Sink::list`] of the segments that start at `first` or later (and objects named after
    /// them); cheaper on a large sink.
    pub async fn list_from(
        &self,
        first: u64,
    ) -> Result<(Vec<(u64, u64, String)>, Vec<String>), RecorderError> {
        let mut segs = Vec::new();
        let other = self
            .list_each(first, |a, b, _| segs.push((a, b, Sink::name(a, b))))
            .await?;
        segs.sort();
        Ok((segs, other))
    }

    /// `f(first, last, size in bytes)` for every segment that starts at `first` or later, in
    /// no particular order, without keeping them; returns the objects that are not segments.
    pub async fn list_each(
        &self,
        first: u64,
        mut f: impl FnMut(u64, u64, u64),
    ) -> Result<Vec<String>, RecorderError> {
        let dir = self.path(SEGMENTS);
        let mut stream = if first <= 1 {
            self.store.list(Some(&dir))
        } else {
            // Every segment starting at `first` or later sorts after this name.
            let offset = self.path(&format!("{SEGMENTS}/{first:020}"));
            self.store.list_with_offset(Some(&dir), &offset)
        };
        let mut other = Vec::new();
        while let Some(item) = stream.next().await {
            let meta = item.map_err(|e| RecorderError::read(format!("listing {}: {e}", self.url)))?;
            let file = meta.location.filename().unwrap_or_default().to_string();
            let parsed = file
                .strip_suffix(".seg")
                .and_then(|r| r.split_once('-'))
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
                .filter(|(a, b)| a <= b && file == Sink::name(*a, *b).trim_start_matches("segments/"));
            match parsed {
                Some((a, b)) => f(a, b, meta.size),
                None => other.push(meta.location.to_string()),
            }
        }
        Ok(other)
    }

    /// A segment's plaintext.
    async fn get(&self, name: &str) -> Result<Vec<u8>, SegmentError> {
        let get = async {
            let r = self.store.get(&self.path(name)).await?;
            r.bytes().await
        };
        let body = match tokio::time::timeout(REQUEST_TIMEOUT, get).await {
            Err(_) => return Err(SegmentError::Unreachable(format!("reading {name} timed out"))),
            Ok(Err(e)) => return Err(SegmentError::Unreachable(format!("reading {name}: {e}"))),
            Ok(Ok(b)) => b.to_vec(),
        };
        match (&self.key, body.starts_with(ENC_MAGIC)) {
            (Some(key), true) => open(key, name, &body).map_err(SegmentError::Bad),
            (None, true) => Err(SegmentError::Unreachable(format!(
                "{name} is encrypted: give the sink's encryption key"
            ))),
            (Some(_), false) => Err(SegmentError::Bad(
                "is not encrypted, but this sink's segments are".to_string(),
            )),
            (None, false) => Ok(body),
        }
    }
}

enum SegmentError {
    /// The sink could not be read (or the key is missing): the verdict cannot be given.
    Unreachable(String),
    /// The object is not a segment as shipped.
    Bad(String),
}

fn seal(key: &LessSafeKey, name: &str, mut plain: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut nonce = [0u8; NONCE_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| "no randomness for a nonce".to_string())?;
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(name.as_bytes()),
        &mut plain,
    )
    .map_err(|_| "encryption failed".to_string())?;
    let mut out = Vec::with_capacity(ENC_MAGIC.len() + NONCE_LEN + plain.len());
    out.extend_from_slice(ENC_MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&plain);
    Ok(out)
}

fn open(key: &LessSafeKey, name: &str, body: &[u8]) -> Result<Vec<u8>, String> {
    let rest = &body[ENC_MAGIC.len()..];
    let (nonce, sealed) = rest
        .split_at_checked(NONCE_LEN)
        .ok_or_else(|| "is truncated".to_string())?;
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| "is truncated".to_string())?;
    let mut buf = sealed.to_vec();
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(name.as_bytes()),
            &mut buf,
        )
        .map_err(|_| {
            "does not decrypt under its name with this key (altered, renamed or another key)".to_string()
        })?;
    Ok(plain.to_vec())
}

/// The last acknowledged event.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    pub seq: u64,
    /// Its hash (empty at 0).
    pub hash: String,
}

fn cursor_path(log_dir: &Path) -> PathBuf {
    log_dir.join("shipping").join("cursor.json")
}

/// The persisted cursor (seq 0 when nothing was shipped yet).
pub fn load_cursor(log_dir: &Path) -> Result<Cursor, RecorderError> {
    let p = cursor_path(log_dir);
    match std::fs::read(&p) {
        Ok(v) => {
            serde_json::from_slice(&v).map_err(|e| RecorderError::Corrupt(format!("{}: {e}", p.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Cursor::default()),
        Err(e) => Err(RecorderError::read(format!("{}: {e}", p.display()))),
    }
}

/// Replace the cursor atomically and durably.
fn save_cursor(log_dir: &Path, c: &Cursor) -> Result<(), String> {
    let bytes = serde_json::to_vec(c).map_err(|e| e.to_string())?;
    write_durably(&cursor_path(log_dir), &bytes, "the shipping cursor")
}

/// Replace `p` atomically and durably (write, fsync, rename, fsync the directory).
fn write_durably(p: &Path, bytes: &[u8], what: &str) -> Result<(), String> {
    use std::io::Write as _;
    let dir = p.parent().map(Path::to_path_buf).unwrap_or_default();
    let err = |e: std::io::Error| format!("saving {what} in {}: {e}", dir.display());
    std::fs::create_dir_all(&dir).map_err(err)?;
    let mut tmp = p.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, p).map_err(err)?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(())
}

/// The first event each sink is expected to hold (`shipping/sink_since.json`). A sink shipped
/// to from the start holds everything from event 1. After a change of sink, the new one
/// holds only what the local log still had when it was first seen (the floor + 1 on): the
/// events below are in the sink the floor's record names. One entry per sink, so switching
/// back and forth keeps each sink's own start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SinkSince {
    sinks: std::collections::BTreeMap<String, u64>,
}

fn sink_since_path(log_dir: &Path) -> PathBuf {
    log_dir.join("shipping").join("sink_since.json")
}

/// The first event `sink` is expected to hold, given the local floor: its recorded start,
/// raised past a floor set against another sink (and recorded so). `(since, the other sink
/// if its floor raised it just now)`.
pub(crate) fn sink_since(
    log_dir: &Path,
    sink: &str,
    floor: Option<&crate::store::Floor>,
) -> Result<(u64, Option<String>), String> {
    let p = sink_since_path(log_dir);
    let mut rec: SinkSince = match std::fs::read(&p) {
        Ok(v) => serde_json::from_slice(&v).map_err(|e| {
            format!(
                "{}: {e}: the first event each sink is expected to hold is unknown, so the \
                 sink is not checked below the local floor and nothing is deleted; put the \
                 file back, or remove it (this sink is then checked from event 1, or from the \
                 floor if the floor names another sink; sink_lost_accepted names what it never held)",
                p.display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => SinkSince::default(),
        Err(e) => return Err(format!("{}: {e}", p.display())),
    };
    let recorded = rec.sinks.get(sink).copied();
    match floor {
        Some(f) if f.sink != sink => {
            let since = f.seq.saturating_add(1);
            if recorded.is_some_and(|r| r >= since) {
                return Ok((recorded.unwrap_or(since), None));
            }
            rec.sinks.insert(sink.to_string(), since);
            let bytes = serde_json::to_vec(&rec).map_err(|e| e.to_string())?;
            write_durably(&p, &bytes, "the sinks' first events")?;
            Ok((since, Some(f.sink.clone())))
        }
        _ => Ok((recorded.unwrap_or(1).max(1), None)),
    }
}

/// The log as the shipper reads it: through the writer's own database while it is open (in
/// this process: no open of the log's files and no replay of its WAL, which a read-only open
/// pays, up to `store::MAX_TOTAL_WAL_SIZE`, for every segment), else opened read-only (the
/// writer is reopening it after a failed write, or shut down).
fn view(recorder: &Recorder, dir: &Path) -> Result<LogReader, RecorderError> {
    match recorder.live_reader() {
        Some(r) => Ok(r),
        None => LogReader::open(dir),
    }
}

/// A segment ready to go.
struct Segment {
    first: u64,
    last: u64,
    last_hash: [u8; 32],
    bytes: Vec<u8>,
}

/// Cut the next sealed segment after `cursor`, checking its chain; `None` when no checkpoint
/// covers anything after the cursor yet, or none that is durable (at most `durable`): an
/// event whose fsync is in flight could still be lost to a power cut, and the log would then
/// record another event at its seq than the sink holds.
fn next_segment(reader: &LogReader, cursor: &Cursor, durable: u64) -> Result<Option<Segment>, RecorderError> {
    let first = cursor.seq + 1;
    let Some(cp) = reader.checkpoint_at_or_after(first)? else {
        return Ok(None);
    };
    if cp.seq > durable {
        return Ok(None);
    }
    let last = cp.seq.min(first + MAX_SEGMENT_EVENTS - 1);
    let checkpoint = (last == cp.seq).then_some(cp);
    let header = SegmentHeader {
        format: SEGMENT_FORMAT.to_string(),
        first_seq: first,
        last_seq: last,
        checkpoint,
    };
    let mut bytes = serde_json::to_vec(&header).map_err(|e| RecorderError::Encode(e.to_string()))?;
    bytes.push(b'\n');
    let mut prev = if cursor.seq == 0 {
        Some([0u8; 32])
    } else {
        decode_hash(&cursor.hash)
    };
    let mut expected = first;
    let bad = |seq: u64, what: &str| {
        RecorderError::Corrupt(format!(
            "event {seq} {what}: the local log does not verify, so it is not shipped \
             (run `gatehouse audit verify`)"
        ))
    };
    reader.for_each_stored(first, |seq, stored| {
        if seq > last {
            return Ok(false);
        }
        if seq != expected {
            return Err(bad(expected, "is missing"));
        }
        let Some((canonical, recorded)) = canonical_from_stored(stored) else {
            return Err(bad(seq, "is unreadable"));
        };
        #[derive(Deserialize)]
        struct Link {
            seq: u64,
            prev_hash: String,
        }
        let link: Link = serde_json::from_slice(stored).map_err(|_| bad(seq, "is unreadable"))?;
        let claimed_prev = decode_hash(&link.prev_hash).ok_or_else(|| bad(seq, "is unreadable"))?;
        if link.seq != seq || chain_hash(&claimed_prev, &canonical) != recorded {
            return Err(bad(seq, "was altered"));
        }
        if prev.is_some_and(|p| p != claimed_prev) {
            return Err(bad(seq, "does not link to the last shipped event"));
        }
        prev = Some(recorded);
        bytes.extend_from_slice(stored);
        bytes.push(b'\n');
        expected += 1;
        Ok(true)
    })?;
    if expected != last + 1 {
        return Err(bad(expected, "is missing"));
    }
    let last_hash = prev.unwrap_or([0u8; 32]);
    if let Some(cp) = &header.checkpoint
        && cp.hash != hex::encode(last_hash)
    {
        return Err(bad(last, "does not match its checkpoint"));
    }
    Ok(Some(Segment {
        first,
        last,
        last_hash,
        bytes,
    }))
}

/// Shipping's state, for metrics and health. Updated by the shipper, read at any time.
#[derive(Debug, Default)]
pub struct ShipStatus {
    /// Last event the sink acknowledged.
    pub acked_seq: AtomicU64,
    /// Segments and bytes stored since start.
    pub segments: AtomicU64,
    pub bytes: AtomicU64,
    /// Failed attempts since start.
    pub errors: AtomicU64,
    /// µs since the epoch of the first failure of the current outage (0: not failing).
    pub failing_since_us: AtomicI64,
    /// µs since the epoch of the last acknowledged segment (0: none since start).
    pub last_success_us: AtomicI64,
    /// The backlog is above `backlog_alert_events`.
    pub lagging: AtomicBool,
    /// The local log does not verify: shipping stopped.
    pub halted: AtomicBool,
    /// The local log's floor: events up to it were deleted by retention (0: none).
    pub floor_seq: AtomicU64,
    /// Segments the sink had lost after acknowledging them, sent again since start.
    pub resent_segments: AtomicU64,
    /// Events the sink lacks after acknowledging them that could not be sent again (found by
    /// the last retention pass; 0 when the sink holds everything it acknowledged).
    pub sink_missing_events: AtomicU64,
    /// Events below the local floor the sink no longer holds: lost, unless a copy of the sink
    /// has them (as of the last check; 0: none).
    pub sink_lost_events: AtomicU64,
    /// The first event the sink holds, as of the last whole-sink check (0: none, or not
    /// checked yet).
    pub sink_first_seq: AtomicU64,
    /// µs since the epoch of the last whole-sink check (0: none yet).
    pub sink_checked_us: AtomicI64,
    /// Whole-sink checks made since start.
    pub sink_checks: AtomicU64,
    last_error: Mutex<Option<String>>,
    retention_error: Mutex<Option<String>>,
    /// The ranges behind `sink_lost_events`.
    sink_lost: Mutex<Vec<(u64, u64)>>,
}

impl ShipStatus {
    /// The last failure's message (cleared by a success).
    pub fn last_error(&self) -> Option<String> {
        match self.last_error.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set_error(&self, e: Option<String>) {
        match self.last_error.lock() {
            Ok(mut g) => *g = e,
            Err(p) => *p.into_inner() = e,
        }
    }

    /// Why the last retention pass failed (cleared by a successful one).
    pub fn retention_error(&self) -> Option<String> {
        match self.retention_error.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Set the retention error; returns the previous one.
    fn set_retention_error(&self, e: Option<String>) -> Option<String> {
        match self.retention_error.lock() {
            Ok(mut g) => std::mem::replace(&mut *g, e),
            Err(p) => std::mem::replace(&mut *p.into_inner(), e),
        }
    }

    /// The event ranges below the local floor the sink lost, as of the last check
    /// (empty: none).
    pub fn sink_lost(&self) -> Vec<(u64, u64)> {
        match self.sink_lost.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Set the lost ranges; returns the previous ones.
    fn set_sink_lost(&self, lost: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
        self.sink_lost_events
            .store(lost.iter().map(|(a, b)| b - a + 1).sum(), Ordering::Relaxed);
        match self.sink_lost.lock() {
            Ok(mut g) => std::mem::replace(&mut *g, lost),
            Err(p) => std::mem::replace(&mut *p.into_inner(), lost),
        }
    }
}

/// `a to b, c, d to e`; past the fifth range, how many more and their events.
pub fn describe_ranges(ranges: &[(u64, u64)]) -> String {
    const SHOWN: usize = 5;
    let mut text = ranges
        .iter()
        .take(SHOWN)
        .map(|(a, b)| {
            if a == b {
                format!("{a}")
            } else {
                format!("{a} to {b}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    if ranges.len() > SHOWN {
        let rest = &ranges[SHOWN..];
        let events: u64 = rest.iter().map(|(a, b)| b - a + 1).sum();
        text.push_str(&format!(" and {} more ranges ({events} events)", rest.len()));
    }
    text
}

/// Event ranges a sink's segments cover, merged (touching ranges become one): a sink holding
/// everything is one range, however many segments it has.
#[derive(Debug, Default)]
pub(crate) struct Covered(pub(crate) std::collections::BTreeMap<u64, u64>);

impl Covered {
    pub(crate) fn add(&mut self, first: u64, last: u64) {
        let (mut a, mut b) = (first, last);
        if let Some((&pa, &pb)) = self.0.range(..=a).next_back()
            && pb.saturating_add(1) >= a
        {
            a = pa;
            b = b.max(pb);
        }
        let inside: Vec<u64> = self.0.range(a..=b.saturating_add(1)).map(|(k, _)| *k).collect();
        for k in inside {
            if let Some(e) = self.0.remove(&k) {
                b = b.max(e);
            }
        }
        self.0.insert(a, b);
    }

    /// What is not covered in `from..=to`.
    pub(crate) fn gaps(&self, from: u64, to: u64) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut next = from;
        for (&a, &b) in &self.0 {
            if a > to {
                break;
            }
            if b < next {
                continue;
            }
            if a > next {
                gaps.push((next, a - 1));
            }
            match b.checked_add(1) {
                Some(n) => next = n,
                None => return gaps,
            }
        }
        if next <= to {
            gaps.push((next, to));
        }
        gaps
    }
}

/// How the events found lost changed from one check to the next, compared event by event
/// (a range that shrank or split is no new loss).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct LostChanges {
    /// Lost now, not before.
    pub(crate) new: Vec<(u64, u64)>,
    /// Lost before, held by the sink again.
    pub(crate) back: Vec<(u64, u64)>,
    /// Lost before, now before the first event a sink that expires its oldest segments is
    /// expected to hold (`expected_from`, on whole checks with `sink_expires`).
    pub(crate) expired: Vec<(u64, u64)>,
}

pub(crate) fn lost_changes(
    prev: &[(u64, u64)],
    lost: &[(u64, u64)],
    covered: &Covered,
    expected_from: Option<u64>,
) -> LostChanges {
    let merged = |r: &[(u64, u64)]| {
        let mut c = Covered::default();
        for &(a, b) in r {
            c.add(a, b);
        }
        c
    };
    let minus = |r: &[(u64, u64)], c: &Covered| -> Vec<(u64, u64)> {
        r.iter().flat_map(|&(a, b)| c.gaps(a, b)).collect()
    };
    let new = minus(lost, &merged(prev));
    let gone = minus(prev, &merged(lost));
    let not_held = minus(&gone, covered);
    let back = minus(&gone, &merged(&not_held));
    let expired = match expected_from {
        Some(e) if e > 0 => not_held
            .iter()
            .filter(|r| r.0 < e)
            .map(|&(a, b)| (a, b.min(e - 1)))
            .collect(),
        _ => Vec::new(),
    };
    LostChanges { new, back, expired }
}

/// Copies sealed segments to the sink; see the module documentation.
pub struct Shipper {
    sink: Sink,
    log_dir: PathBuf,
    recorder: Recorder,
    status: Arc<ShipStatus>,
    interval: Duration,
    alert: u64,
    /// Local retention (`keep_local_secs`), and how often its pass runs.
    keep_local: Option<Duration>,
    retention_every: Duration,
    /// How often a pass lists the whole sink (`sink_check_interval_secs`), and whether the
    /// sink expires its oldest segments itself (`sink_expires`).
    sink_check_every: Duration,
    sink_expires: bool,
    /// Ranges the operator accepted as lost (`sink_lost_accepted`), merged.
    accepted: Covered,
    /// What was last said about the sink below the floor (so each change is said once).
    below_floor_said: Mutex<BelowFloorSaid>,
}

/// What the shipper last recorded about the sink below the local floor.
#[derive(Debug, Default)]
struct BelowFloorSaid {
    /// Accepted events found missing (recorded once per start).
    accepted_missing: Covered,
}

/// What one retention pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RetentionPass {
    /// Segments the sink had lost after acknowledging them, sent again.
    pub resent: u64,
    /// Events deleted from the local log.
    pub deleted: u64,
    /// The local log's floor after the pass (0: none).
    pub floor: u64,
    /// Why local retention deleted nothing this pass although it may have had something to
    /// delete: the sink lost events below the floor, or it has not been listed whole yet.
    pub held: Option<String>,
}

impl Shipper {
    /// The shipper `[recorder.shipping]` asks for, if any.
    pub fn from_config(
        cfg: &gatehouse_core::config::RecorderConfig,
        recorder: Recorder,
    ) -> Result<Option<Shipper>, RecorderError> {
        let Some(c) = &cfg.shipping else { return Ok(None) };
        if cfg.checkpoints.is_none() {
            return Err(config_err(
                "segments end at signed checkpoints: configure [recorder.checkpoints] too".into(),
            ));
        }
        let status = Arc::new(ShipStatus::default());
        let cursor = load_cursor(&cfg.dir)?;
        status.acked_seq.store(cursor.seq, Ordering::Relaxed);
        if let Ok(reader) = LogReader::open(&cfg.dir)
            && let Ok(Some(f)) = reader.floor()
        {
            status.floor_seq.store(f.seq, Ordering::Relaxed);
        }
        Ok(Some(Shipper {
            sink: Sink::from_config(c)?,
            log_dir: cfg.dir.clone(),
            recorder,
            status,
            interval: Duration::from_secs(c.interval_secs.max(1)),
            alert: c.backlog_alert_events,
            keep_local: c.keep_local_secs.map(Duration::from_secs),
            retention_every: Duration::from_secs(c.retention_interval_secs.max(1)),
            sink_check_every: Duration::from_secs(c.sink_check_interval_secs.max(1)),
            sink_expires: c.sink_expires,
            accepted: {
                let mut a = Covered::default();
                for [first, last] in &c.sink_lost_accepted {
                    if first > last {
                        return Err(config_err(format!(
                            "sink_lost_accepted: [{first}, {last}] is not a range (first > last)"
                        )));
                    }
                    a.add(*first, *last);
                }
                a
            },
            below_floor_said: Mutex::new(BelowFloorSaid::default()),
        }))
    }

    pub fn status(&self) -> Arc<ShipStatus> {
        self.status.clone()
    }

    /// Test hook: the sink's objects through `store` (a fault-injecting wrapper).
    #[cfg(test)]
    pub(crate) fn replace_store(&mut self, store: Arc<dyn ObjectStore>) {
        self.sink.store = store;
    }

    pub fn sink_url(&self) -> &str {
        self.sink.url()
    }

    /// Events recorded and not yet acknowledged by the sink.
    pub fn backlog(&self) -> u64 {
        let acked = self.status.acked_seq.load(Ordering::Relaxed);
        self.recorder.stats().last_seq.saturating_sub(acked)
    }

    /// Ship every sealed segment there is now. Returns how many were stored.
    pub async fn ship_sealed(&self) -> Result<u64, String> {
        let mut shipped = 0;
        loop {
            let (dir, recorder) = (self.log_dir.clone(), self.recorder.clone());
            // Read before the log is read: what it shows through this seq is durable.
            let durable = self.recorder.stats().durable_seq;
            let cut = tokio::task::spawn_blocking(move || -> Result<_, RecorderError> {
                let cursor = load_cursor(&dir)?;
                let reader = view(&recorder, &dir)?;
                Ok((next_segment(&reader, &cursor, durable)?, cursor))
            })
            .await
            .map_err(|e| format!("segment task: {e}"))?;
            let (seg, _cursor) = match cut {
                Ok(v) => v,
                Err(e @ RecorderError::Corrupt(_)) => {
                    if !self.status.halted.swap(true, Ordering::Relaxed) {
                        tracing::error!(error = %e, "shipping stopped");
                        self.notice("error", format!("shipping to {} stopped: {e}", self.sink.url()));
                    }
                    return Err(e.to_string());
                }
                Err(e) => return Err(e.to_string()),
            };
            let Some(seg) = seg else { return Ok(shipped) };
            let len = self.sink.put(seg.first, seg.last, seg.bytes).await?;
            let next = Cursor {
                seq: seg.last,
                hash: hex::encode(seg.last_hash),
            };
            let dir = self.log_dir.clone();
            tokio::task::spawn_blocking(move || save_cursor(&dir, &next))
                .await
                .map_err(|e| format!("cursor task: {e}"))??;
            self.status.acked_seq.store(seg.last, Ordering::Relaxed);
            self.status.segments.fetch_add(1, Ordering::Relaxed);
            self.status.bytes.fetch_add(len, Ordering::Relaxed);
            self.status
                .last_success_us
                .store(gatehouse_core::time::now_micros(), Ordering::Relaxed);
            shipped += 1;
        }
    }

    /// A retention pass that lists the whole sink; see [`Shipper::retention_pass_listing`].
    pub async fn retention_pass(&self) -> Result<RetentionPass, String> {
        self.retention_pass_listing(true).await
    }

    /// Local retention and the sink check, one pass (`[recorder.shipping] keep_local_secs`,
    /// every `retention_interval_secs`):
    ///
    /// 0. with `whole_sink` (every `sink_check_interval_secs`), the sink is listed from its
    ///    start: every event below the local floor must be in a non-empty segment (after the
    ///    first one the sink holds, with `sink_expires`; outside `sink_lost_accepted`). Those
    ///    events are held by the sink alone, so a segment lost there is lost for good: that
    ///    is said so in the log (once per change) and the operator signals
    ///    (`ShipStatus::sink_lost`), and local retention deletes nothing more until the sink
    ///    holds them again. While something is lost, every pass lists the sink from the first
    ///    lost event, so its return is seen at once (a segment put back with other bounds,
    ///    starting before that event, at the next whole check). Presence by name and size
    ///    only: contents are checked by `audit verify --shipped`. After a change of sink, the
    ///    new one is checked from the floor it first saw on (`shipping/sink_since.json`);
    ///    below that, the old sink holds the events;
    /// 1. the sink is listed from the local floor on (or from where step 0 began): every
    ///    event from the floor up to the cursor must be in a segment. A sink that lost
    ///    segments it acknowledged (deleted, a bucket
    ///    lifecycle rule, a restore from an old backup) is said so in the log and the
    ///    operator signals, and the missing segments are sent again from the local log;
    /// 2. with `keep_local_secs`, the events up to the newest signed checkpoint that the sink
    ///    acknowledged and that was signed longer ago than that are deleted from the local
    ///    log; the checkpoint stays as its floor. Nothing is deleted while the sink lacks
    ///    anything, below the floor too ([`RetentionPass::held`]), nor before the sink was
    ///    listed whole once since start, nor unless the segment ending at the new floor, read
    ///    back, carries this log's checkpoint and last event; the deletion is itself recorded.
    pub async fn retention_pass_listing(&self, whole_sink: bool) -> Result<RetentionPass, String> {
        let (dir, recorder) = (self.log_dir.clone(), self.recorder.clone());
        let (cursor, floor, cps) = tokio::task::spawn_blocking(move || -> Result<_, RecorderError> {
            let cursor = load_cursor(&dir)?;
            let reader = view(&recorder, &dir)?;
            Ok((cursor, reader.floor()?, reader.checkpoints()?))
        })
        .await
        .map_err(|e| format!("retention task: {e}"))?
        .map_err(|e| e.to_string())?;
        let since = {
            let (dir, url, f) = (self.log_dir.clone(), self.sink.url().to_string(), floor.clone());
            tokio::task::spawn_blocking(move || sink_since(&dir, &url, f.as_ref()))
                .await
                .map_err(|e| format!("retention task: {e}"))?
        };
        // Unknown: nothing is checked below the floor, the rest of the pass runs (lost
        // segments above the floor are still sent again), and nothing is deleted.
        let since = match since {
            Ok((since, other)) => {
                if let (Some(other), Some(f)) = (other, &floor) {
                    self.note_other_sink(&other, f.seq);
                }
                Ok(since)
            }
            Err(e) => Err(e),
        };
        let floor_seq = floor.as_ref().map(|f| f.seq).unwrap_or(0);
        let mut pass = RetentionPass {
            floor: floor_seq,
            ..RetentionPass::default()
        };
        if cursor.seq < floor_seq {
            return Err(format!(
                "the shipping cursor (event {}) is below the local log's floor (event {floor_seq}): \
                 {}/shipping/cursor.json was replaced or lost",
                cursor.seq,
                self.log_dir.display()
            ));
        }

        // 0. What only the sink holds is still there: from its start, or from the first
        // event found lost.
        let below_from = match (&floor, whole_sink) {
            (None, _) => None,
            (Some(_), true) => since.as_ref().ok().filter(|s| **s <= floor_seq).copied(),
            (Some(_), false) => self.status.sink_lost().first().map(|r| r.0),
        };
        let mut covered = Covered::default();
        let mut first_held: Option<u64> = None;
        let mut segs = Vec::new();
        self.sink
            .list_each(below_from.unwrap_or(floor_seq + 1), |a, b, size| {
                // An empty object holds nothing.
                if size > 0 {
                    first_held = Some(first_held.map_or(a, |f| f.min(a)));
                    if a <= floor_seq {
                        covered.add(a, b);
                    }
                }
                if b > floor_seq {
                    segs.push((a, b, Sink::name(a, b)));
                }
            })
            .await
            .map_err(|e| e.to_string())?;
        segs.sort();
        if let Some(from) = below_from {
            let expected = match (whole_sink && self.sink_expires, first_held) {
                (true, Some(f)) => f.clamp(from, floor_seq + 1),
                (true, None) => floor_seq + 1,
                (false, _) => from,
            };
            // What is missing, less what the operator accepted as lost.
            let mut missing = Vec::new();
            let mut accepted_missing = Vec::new();
            for (a, b) in covered.gaps(expected, floor_seq) {
                let mut accepted = Covered::default();
                for (&x, &y) in &self.accepted.0 {
                    let (x, y) = (x.max(a), y.min(b));
                    if x <= y {
                        accepted.add(x, y);
                        accepted_missing.push((x, y));
                    }
                }
                missing.extend(accepted.gaps(a, b));
            }
            self.note_accepted_missing(&accepted_missing);
            // (A pass that is not whole starts at the first lost event: nothing lost is
            // before it.)
            self.note_sink_lost(missing, &covered, whole_sink.then_some(expected));
        } else if whole_sink && since.is_ok() {
            // Nothing below the floor to check (none yet, or all in another sink).
            self.status.set_sink_lost(Vec::new());
        }
        // A whole check made (not one skipped for want of the sink's start).
        if whole_sink && (below_from.is_some() || since.is_ok()) {
            self.status
                .sink_first_seq
                .store(first_held.unwrap_or(0), Ordering::Relaxed);
            self.status
                .sink_checked_us
                .store(gatehouse_core::time::now_micros(), Ordering::Relaxed);
            self.status.sink_checks.fetch_add(1, Ordering::Relaxed);
        }

        // 1. Everything acknowledged is still there.
        let mut gaps = Vec::new();
        let mut next = floor_seq + 1;
        for (first, last, _) in &segs {
            if *first > cursor.seq {
                break;
            }
            if *first > next {
                gaps.push((next, first - 1));
            }
            next = next.max(last.saturating_add(1));
        }
        if next <= cursor.seq {
            gaps.push((next, cursor.seq));
        }
        for &(a, b) in &gaps {
            tracing::warn!(sink = %self.sink.url(), first = a, last = b, "the sink lost acknowledged events; sending them again");
            self.notice(
                "warn",
                format!(
                    "{} no longer holds events {a} to {b}, which it had acknowledged; they are sent again from the local log",
                    self.sink.url()
                ),
            );
            match self.resend(a, b, floor.as_ref()).await {
                Ok(n) => {
                    pass.resent += n;
                    self.status.resent_segments.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    self.status
                        .sink_missing_events
                        .store(b - a + 1, Ordering::Relaxed);
                    return Err(format!("sending events {a} to {b} again: {e}"));
                }
            }
        }
        self.status.sink_missing_events.store(0, Ordering::Relaxed);

        // 2. Local retention.
        let Some(keep) = self.keep_local else {
            return since.map(|_| pass);
        };
        since?;
        // Held back, not failed: the loss has its own signals, and a failed pass would be
        // tried again at the shipping interval, listing the sink each time.
        let lost = self.status.sink_lost();
        if !lost.is_empty() {
            pass.held = Some(format!(
                "{} lost events {} below the local floor: nothing more is deleted until it \
                 holds them again",
                self.sink.url(),
                describe_ranges(&lost)
            ));
            return Ok(pass);
        }
        if self.status.sink_checks.load(Ordering::Relaxed) == 0 {
            pass.held = Some(format!(
                "{} has not been listed whole yet: nothing is deleted before it is",
                self.sink.url()
            ));
            return Ok(pass);
        }
        let keep_us = i64::try_from(keep.as_micros()).unwrap_or(i64::MAX);
        let cutoff = gatehouse_core::time::now_micros().saturating_sub(keep_us);
        let Some(target_cp) = cps
            .iter()
            .filter(|c| c.seq > floor_seq && c.seq <= cursor.seq && c.time_us <= cutoff)
            .max_by_key(|c| c.seq)
        else {
            return Ok(pass);
        };
        let target = target_cp.seq;
        if pass.resent > 0 {
            segs = self
                .sink
                .list_from(floor_seq + 1)
                .await
                .map_err(|e| e.to_string())?
                .0;
        }
        // Names are not enough: the segment ending at the new floor must be this log's, ending
        // at this very checkpoint and event (not an overwritten object, another gateway's on
        // the same prefix, or one under another key).
        let Some((_, _, name)) = segs.iter().find(|(_, last, _)| *last == target) else {
            return Err(format!(
                "the sink lists no segment ending at event {target}: nothing is deleted"
            ));
        };
        let plain = match self.sink.get(name).await {
            Ok(p) => p,
            Err(SegmentError::Unreachable(e) | SegmentError::Bad(e)) => {
                return Err(format!("reading {name} back: {e}; nothing is deleted"));
            }
        };
        let mut lines = plain.split(|b| *b == b'\n').filter(|l| !l.is_empty());
        let header = lines
            .next()
            .and_then(|h| serde_json::from_slice::<SegmentHeader>(h).ok());
        let last_hash = lines
            .next_back()
            .and_then(canonical_from_stored)
            .map(|(_, h)| hex::encode(h));
        let matches = header.as_ref().is_some_and(|h| {
            h.format == SEGMENT_FORMAT && h.last_seq == target && h.checkpoint.as_ref() == Some(target_cp)
        }) && last_hash.as_deref() == Some(target_cp.hash.as_str());
        if !matches {
            return Err(format!(
                "{name} in {} is not the segment this log shipped (another header, checkpoint or \
                 last event): nothing is deleted; check who else writes to this sink",
                self.sink.url()
            ));
        }
        let deleted = self
            .recorder
            .retain_through(target, self.sink.url())
            .await
            .map_err(|e| format!("local retention: {e}"))?;
        pass.deleted = deleted;
        pass.floor = target;
        self.status.floor_seq.store(target, Ordering::Relaxed);
        if deleted > 0 {
            tracing::info!(floor = target, deleted, "local retention deleted shipped events");
            self.notice(
                "info",
                format!(
                    "local retention deleted events {} to {target} (older than {} s, held by {}); \
                     the local log now starts after the signed checkpoint at event {target}",
                    floor_seq + 1,
                    keep.as_secs(),
                    self.sink.url()
                ),
            );
        }
        Ok(pass)
    }

    /// Send the segments holding events `first..=last` again (they start at a segment
    /// boundary, so the same segments are cut as the first time).
    async fn resend(
        &self,
        first: u64,
        last: u64,
        floor: Option<&crate::store::Floor>,
    ) -> Result<u64, String> {
        let (dir, recorder) = (self.log_dir.clone(), self.recorder.clone());
        let prev = first - 1;
        let floor = floor.cloned();
        let mut cursor = tokio::task::spawn_blocking(move || -> Result<Cursor, RecorderError> {
            if prev == 0 {
                return Ok(Cursor::default());
            }
            if let Some(f) = floor.filter(|f| f.seq == prev) {
                return Ok(Cursor {
                    seq: prev,
                    hash: f.hash,
                });
            }
            let reader = view(&recorder, &dir)?;
            let ev = reader
                .events(prev, 1)?
                .into_iter()
                .next()
                .filter(|e| e.seq == prev)
                .ok_or_else(|| RecorderError::Corrupt(format!("event {prev} is not in the local log")))?;
            Ok(Cursor {
                seq: prev,
                hash: ev.hash,
            })
        })
        .await
        .map_err(|e| format!("segment task: {e}"))?
        .map_err(|e| e.to_string())?;
        let mut sent = 0;
        while cursor.seq < last {
            let (dir, recorder) = (self.log_dir.clone(), self.recorder.clone());
            let c = cursor.clone();
            let seg = tokio::task::spawn_blocking(move || -> Result<_, RecorderError> {
                // Segments the sink acknowledged before: durable.
                next_segment(&view(&recorder, &dir)?, &c, u64::MAX)
            })
            .await
            .map_err(|e| format!("segment task: {e}"))?
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no checkpoint covers event {} in the local log", cursor.seq + 1))?;
            self.sink.put(seg.first, seg.last, seg.bytes).await?;
            sent += 1;
            cursor = Cursor {
                seq: seg.last,
                hash: hex::encode(seg.last_hash),
            };
        }
        Ok(sent)
    }

    /// Record what a check found lost below the floor: the status, and a notice and a log
    /// line for each change. Ranges no longer lost are either held again (`covered`) or, with
    /// `expected_from` (a whole-sink check of a sink that expires its oldest segments), now
    /// before its first segment: that is recorded as expiry, not as a return.
    fn note_sink_lost(&self, lost: Vec<(u64, u64)>, covered: &Covered, expected_from: Option<u64>) {
        let prev = self.status.set_sink_lost(lost.clone());
        let url = self.sink.url();
        let LostChanges { new, back, expired } = lost_changes(&prev, &lost, covered, expected_from);
        if !back.is_empty() {
            tracing::info!(sink = %url, events = %describe_ranges(&back), "the sink holds lost events again");
            self.notice(
                "info",
                format!(
                    "{url} holds events {} again, which it had lost",
                    describe_ranges(&back)
                ),
            );
        }
        if !expired.is_empty() {
            let first = expected_from.unwrap_or_default();
            tracing::warn!(sink = %url, events = %describe_ranges(&expired), first, "lost events now count as expired");
            self.notice(
                "warn",
                format!(
                    "events {}, which {url} had lost, now count as expired: it deleted every \
                     segment before event {first} (sink_expires)",
                    describe_ranges(&expired)
                ),
            );
        }
        if new.is_empty() {
            return;
        }
        let what = describe_ranges(&new);
        tracing::error!(sink = %url, events = %what, "the sink lost events the local log no longer holds");
        self.notice(
            "error",
            format!(
                "{url} no longer holds events {what}, which local retention deleted from the local \
                 log after the sink acknowledged them: they are lost unless a copy of the sink \
                 has them; local retention deletes nothing more until the sink holds them again \
                 (or sink_lost_accepted names them)"
            ),
        );
    }

    /// Record, once per start, accepted ranges (`sink_lost_accepted`) found missing.
    fn note_accepted_missing(&self, missing: &[(u64, u64)]) {
        let mut said = match self.below_floor_said.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let new: Vec<(u64, u64)> = missing
            .iter()
            .flat_map(|&(a, b)| said.accepted_missing.gaps(a, b))
            .collect();
        for &(a, b) in &new {
            said.accepted_missing.add(a, b);
        }
        drop(said);
        if !new.is_empty() {
            self.notice(
                "warn",
                format!(
                    "{} does not hold events {}: accepted as lost by sink_lost_accepted",
                    self.sink.url(),
                    describe_ranges(&new)
                ),
            );
        }
    }

    /// Record that the floor was set while shipping to another sink (once: the first event
    /// this sink is expected to hold is recorded with it, in `shipping/sink_since.json`).
    fn note_other_sink(&self, other: &str, floor: u64) {
        let url = self.sink.url();
        tracing::warn!(sink = %url, floor_sink = %other, floor, "the local floor was set against another sink");
        self.notice(
            "warn",
            format!(
                "the local log's floor (event {floor}) was set while shipping to {other}, which \
                 holds the events up to it: {url} is checked from event {} on",
                floor.saturating_add(1)
            ),
        );
    }

    fn notice(&self, level: &str, message: String) {
        self.recorder.append_nowait(crate::event::NewEvent::now(
            GATEWAY_SESSION.to_string(),
            None,
            crate::event::EventBody::Notice {
                level: level.to_string(),
                message,
            },
        ));
    }

    /// One attempt, with the operator signals for its outcome.
    async fn attempt(&self) -> bool {
        let result = self.ship_sealed().await;
        let backlog = self.backlog();
        match result {
            Ok(_) => {
                let since = self.status.failing_since_us.swap(0, Ordering::Relaxed);
                self.status.set_error(None);
                if since != 0 {
                    let down = (gatehouse_core::time::now_micros() - since) / 1_000_000;
                    tracing::info!(sink = %self.sink.url(), down_secs = down, backlog, "shipping recovered");
                    self.notice(
                        "info",
                        format!(
                            "shipping to {} recovered after {down}s; {backlog} events wait to be shipped",
                            self.sink.url()
                        ),
                    );
                }
            }
            Err(ref e) => {
                self.status.errors.fetch_add(1, Ordering::Relaxed);
                self.status.set_error(Some(e.clone()));
                let now = gatehouse_core::time::now_micros();
                if self.status.failing_since_us.load(Ordering::Relaxed) == 0 {
                    self.status.failing_since_us.store(now, Ordering::Relaxed);
                    tracing::warn!(sink = %self.sink.url(), error = %e, backlog, "shipping failed; retrying");
                    self.notice(
                        "warn",
                        format!(
                            "shipping to {} failed: {e}; events stay in the local log until it recovers",
                            self.sink.url()
                        ),
                    );
                }
            }
        }
        let lagging = backlog > self.alert;
        if lagging != self.status.lagging.swap(lagging, Ordering::Relaxed) && lagging {
            tracing::warn!(sink = %self.sink.url(), backlog, alert = self.alert, "shipping backlog over the alert level");
            self.notice(
                "warn",
                format!(
                    "{backlog} events are not shipped to {} yet (alert level {})",
                    self.sink.url(),
                    self.alert
                ),
            );
        }
        result.is_ok()
    }

    /// Ship until `stop` resolves: every `interval_secs`, or sooner while segments keep
    /// coming; after a failure, back off from the interval up to 30 s. Retention passes, and
    /// the whole-sink checks among them, run beside shipping on their own schedule: listing a
    /// large sink takes as long as it takes without holding the next segments back.
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) {
        let (stopped_tx, stopped) = tokio::sync::watch::channel(false);
        let signal = async move {
            stop.await;
            let _ = stopped_tx.send(true);
        };
        tokio::join!(
            signal,
            self.ship_loop(stopped.clone()),
            self.retention_loop(stopped)
        );
    }

    /// Wait `wait`, or less if the shipper is stopped meanwhile; `true` when it is.
    async fn pause(stopped: &mut tokio::sync::watch::Receiver<bool>, wait: Duration) -> bool {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => true,
            _ = tokio::time::sleep(wait) => false,
        }
    }

    async fn ship_loop(&self, mut stopped: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = self.interval;
        loop {
            let wait = if self.attempt().await {
                backoff = self.interval;
                self.interval
            } else {
                let w = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                w
            };
            if Self::pause(&mut stopped, wait).await {
                return;
            }
        }
    }

    /// A retention pass every `retention_interval_secs` (the first soon after start), whole
    /// every `sink_check_interval_secs`; none while shipping fails (the sink is unreachable or
    /// refusing: shipping says so).
    async fn retention_loop(&self, mut stopped: tokio::sync::watch::Receiver<bool>) {
        if Self::pause(&mut stopped, self.retention_every.min(Duration::from_secs(10))).await {
            return;
        }
        // The first pass lists the whole sink.
        let mut whole_sink_at = tokio::time::Instant::now();
        loop {
            let wait = if self.status.failing_since_us.load(Ordering::Relaxed) != 0 {
                self.interval
            } else {
                let now = tokio::time::Instant::now();
                // Until one whole listing succeeded, every pass is whole (retention deletes
                // nothing before that).
                let checks = self.status.sink_checks.load(Ordering::Relaxed);
                let whole_sink = now >= whole_sink_at || checks == 0;
                let result = self.retention_pass_listing(whole_sink).await;
                if whole_sink {
                    // A whole listing that failed is tried again a retention interval later.
                    whole_sink_at = now
                        + if self.status.sink_checks.load(Ordering::Relaxed) != checks {
                            self.sink_check_every
                        } else {
                            self.retention_every
                        };
                }
                match result {
                    Ok(_) => {
                        if self.status.set_retention_error(None).is_some() {
                            tracing::info!(sink = %self.sink.url(), "retention pass succeeded again");
                        }
                        self.retention_every
                    }
                    Err(e) => {
                        if self.status.set_retention_error(Some(e.clone())).is_none() {
                            tracing::warn!(sink = %self.sink.url(), error = %e, "retention pass failed; nothing was deleted");
                            self.notice(
                                "warn",
                                format!(
                                    "retention pass for {} failed, nothing was deleted: {e}",
                                    self.sink.url()
                                ),
                            );
                        }
                        // Try again soon rather than a whole interval later.
                        self.interval
                    }
                }
            };
            if Self::pause(&mut stopped, wait).await {
                return;
            }
        }
    }

    /// At shutdown (after the recorder signed its last events): ship what is sealed, within
    /// `limit`. What is left goes at the next start.
    pub async fn drain(&self, limit: Duration) -> Result<u64, String> {
        match tokio::time::timeout(limit, self.ship_sealed()).await {
            Ok(r) => r,
            Err(_) => Err(format!("not done within {}s", limit.as_secs())),
        }
    }
}

/// Verify everything in `sink` with `keys`: every segment's events, in name order, through the
/// log's own checks, with each segment's checkpoint; from event 1, or for a sink that expires
/// its oldest segments, from the first one it holds ([`VerifyReport::expired_before`]). An
/// `Err` means the sink could not be read.
pub async fn verify_sink(sink: &Sink, keys: &PublicKeys) -> Result<VerifyReport, RecorderError> {
    let mut walk = Walk::new(keys, Vec::new(), 1);
    let others = walk_sink(sink, &mut walk, |_, _| Ok(())).await?;
    Ok(finish_sink(walk, others))
}

/// The report of a [`walk_sink`]: objects in the segments folder that are not segments are
/// findings too.
pub(crate) fn finish_sink(walk: Walk<'_>, others: Vec<String>) -> VerifyReport {
    let mut report = walk.finish(RecordedHead::NotApplicable);
    for o in others {
        report.push_always(
            FindingKind::Unsigned,
            None,
            format!("{o} is in the segments folder but is not a segment"),
        );
    }
    report
}

/// Walk every segment of `sink` in name order through `walk`, and hand each one that reads as
/// a segment to `each`: its checkpoint, and its events as (seq its position gives, stored
/// bytes). Returns the objects that are not segments. An `Err` means the sink could not be
/// read, or `each` failed.
pub(crate) async fn walk_sink(
    sink: &Sink,
    walk: &mut Walk<'_>,
    mut each: impl FnMut(Option<&Checkpoint>, &[(u64, &[u8])]) -> Result<(), RecorderError>,
) -> Result<Vec<String>, RecorderError> {
    let (segments, others) = sink.list().await?;
    if sink.expires
        && let Some((first, _, _)) = segments.first()
    {
        walk.start_at_sink_start(*first);
    }
    for (first, last, name) in &segments {
        let plain = match sink.get(name).await {
            Ok(p) => p,
            Err(SegmentError::Unreachable(e)) => return Err(RecorderError::read(e)),
            Err(SegmentError::Bad(why)) => {
                walk.bad_container(*first, format!("segment {name} {why}"));
                continue;
            }
        };
        let mut lines = plain.split(|b| *b == b'\n');
        let header = lines
            .next()
            .and_then(|h| serde_json::from_slice::<SegmentHeader>(h).ok())
            .filter(|h| h.format == SEGMENT_FORMAT);
        let Some(header) = header else {
            walk.bad_container(*first, format!("segment {name} has no readable header"));
            continue;
        };
        if (header.first_seq, header.last_seq) != (*first, *last) {
            walk.bad_container(
                *first,
                format!(
                    "segment {name} says it holds events {} to {}",
                    header.first_seq, header.last_seq
                ),
            );
            continue;
        }
        if let Some(cp) = &header.checkpoint {
            walk.add_checkpoint(cp.clone());
        }
        let events: Vec<(u64, &[u8])> = lines
            .filter(|l| !l.is_empty())
            .enumerate()
            .map(|(i, line)| (first.saturating_add(i as u64), line))
            .collect();
        for (pos, line) in &events {
            walk.event(*pos, line);
        }
        let held = events.len() as u64;
        if held != last.saturating_sub(*first).saturating_add(1) {
            walk.bad_container(
                *first,
                format!(
                    "segment {name} holds {held} events, its name says {}",
                    last - first + 1
                ),
            );
        }
        each(header.checkpoint.as_ref(), &events)?;
    }
    Ok(others)
}
