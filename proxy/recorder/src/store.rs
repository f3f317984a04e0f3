//! The RocksDB layout: column families, keys, the chain head and session summaries.

use std::path::Path;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, IteratorMode, Options};
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::error::RecorderError;
use crate::event::{canonical_from_stored, decode_hash};

/// key = seq (u64 big-endian), value = the event's JSON.
pub(crate) const CF_EVENTS: &str = "events";
/// key = session id ‖ 0x00 ‖ seq (u64 big-endian), empty value: the by-session index earlier
/// versions (through commit `5b7db4f`) wrote with every event. This one finds a session's
/// events through the search indexes' session term; it leaves their entries (a rollback to
/// such a version still finds the sessions recorded before) and deletes them with their
/// events.
pub(crate) const CF_BY_SESSION: &str = "by_session";
/// key = session id, value = JSON [`SessionSummary`] (see `summaries.rs`).
pub(crate) const CF_SESSIONS: &str = "sessions";
/// Chain head and format marker.
pub(crate) const CF_META: &str = "meta";
/// key = seq of the last event covered (u64 big-endian), value = JSON [`Checkpoint`].
pub(crate) const CF_CHECKPOINTS: &str = "checkpoints";

pub(crate) const ALL_CFS: [&str; 6] = [
    CF_EVENTS,
    CF_BY_SESSION,
    CF_SESSIONS,
    CF_META,
    CF_CHECKPOINTS,
    crate::search::CF_SEARCH,
];

pub(crate) const META_HEAD: &[u8] = b"head";
/// Where the local log starts after retention deleted older events: JSON [`Floor`].
pub(crate) const META_FLOOR: &[u8] = b"floor";
/// A retention deletion in progress: JSON [`Floor`] of its target (unsigned), removed when
/// the floor reaches it.
pub(crate) const META_RETAINING: &[u8] = b"retaining";
/// A log `gatehouse audit restore` rebuilt from a sink that had expired its oldest segments:
/// JSON [`RestoredStart`] (unsigned; see `verify.rs`).
pub(crate) const META_RESTORED_START: &[u8] = b"restored_start";
/// Seq through which the search indexes are written (u64 BE; see `indexer.rs`). Not the key
/// the earlier layout used (`indexed`): an older version run on the log moves that one, and
/// its progress says nothing about these indexes.
pub(crate) const META_INDEXED: &[u8] = b"postings_indexed";
/// The earlier layout's mark, kept at 0 (see [`reset_index_if_unsound`]).
const META_OLD_INDEXED: &[u8] = b"indexed";
/// The widest time range (max − min, µs, i64 BE) of any index block written: a search of an
/// old window skips the directory entries of newer blocks by it (see `search.rs`).
pub(crate) const META_INDEX_SPREAD: &[u8] = b"postings_spread";
pub(crate) const META_FORMAT: &[u8] = b"format";
/// The layout of the `search` column family (see `search.rs`); a log whose indexes have
/// another (or none) is re-indexed.
pub(crate) const META_INDEX_FORMAT: &[u8] = b"index_format";
pub(crate) const INDEX_FORMAT: &[u8] = b"postings-v2";
pub(crate) const FORMAT_VALUE: &[u8] = b"gatehouse-log-v1";

pub(crate) fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub(crate) fn seq_from_key(key: &[u8]) -> Option<u64> {
    let arr: [u8; 8] = key.try_into().ok()?;
    Some(u64::from_be_bytes(arr))
}

pub(crate) fn session_prefix(session_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(session_id.len() + 9);
    k.extend_from_slice(session_id.as_bytes());
    k.push(0);
    k
}

pub(crate) fn by_session_key(session_id: &str, seq: u64) -> Vec<u8> {
    let mut k = session_prefix(session_id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a ColumnFamily, RecorderError> {
    db.cf_handle(name)
        .ok_or_else(|| RecorderError::Corrupt(format!("column family `{name}` is missing")))
}

/// Write every column family's memtable out to tables (waiting for it): whoever opens the log
/// next reads tables instead of replaying up to [`MAX_TOTAL_WAL_SIZE`] of WAL. Returns the
/// first failure; what was not flushed is still in the WAL.
pub(crate) fn flush_all(db: &DB) -> Result<(), RecorderError> {
    let mut first_err = None;
    for name in ALL_CFS {
        if let Some(cf) = db.cf_handle(name)
            && let Err(e) = db.flush_cf(cf)
        {
            first_err.get_or_insert(RecorderError::Write(format!("flushing `{name}`: {e}")));
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// zstd level of every column family's tables. Flushing memtables was the log's largest
/// cost after the writer itself, mostly zstd at RocksDB's default level (3); level 1 is
/// zstd's fast strategy. With [`EVENTS_BLOCK_SIZE`] it cut the CPU per recorded event by
/// about 10% (criterion `recorder_sync`, steady, 512 sessions).
const ZSTD_LEVEL: i32 = 1;
/// Block size of the events' tables (RocksDB's default is 4 KiB). zstd builds its entropy
/// tables per block, so larger blocks cost less to compress. Most reads of events are runs
/// (verify, shipping, replay, restore, exports); a point read of one event (a search hit, a
/// session's events scattered among others') decompresses up to 16 KiB instead of 4 when its
/// block is not cached, which it is not on a reader's first read (each admin request and
/// CLI command opens its own reader).
const EVENTS_BLOCK_SIZE: usize = 16 * 1024;

/// Most WAL bytes kept before RocksDB flushes the column families holding the oldest WAL
/// file (see [`open_rw`]).
const MAX_TOTAL_WAL_SIZE: u64 = 128 << 20;

fn cf_options(name: &str) -> Options {
    let mut o = Options::default();
    o.set_compression_type(DBCompressionType::Zstd);
    // (window bits, level, strategy, dictionary bytes): RocksDB's defaults but the level.
    o.set_compression_options(-14, ZSTD_LEVEL, 0, 0);
    if name == CF_EVENTS {
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_size(EVENTS_BLOCK_SIZE);
        o.set_block_based_table_factory(&table);
    }
    o
}

/// Open (creating if needed) the database for writing.
pub(crate) fn open_rw(dir: &Path) -> Result<DB, RecorderError> {
    let open_err = |message: String| RecorderError::Open {
        path: dir.display().to_string(),
        message,
    };
    std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_keep_log_file_num(10);
    // Every reader (each admin request, each CLI command) replays the WAL past the last
    // memtable flush when it opens the log. The WAL lives until every column family with data
    // in it has flushed, and the small ones (the head, summaries) seldom fill a memtable, so
    // by default it grew to hundreds of MB and an open took a second at 1M events. Past this
    // size RocksDB flushes the column families that hold the oldest WAL file.
    opts.set_max_total_wal_size(MAX_TOTAL_WAL_SIZE);
    let cfs = ALL_CFS
        .iter()
        .map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name)));
    let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| open_err(e.to_string()))?;
    match db
        .get_cf(cf(&db, CF_META)?, META_FORMAT)
        .map_err(|e| open_err(e.to_string()))?
    {
        Some(v) if v == FORMAT_VALUE => {}
        Some(v) => {
            return Err(open_err(format!(
                "unsupported log format `{}`",
                String::from_utf8_lossy(&v)
            )));
        }
        None => {
            let mut wo = rocksdb::WriteOptions::default();
            wo.set_sync(true);
            db.put_cf_opt(cf(&db, CF_META)?, META_FORMAT, FORMAT_VALUE, &wo)
                .map_err(|e| open_err(e.to_string()))?;
        }
    }
    Ok(db)
}

/// Drop the search indexes unless they are this layout's with a sound mark: another layout
/// (an earlier version's, a key per event and term), none, or a mark that is missing,
/// malformed or past the log's head. The indexer builds them again in the background (from
/// a mark of 0; blocks it wrote before would otherwise be indexed twice); searches read what
/// is not indexed meanwhile, so they stay complete.
///
/// Only when the recorder starts, before its indexer does (whose idea of how far it got would
/// otherwise outlive the reset).
///
/// Other layouts: a key per event and term (versions before the posting lists), and
/// `postings-v1` (posting lists without the session term).
///
/// Old-layout keys an older version wrote after a rollback (their first byte sorts after `P`)
/// are deleted even from sound indexes, and the old mark (`indexed`) is kept at 0, so that
/// such a version rebuilds its own indexes rather than trusting these.
pub(crate) fn reset_index_if_unsound(db: &DB) -> Result<(), RecorderError> {
    let (meta, search) = (cf(db, CF_META)?, cf(db, crate::search::CF_SEARCH)?);
    let get = |k: &[u8]| db.get_cf(meta, k).map_err(RecorderError::read);
    let layout_ok = get(META_INDEX_FORMAT)?.is_some_and(|f| f == INDEX_FORMAT);
    let mark = get(META_INDEXED)?.as_deref().and_then(seq_from_key);
    let head = meta_head(db)?.map(|h| h.seq).unwrap_or(0);
    if layout_ok && mark.is_some_and(|m| m <= head) {
        let (old_from, old_to) = (b"Q".as_slice(), [0xFFu8; 8]);
        let old_keys = db
            .iterator_cf(search, IteratorMode::From(old_from, rocksdb::Direction::Forward))
            .next()
            .transpose()
            .map_err(RecorderError::read)?
            .is_some();
        if old_keys {
            tracing::info!("removing search index entries an older version wrote");
            db.delete_range_cf(search, old_from, old_to.as_slice())
                .map_err(|e| RecorderError::Write(e.to_string()))?;
            if let Err(e) = db.delete_file_in_range_cf(search, old_from, old_to.as_slice()) {
                tracing::warn!(error = %e, "the old search indexes stay on disk until compaction");
            }
        }
        if get(META_OLD_INDEXED)?.is_none_or(|m| m != seq_key(0)) {
            db.put_cf(meta, META_OLD_INDEXED, seq_key(0))
                .map_err(|e| RecorderError::Write(e.to_string()))?;
        }
        return Ok(());
    }
    if db.iterator_cf(search, IteratorMode::Start).next().is_some() {
        tracing::info!(
            "search indexes of another layout, or without a sound mark: built again in the background"
        );
    }
    let mut wb = rocksdb::WriteBatch::default();
    let (all_from, all_to) = (b"".as_slice(), [0xFFu8; 8]);
    wb.delete_range_cf(search, all_from, all_to.as_slice());
    wb.put_cf(meta, META_OLD_INDEXED, seq_key(0));
    wb.delete_cf(meta, META_INDEX_SPREAD);
    wb.put_cf(meta, META_INDEXED, seq_key(0));
    wb.put_cf(meta, META_INDEX_FORMAT, INDEX_FORMAT);
    db.write(wb).map_err(|e| RecorderError::Write(e.to_string()))?;
    // The space back now, not at some later compaction (an old index can outweigh the events).
    if let Err(e) = db.delete_file_in_range_cf(search, all_from, all_to.as_slice()) {
        tracing::warn!(error = %e, "the old search indexes stay on disk until compaction");
    }
    Ok(())
}

/// Whether an earlier version has run on the log since this one last started: it moves its
/// own index mark, which [`reset_index_if_unsound`] holds at 0.
pub(crate) fn old_index_mark_moved(db: &DB) -> Result<bool, RecorderError> {
    Ok(db
        .get_cf(cf(db, CF_META)?, META_OLD_INDEXED)
        .map_err(RecorderError::read)?
        .is_some_and(|m| m != seq_key(0)))
}

/// Seq through which the search indexes are written: events after it are found by reading
/// them. Indexes in another layout (a log no recorder has started on since an upgrade) count
/// for nothing. The mark is derived data: one that cannot be read counts as 0 (everything is
/// read, and indexed again).
pub(crate) fn indexed_through(db: &DB) -> u64 {
    let Ok(meta) = cf(db, CF_META) else {
        return 0;
    };
    match db.get_cf(meta, META_INDEX_FORMAT) {
        Ok(Some(f)) if f == INDEX_FORMAT => {}
        Ok(_) => return 0,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the search index format");
            return 0;
        }
    }
    match db.get_cf(meta, META_INDEXED) {
        Ok(Some(v)) => seq_from_key(&v).unwrap_or_else(|| {
            tracing::warn!("malformed search index mark: searches read every event until re-indexed");
            0
        }),
        Ok(None) => 0,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the search index mark");
            0
        }
    }
}

/// [`META_INDEX_SPREAD`]: none before the first block; a malformed or negative one counts as
/// unbounded (searches then scan more of the directory, never less).
pub(crate) fn index_spread(db: &DB) -> Result<Option<i64>, RecorderError> {
    Ok(db
        .get_cf(cf(db, CF_META)?, META_INDEX_SPREAD)
        .map_err(RecorderError::read)?
        .map(|v| {
            <[u8; 8]>::try_from(v.as_slice())
                .map(i64::from_be_bytes)
                .ok()
                .filter(|s| *s >= 0)
                .unwrap_or(i64::MAX)
        }))
}

/// Open the database read-only; needs no lock, so it works while a gateway writes to it.
/// It sees what was committed when it was opened.
pub(crate) fn open_ro(dir: &Path) -> Result<DB, RecorderError> {
    let path = dir.display().to_string();
    if !dir.join("CURRENT").exists() {
        return Err(RecorderError::NotFound { path });
    }
    let opts = Options::default();
    // A log written before a column family existed lacks it; open what is there (readers
    // treat a missing family as empty).
    let present = DB::list_cf(&opts, dir).unwrap_or_else(|_| ALL_CFS.iter().map(|s| s.to_string()).collect());
    let cfs: Vec<&str> = ALL_CFS
        .iter()
        .copied()
        .filter(|name| present.iter().any(|p| p == name))
        .collect();
    // Opening races with the writer's file rotation now and then; retry a few times.
    let mut last = String::new();
    for attempt in 0..3u64 {
        match DB::open_cf_for_read_only(&opts, dir, &cfs, false) {
            Ok(db) => return Ok(db),
            Err(e) => {
                last = e.to_string();
                std::thread::sleep(std::time::Duration::from_millis(20 * (attempt + 1)));
            }
        }
    }
    Err(RecorderError::Open { path, message: last })
}

/// The chain head: the last durable event's seq and hash (seq 0 and genesis when empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub seq: u64,
    pub hash: [u8; 32],
}

impl Head {
    pub(crate) const GENESIS: Head = Head {
        seq: 0,
        hash: [0u8; 32],
    };
}

#[derive(Serialize, Deserialize)]
pub(crate) struct StoredHead {
    pub seq: u64,
    pub hash: String,
}

impl StoredHead {
    pub(crate) fn from_head(h: &Head) -> Self {
        StoredHead {
            seq: h.seq,
            hash: hex::encode(h.hash),
        }
    }
}

/// The head as recorded in `meta`.
pub(crate) fn meta_head(db: &DB) -> Result<Option<StoredHead>, RecorderError> {
    let Some(v) = db
        .get_cf(cf(db, CF_META)?, META_HEAD)
        .map_err(RecorderError::read)?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&v)
        .map(Some)
        .map_err(|e| RecorderError::Corrupt(format!("unreadable chain head: {e}")))
}

/// The last event's (seq, hash), read from the `events` column family.
pub(crate) fn last_event(db: &DB) -> Result<Option<Head>, RecorderError> {
    let mut it = db.iterator_cf(cf(db, CF_EVENTS)?, IteratorMode::End);
    let Some(item) = it.next() else {
        return Ok(None);
    };
    let (k, v) = item.map_err(RecorderError::read)?;
    let seq = seq_from_key(&k).ok_or_else(|| RecorderError::Corrupt("malformed event key".to_string()))?;
    let (_, hash) = canonical_from_stored(&v)
        .ok_or_else(|| RecorderError::Corrupt(format!("event {seq} is malformed")))?;
    Ok(Some(Head { seq, hash }))
}

/// Local retention deleted every event up to `seq` (after the sink acknowledged them). The
/// signed checkpoint at `seq` stays in the log and anchors what is left: event `seq + 1` must
/// link to `hash`, and the checkpoint's signature vouches for `hash`. The record itself is
/// signed with the checkpoint key, so a floor cannot be added by someone who can only write
/// the database.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Floor {
    pub seq: u64,
    pub hash: String,
    /// When the deletion was made, µs since the epoch.
    pub time_us: i64,
    /// The sink that holds the deleted events.
    pub sink: String,
    pub key_id: String,
    /// Ed25519 over [`Floor::message`], hex.
    pub signature: String,
}

/// Where a log restored from a sink that expires its oldest segments (`sink_expires`) starts:
/// the first event the sink still held. Nothing signs it (a restore holds no private key), so
/// a log that carries one never verifies *intact*: the sink itself is the evidence of where
/// it starts (`audit verify --shipped`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredStart {
    /// The first event of the restored log; events 1 to `first_seq - 1` had expired.
    pub first_seq: u64,
    /// The hash that event links to (of the expired event before it), hex.
    pub prev_hash: String,
    /// The sink it was restored from, as configured.
    pub sink: String,
    /// When it was restored, µs since the epoch.
    pub restored_us: i64,
}

/// Name of the floor format (first line of its signed message).
pub const FLOOR_FORMAT: &str = "gatehouse-floor-v1";

impl Floor {
    /// The exact bytes the signature covers.
    pub fn message(&self) -> Vec<u8> {
        format!(
            "{FLOOR_FORMAT}\nseq:{}\nhash:{}\ntime_us:{}\nsink:{}\nkey_id:{}\n",
            self.seq, self.hash, self.time_us, self.sink, self.key_id
        )
        .into_bytes()
    }
}

fn meta_json<T: serde::de::DeserializeOwned>(
    db: &DB,
    key: &[u8],
    what: &str,
) -> Result<Option<T>, RecorderError> {
    let Some(v) = db.get_cf(cf(db, CF_META)?, key).map_err(RecorderError::read)? else {
        return Ok(None);
    };
    serde_json::from_slice(&v)
        .map(Some)
        .map_err(|e| RecorderError::Corrupt(format!("unreadable {what}: {e}")))
}

/// The log's floor, if retention ever deleted anything.
pub(crate) fn floor(db: &DB) -> Result<Option<Floor>, RecorderError> {
    meta_json(db, META_FLOOR, "log floor")
}

/// Where a log restored from an expiring sink starts, if it is one.
pub(crate) fn restored_start(db: &DB) -> Result<Option<RestoredStart>, RecorderError> {
    meta_json(db, META_RESTORED_START, "restored log's start")
}

/// The target of a retention deletion in progress (its events may have lost their index
/// entries already), if any.
pub(crate) fn retaining(db: &DB) -> Result<Option<Floor>, RecorderError> {
    meta_json(db, META_RETAINING, "retention marker")
}

/// Events up to this seq are deleted or being deleted: readers leave them out (0: none).
pub(crate) fn effective_floor(db: &DB) -> Result<u64, RecorderError> {
    let f = floor(db)?.map(|f| f.seq).unwrap_or(0);
    let r = retaining(db)?.map(|f| f.seq).unwrap_or(0);
    Ok(f.max(r))
}

/// Recover the chain head: the last event, which must agree with `meta` (they are written in
/// the same batch, so a mismatch means the log was truncated or edited).
pub(crate) fn recover_head(db: &DB) -> Result<Head, RecorderError> {
    let last = last_event(db)?;
    let meta = meta_head(db)?;
    match (last, meta) {
        (None, None) => Ok(Head::GENESIS),
        (Some(h), Some(m)) if m.seq == h.seq && decode_hash(&m.hash) == Some(h.hash) => Ok(h),
        // Retention deleted every event (nothing was recorded after the floor's checkpoint):
        // the head is the floor.
        (None, Some(m))
            if floor(db)?.is_some_and(|f| f.seq == m.seq && f.hash == m.hash)
                && let Some(hash) = decode_hash(&m.hash) =>
        {
            Ok(Head { seq: m.seq, hash })
        }
        (last, meta) => Err(RecorderError::Corrupt(format!(
            "chain head in meta ({}) does not match the last event ({})",
            meta.map(|m| format!("seq {}", m.seq))
                .unwrap_or_else(|| "none".to_string()),
            last.map(|h| format!("seq {}", h.seq))
                .unwrap_or_else(|| "none".to_string()),
        ))),
    }
}

/// Every checkpoint, in seq order (none when the log predates checkpoints).
pub(crate) fn checkpoints(db: &DB) -> Result<Vec<Checkpoint>, RecorderError> {
    checkpoint_records(db)?
        .into_iter()
        .map(|r| r.map_err(|u| RecorderError::Corrupt(format!("unreadable checkpoint at {}", u.at))))
        .collect()
}

/// A checkpoint record that does not decode.
pub(crate) struct UnreadableCheckpoint {
    /// The seq its key names, if the key is well formed.
    pub seq: Option<u64>,
    /// How to name it in a message.
    pub at: String,
}

/// Every checkpoint record, in key order, decoded or not (verification reports the bad ones
/// instead of giving up).
pub(crate) fn checkpoint_records(
    db: &DB,
) -> Result<Vec<Result<Checkpoint, UnreadableCheckpoint>>, RecorderError> {
    let Some(cf) = db.cf_handle(CF_CHECKPOINTS) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for item in db.iterator_cf(cf, IteratorMode::Start) {
        let (k, v) = item.map_err(RecorderError::read)?;
        out.push(serde_json::from_slice::<Checkpoint>(&v).map_err(|_| {
            let seq = seq_from_key(&k);
            UnreadableCheckpoint {
                seq,
                at: seq
                    .map(|s| format!("the checkpoint record at event {s}"))
                    .unwrap_or_else(|| format!("the checkpoint record keyed {}", hex::encode(&k))),
            }
        }));
    }
    Ok(out)
}

/// The first checkpoint whose seq is `seq` or later.
pub(crate) fn checkpoint_at_or_after(db: &DB, seq: u64) -> Result<Option<Checkpoint>, RecorderError> {
    let Some(cf) = db.cf_handle(CF_CHECKPOINTS) else {
        return Ok(None);
    };
    let start = seq_key(seq);
    match db
        .iterator_cf(cf, IteratorMode::From(&start, rocksdb::Direction::Forward))
        .next()
    {
        None => Ok(None),
        Some(item) => {
            let (k, v) = item.map_err(RecorderError::read)?;
            serde_json::from_slice(&v).map(Some).map_err(|e| {
                RecorderError::Corrupt(format!(
                    "unreadable checkpoint at {}: {e}",
                    seq_from_key(&k).unwrap_or(0)
                ))
            })
        }
    }
}

/// Seq of the last checkpoint (0: none).
pub(crate) fn last_checkpoint_seq(db: &DB) -> Result<u64, RecorderError> {
    let Some(cf) = db.cf_handle(CF_CHECKPOINTS) else {
        return Ok(0);
    };
    match db.iterator_cf(cf, IteratorMode::End).next() {
        None => Ok(0),
        Some(item) => {
            let (k, _) = item.map_err(RecorderError::read)?;
            Ok(seq_from_key(&k).unwrap_or(0))
        }
    }
}

/// One session as listed by `gatehouse audit sessions`; maintained by the writer (its counters
/// at most 100 ms late, the events past that applied by readers: `summaries.rs`), so listing
/// never scans the log.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SessionSummary {
    pub session_id: String,
    /// Verified identity (`agent:name`); `None` for failed authentication.
    pub principal: Option<String>,
    /// The user name a client presented when authentication failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub protocol: String,
    pub target: String,
    /// `ip:port` of the client.
    pub source: String,
    pub client_app: Option<String>,
    pub auth_method: Option<String>,
    /// Time of the session's first event (normally its `session_start`).
    pub start_us: i64,
    /// Seq of the session's first event.
    pub first_seq: u64,
    /// Seq of the session's latest event that changed this summary.
    pub last_seq: u64,
    /// Set once the session ended (or failed to authenticate).
    pub end_us: Option<i64>,
    pub end_reason: Option<String>,
    /// Decisions recorded for the session (including `connect`).
    pub ops: u64,
    /// Of those, denied.
    pub denied: u64,
    pub auth_failed: bool,
}

impl SessionSummary {
    pub(crate) fn stub(session_id: &str, principal: Option<String>, time_us: i64, seq: u64) -> Self {
        SessionSummary {
            session_id: session_id.to_string(),
            principal,
            user: None,
            protocol: String::new(),
            target: String::new(),
            source: String::new(),
            client_app: None,
            auth_method: None,
            start_us: time_us,
            first_seq: seq,
            last_seq: seq,
            end_us: None,
            end_reason: None,
            ops: 0,
            denied: 0,
            auth_failed: false,
        }
    }

    pub fn is_ended(&self) -> bool {
        self.end_us.is_some()
    }
}
