//! Evidence bundles: a time window of the log exported to a directory an auditor can verify
//! offline with only the public key(s).
//!
//! # Layout (`gatehouse-bundle-v1`)
//!
//! | file | content |
//! |---|---|
//! | `events.jsonl` | the stored events, byte for byte, one per line, in seq order: the window, extended to the first checkpoint at or after its end so the whole range is signed |
//! | `events.ocsf.jsonl` | the same events in OCSF 1.3.0 (authentication, datastore activity, account changes; see [`crate::ocsf`]), for a SIEM; kinds without an OCSF class are left out |
//! | `checkpoints.jsonl` | the signed checkpoints within that range |
//! | `sessions.jsonl` | the summary of every session with an event in the window |
//! | `transcripts/<session>.txt` | each of those sessions rendered as a transcript (the whole session) |
//! | `report.html` | a static page for people: the window, how to verify, the SOC 2 and ISO/IEC 27001:2022 controls each artifact supports, sessions, approvals, denials by policy |
//! | `manifest.json` | format, window, seq range, and the SHA-256 and size of every file above |
//! | `manifest.sig` | `{"key_id":…,"signature":…}`: Ed25519 over the exact bytes of `manifest.json` (when exported with the signing key) |
//!
//! Events are self-verifying through the chain and the checkpoints, whoever exported them; the
//! manifest signature additionally vouches for the derived files (summaries, transcripts).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::checkpoint::{Checkpoint, CheckpointSigner, PublicKeys, SignatureError};
use crate::error::RecorderError;
use crate::reader::LogReader;
use crate::verify::{FindingKind, RecordedHead, VerifyReport, Walk};

/// Name of the bundle format.
pub const BUNDLE_FORMAT: &str = "gatehouse-bundle-v1";

const EVENTS: &str = "events.jsonl";
const EVENTS_OCSF: &str = "events.ocsf.jsonl";
const CHECKPOINTS: &str = "checkpoints.jsonl";
const SESSIONS: &str = "sessions.jsonl";
const TRANSCRIPTS: &str = "transcripts";
const REPORT: &str = "report.html";
const MANIFEST: &str = "manifest.json";
const MANIFEST_SIG: &str = "manifest.sig";
/// Verification reads no bundle file larger than this (a hostile bundle must not exhaust
/// memory); export never writes one (a window that large should be split).
pub const MAX_BUNDLE_FILE: u64 = 4 << 30;

/// What to export.
pub struct ExportOptions<'a> {
    /// Window, µs since the Unix epoch, inclusive.
    pub from_us: i64,
    pub to_us: i64,
    /// Created; must not exist or be empty.
    pub out: &'a Path,
    /// Signs the manifest when given.
    pub signer: Option<&'a CheckpointSigner>,
}

/// What was exported.
#[derive(Debug, Clone, Serialize)]
pub struct BundleSummary {
    /// Seq range written to `events.jsonl` (0, 0 when the window holds no event).
    pub first_seq: u64,
    pub last_seq: u64,
    /// The last event whose time is within the window.
    pub window_last_seq: u64,
    pub events: u64,
    pub sessions: usize,
    pub checkpoints: usize,
    /// Events at the end of the range that no checkpoint covers (the log had none after them).
    pub unsigned_events: u64,
    /// Key id of the manifest signature.
    pub signed_by: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
struct Manifest {
    format: String,
    created_us: i64,
    window: Window,
    chain: ChainRange,
    files: Vec<FileEntry>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
struct Window {
    from_us: i64,
    to_us: i64,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
struct ChainRange {
    /// The chain encoding of the events.
    format: String,
    first_seq: u64,
    last_seq: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
struct FileEntry {
    path: String,
    sha256: String,
    bytes: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
struct ManifestSig {
    key_id: String,
    signature: String,
}

/// The few fields export needs from each event.
#[derive(Deserialize)]
struct EventMeta {
    seq: u64,
    time_us: i64,
    session_id: String,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> RecorderError {
    RecorderError::Write(format!("{}: {e}", path.display()))
}

/// A file name for a session id: its safe characters, plus a hash when anything was replaced.
fn transcript_name(session_id: &str) -> String {
    let safe: String = session_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    if safe == session_id && !safe.starts_with('.') {
        format!("{safe}.txt")
    } else {
        let h = hex::encode(Sha256::digest(session_id.as_bytes()));
        format!("{safe}-{}.txt", h.get(..12).unwrap_or_default())
    }
}

/// Export the window `[from_us, to_us]` of the log to `o.out`.
pub fn export_bundle(reader: &LogReader, o: &ExportOptions<'_>) -> Result<BundleSummary, RecorderError> {
    if o.from_us > o.to_us {
        return Err(RecorderError::Invalid(
            "the window ends before it starts".to_string(),
        ));
    }
    if o.out.exists() {
        let empty = std::fs::read_dir(o.out)
            .map_err(|e| io_err(o.out, e))?
            .next()
            .is_none();
        if !empty {
            return Err(RecorderError::Invalid(format!(
                "{} exists and is not empty",
                o.out.display()
            )));
        }
    }
    // Never sign a bundle of a log that is already tampered with: the signature would lend it
    // credibility. (Incomplete is fine: a log without checkpoints exports as such, and the
    // report says so.)
    let mut keys = PublicKeys::default();
    if let Some(signer) = o.signer {
        keys.add_pem(&signer.public_pem())
            .map_err(|e| RecorderError::Invalid(format!("the signing key's public half: {e}")))?;
    }
    let check = reader.verify(&keys)?;
    if let Some(f) = check.first_tampering() {
        return Err(RecorderError::Invalid(format!(
            "the log fails verification ({} finding{} of tampering, the first: {}); \
             nothing was exported: run `gatehouse audit verify` for the details",
            check.tampering_findings,
            if check.tampering_findings == 1 { "" } else { "s" },
            f.message
        )));
    }
    // Events local retention deleted cannot go into a bundle: a window reaching back to them
    // would be silently incomplete.
    let floor_seq = reader.effective_floor()?;
    if floor_seq > 0 {
        let floor_time = reader
            .checkpoint_at_or_after(floor_seq)?
            .map(|c| c.time_us)
            .unwrap_or(i64::MAX);
        if o.from_us <= floor_time {
            return Err(RecorderError::Invalid(format!(
                "events up to {floor_seq} (recorded until {}) were deleted from the local log \
                 after shipping: export a window starting after that, or restore the shipped \
                 copy with `gatehouse audit restore` and export from it",
                gatehouse_core::time::rfc3339_micros(floor_time),
            )));
        }
    }
    // Likewise events a sink had expired before this log was restored from it. Their times
    // are gone with them; each was appended before the first event held, so before the first
    // checkpoint at or after it was signed (the bound the floor has too).
    let restored = reader.restored_start()?.filter(|r| r.first_seq > 1);
    if let Some(r) = &restored {
        let bound = reader
            .checkpoint_at_or_after(r.first_seq)?
            .map(|c| c.time_us)
            .unwrap_or(i64::MAX);
        if o.from_us <= bound {
            return Err(RecorderError::Invalid(format!(
                "this log was restored from {}, which had expired events 1 to {} (recorded \
                 until {} at the latest): export a window starting after that",
                r.sink,
                r.first_seq - 1,
                gatehouse_core::time::rfc3339_micros(bound),
            )));
        }
    }
    std::fs::create_dir_all(o.out.join(TRANSCRIPTS)).map_err(|e| io_err(o.out, e))?;

    // Which seqs fall in the window, and which sessions they belong to.
    let mut first = 0u64;
    let mut window_last = 0u64;
    let mut sessions = BTreeSet::new();
    let mut tally = crate::report::Tally::default();
    reader.for_each_stored(1, |seq, stored| {
        let m: EventMeta = serde_json::from_slice(stored)
            .map_err(|e| RecorderError::Corrupt(format!("event {seq} is undecodable: {e}")))?;
        if m.seq != seq {
            return Err(RecorderError::Corrupt(format!(
                "event stored as {seq} claims to be {}; run `gatehouse audit verify`",
                m.seq
            )));
        }
        if m.time_us >= o.from_us && m.time_us <= o.to_us {
            if first == 0 {
                first = seq;
            }
            window_last = seq;
            sessions.insert(m.session_id);
            // Events of a kind this version does not know are counted by nothing.
            if let Ok(ev) = serde_json::from_slice::<crate::event::Event>(stored) {
                tally.add(&ev);
            }
        }
        Ok(true)
    })?;

    let checkpoints = reader.checkpoints()?;
    let (last, unsigned) = if first == 0 {
        (0, 0)
    } else {
        match checkpoints.iter().find(|c| c.seq >= window_last) {
            Some(c) => (c.seq, 0),
            None => {
                let end = reader.last_seq()?;
                let signed = checkpoints.last().map(|c| c.seq).unwrap_or(0);
                (end, end.saturating_sub(signed.max(first - 1)))
            }
        }
    };

    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut events_out = Vec::new();
    let mut decoded = Vec::new();
    let mut events = 0u64;
    if first > 0 {
        reader.for_each_stored(first, |seq, stored| {
            if seq > last {
                return Ok(false);
            }
            events_out.extend_from_slice(stored);
            events_out.push(b'\n');
            events += 1;
            if let Ok(ev) = serde_json::from_slice::<crate::event::Event>(stored) {
                decoded.push(ev);
            }
            Ok(true)
        })?;
    }
    files.insert(EVENTS.to_string(), events_out);
    let cps: Vec<&Checkpoint> = checkpoints
        .iter()
        .filter(|c| first > 0 && c.seq >= first && c.seq <= last)
        .collect();
    files.insert(CHECKPOINTS.to_string(), jsonl(&cps)?);
    let mut summaries = Vec::new();
    let mut transcripts = BTreeMap::new();
    for id in &sessions {
        let summary = reader.session(id)?;
        // A session that began before the floor: its first events are only in the sink.
        let cut = floor_seq > 0 && summary.as_ref().is_none_or(|s| s.first_seq <= floor_seq);
        if let Some(s) = summary {
            summaries.push(s);
        }
        let events = reader.session_events(id)?;
        let mut transcript = crate::render_transcript(&events);
        // In a log restored from an expiring sink, a session whose first event here is not
        // its start may have begun in what expired.
        if let Some(r) = &restored
            && !cut
            && events
                .first()
                .is_some_and(|e| !matches!(e.body, crate::event::EventBody::SessionStart { .. }))
        {
            transcript.insert_str(
                0,
                &format!(
                    "[this log was restored from {}, which had expired events 1 to {}: this \
                     session's earlier events, if it had any, are not in it]\n",
                    r.sink,
                    r.first_seq - 1
                ),
            );
        }
        if cut {
            transcript.insert_str(
                0,
                &format!(
                    "[this session's events up to event {floor_seq} were deleted from the local log \
                     after shipping; the shipped copy holds them]\n"
                ),
            );
        }
        let name = format!("{TRANSCRIPTS}/{}", transcript_name(id));
        files.insert(name.clone(), transcript.into_bytes());
        transcripts.insert(id.clone(), name);
    }
    summaries.sort_by(|a, b| a.start_us.cmp(&b.start_us).then(a.first_seq.cmp(&b.first_seq)));
    // The OCSF form names each event's session details (target, source, protocol); events of
    // the range's sessions outside the window's list are looked up once each.
    let mut by_id: BTreeMap<String, Option<crate::store::SessionSummary>> = summaries
        .iter()
        .map(|s| (s.session_id.clone(), Some(s.clone())))
        .collect();
    let mut ocsf_out = Vec::new();
    for ev in &decoded {
        if !by_id.contains_key(&ev.session_id) {
            by_id.insert(ev.session_id.clone(), reader.session(&ev.session_id)?);
        }
        let s = by_id.get(&ev.session_id).and_then(Option::as_ref);
        if let Some(v) = crate::ocsf::to_ocsf(ev, s) {
            serde_json::to_writer(&mut ocsf_out, &v).map_err(|e| RecorderError::Encode(e.to_string()))?;
            ocsf_out.push(b'\n');
        }
    }
    drop(decoded);
    files.insert(EVENTS_OCSF.to_string(), ocsf_out);
    files.insert(SESSIONS.to_string(), jsonl(&summaries)?);
    let created_us = gatehouse_core::time::now_micros();
    let mut cp_keys: Vec<String> = cps.iter().map(|c| c.key_id.clone()).collect();
    cp_keys.sort();
    cp_keys.dedup();
    let head_hash = if last > 0 {
        reader.events(last, 1)?.into_iter().next().map(|e| e.hash)
    } else {
        None
    };
    let report = crate::report::render(&crate::report::ReportInput {
        from_us: o.from_us,
        to_us: o.to_us,
        created_us,
        first_seq: first,
        last_seq: last,
        checkpoints: cps.len(),
        checkpoint_keys: cp_keys,
        unsigned_events: unsigned,
        head_hash,
        sessions: &summaries,
        transcripts: &transcripts,
        tally: &tally,
    });
    files.insert(REPORT.to_string(), report.into_bytes());

    let mut entries = Vec::new();
    for (name, bytes) in &files {
        if bytes.len() as u64 > MAX_BUNDLE_FILE {
            return Err(RecorderError::Invalid(format!(
                "{name} would be {} bytes, over the {MAX_BUNDLE_FILE}-byte limit: export a shorter window",
                bytes.len()
            )));
        }
    }
    for (name, bytes) in &files {
        let path = o.out.join(name);
        std::fs::write(&path, bytes).map_err(|e| io_err(&path, e))?;
        entries.push(FileEntry {
            path: name.clone(),
            sha256: hex::encode(Sha256::digest(bytes)),
            bytes: bytes.len() as u64,
        });
    }
    let manifest = Manifest {
        format: BUNDLE_FORMAT.to_string(),
        created_us,
        window: Window {
            from_us: o.from_us,
            to_us: o.to_us,
        },
        chain: ChainRange {
            format: crate::CHAIN_FORMAT.to_string(),
            first_seq: first,
            last_seq: last,
        },
        files: entries,
    };
    let mut manifest_bytes =
        serde_json::to_vec_pretty(&manifest).map_err(|e| RecorderError::Encode(e.to_string()))?;
    manifest_bytes.push(b'\n');
    let manifest_path = o.out.join(MANIFEST);
    std::fs::write(&manifest_path, &manifest_bytes).map_err(|e| io_err(&manifest_path, e))?;
    let signed_by = match o.signer {
        None => None,
        Some(signer) => {
            let sig = ManifestSig {
                key_id: signer.key_id().to_string(),
                signature: signer.sign(&manifest_bytes),
            };
            let mut v = serde_json::to_vec(&sig).map_err(|e| RecorderError::Encode(e.to_string()))?;
            v.push(b'\n');
            let p = o.out.join(MANIFEST_SIG);
            std::fs::write(&p, v).map_err(|e| io_err(&p, e))?;
            Some(sig.key_id)
        }
    };
    Ok(BundleSummary {
        first_seq: first,
        last_seq: last,
        window_last_seq: window_last,
        events,
        sessions: sessions.len(),
        checkpoints: cps.len(),
        unsigned_events: unsigned,
        signed_by,
    })
}

fn jsonl<T: Serialize>(items: &[T]) -> Result<Vec<u8>, RecorderError> {
    let mut out = Vec::new();
    for it in items {
        serde_json::to_writer(&mut out, it).map_err(|e| RecorderError::Encode(e.to_string()))?;
        let _ = out.write_all(b"\n");
    }
    Ok(out)
}

/// Every file under `dir`, as paths relative to it with `/` separators.
fn list_files(dir: &Path) -> Result<Vec<String>, RecorderError> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in
            std::fs::read_dir(&d).map_err(|e| RecorderError::read(format!("{}: {e}", d.display())))?
        {
            let entry = entry.map_err(RecorderError::read)?;
            let p = entry.path();
            // file_type() does not follow symlinks: a linked directory is listed (as a
            // non-regular file), never walked into.
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.push(
                    rel.components()
                        .map(|c| c.as_os_str().to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/"),
                );
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Verify a bundle written by [`export_bundle`]: the manifest's signature and file hashes, then
/// the events' chain against the checkpoints. An `Err` means the bundle could not be read
/// (no manifest, unreadable files).
pub fn verify_bundle(dir: &Path, keys: &PublicKeys) -> Result<VerifyReport, RecorderError> {
    // Only regular files, read without following links (a link could point anywhere on the
    // verifier's machine, a FIFO would block) and up to the size cap.
    let read = |name: &str| -> Result<Option<Vec<u8>>, RecorderError> {
        let p = dir.join(name);
        let bad = |what: String| RecorderError::Corrupt(format!("{}: {what}", p.display()));
        match std::fs::symlink_metadata(&p) {
            Ok(m) if !m.file_type().is_file() => return Err(bad("not a regular file".to_string())),
            Ok(m) if m.len() > MAX_BUNDLE_FILE => {
                return Err(bad(format!(
                    "{} bytes, over the {MAX_BUNDLE_FILE}-byte limit",
                    m.len()
                )));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RecorderError::read(format!("{}: {e}", p.display()))),
        }
        let f = std::fs::File::open(&p).map_err(|e| RecorderError::read(format!("{}: {e}", p.display())))?;
        let mut v = Vec::new();
        f.take(MAX_BUNDLE_FILE + 1)
            .read_to_end(&mut v)
            .map_err(|e| RecorderError::read(format!("{}: {e}", p.display())))?;
        if v.len() as u64 > MAX_BUNDLE_FILE {
            return Err(bad("grew over the size limit while being read".to_string()));
        }
        Ok(Some(v))
    };
    let manifest_bytes = read(MANIFEST)?.ok_or_else(|| RecorderError::NotFound {
        path: dir.join(MANIFEST).display().to_string(),
    })?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| RecorderError::Corrupt(format!("{MANIFEST} is unreadable: {e}")))?;
    if manifest.format != BUNDLE_FORMAT {
        return Err(RecorderError::Corrupt(format!(
            "unsupported bundle format `{}`",
            manifest.format
        )));
    }

    // Checkpoints first: the walk needs them.
    let mut pre = Vec::new();
    let mut checkpoints = Vec::new();
    // A listed file that is not a regular file is reported below, against the manifest.
    let read_listed = |name: &str| match read(name) {
        Ok(v) => Ok(v.unwrap_or_default()),
        Err(RecorderError::Corrupt(_)) => Ok(Vec::new()),
        Err(e) => Err(e),
    };
    for (i, line) in read_listed(CHECKPOINTS)?.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Checkpoint>(line) {
            Ok(c) => checkpoints.push(c),
            Err(_) => pre.push((
                FindingKind::BadSignature,
                None,
                format!("{CHECKPOINTS} line {} is not a checkpoint", i + 1),
            )),
        }
    }
    let first_expected = manifest.chain.first_seq.max(1);
    let mut walk = Walk::new(keys, checkpoints, first_expected);

    // Events, in the order listed; anything listed before an earlier-numbered event is out of
    // place. They are then walked in seq order.
    let events = read_listed(EVENTS)?;
    let mut listed: Vec<(u64, &[u8])> = Vec::new();
    let mut max_seen = 0u64;
    let mut next_pos = first_expected;
    for line in events.split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        #[derive(Deserialize)]
        struct SeqOnly {
            seq: u64,
        }
        let seq = serde_json::from_slice::<SeqOnly>(line)
            .map(|s| s.seq)
            .unwrap_or(next_pos);
        if seq < max_seen {
            pre.push((
                FindingKind::Reordered,
                Some(seq),
                format!("event {seq} is listed after event {max_seen}"),
            ));
        }
        max_seen = max_seen.max(seq);
        next_pos = seq.saturating_add(1);
        listed.push((seq, line));
    }
    listed.sort_by_key(|(seq, _)| *seq);
    for (seq, line) in &listed {
        walk.event(*seq, line);
    }
    let mut report = walk.finish(RecordedHead::NotApplicable);
    if manifest.chain.last_seq > report.last_seq {
        report.push_always(
            FindingKind::Truncated,
            Some(report.last_seq.saturating_add(1)),
            format!(
                "the manifest lists events up to {}, but {EVENTS} ends at {}",
                manifest.chain.last_seq, report.last_seq
            ),
        );
    }
    for (kind, seq, message) in pre {
        report.push_always(kind, seq, message);
    }

    // The manifest's own signature and the files it lists.
    match read(MANIFEST_SIG)? {
        None => report.push_always(
            FindingKind::Unsigned,
            None,
            format!("{MANIFEST} is not signed: the events verify on their own, the derived files do not"),
        ),
        Some(bytes) => match serde_json::from_slice::<ManifestSig>(&bytes) {
            Err(_) => report.push_always(
                FindingKind::BadSignature,
                None,
                format!("{MANIFEST_SIG} is unreadable"),
            ),
            Ok(sig) if !keys.is_empty() => match keys.verify(&sig.key_id, &manifest_bytes, &sig.signature) {
                Ok(()) => report.exported_us = Some(manifest.created_us),
                Err(SignatureError::UnknownKey) => report.push_always(
                    FindingKind::UnknownKey,
                    None,
                    format!("{MANIFEST} was signed by key {}, which was not given", sig.key_id),
                ),
                Err(SignatureError::Invalid) => report.push_always(
                    FindingKind::BadSignature,
                    None,
                    format!("{MANIFEST} does not match its signature (key {})", sig.key_id),
                ),
            },
            Ok(_) => {}
        },
    }
    let mut listed_files = BTreeSet::new();
    for f in &manifest.files {
        listed_files.insert(f.path.clone());
        // Only plain relative paths inside the bundle.
        let safe = !f.path.is_empty()
            && f.path.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
            && !f.path.starts_with('/');
        let content = if safe { read(&f.path) } else { Ok(None) };
        match content {
            Ok(None) => report.push_always(
                FindingKind::FileModified,
                None,
                format!("{} is listed in the manifest but missing", f.path),
            ),
            Err(RecorderError::Corrupt(why)) => report.push_always(
                FindingKind::FileModified,
                None,
                format!(
                    "{} is listed in the manifest but is not what was exported ({why})",
                    f.path
                ),
            ),
            Err(e) => return Err(e),
            Ok(Some(bytes)) => {
                if hex::encode(Sha256::digest(&bytes)) != f.sha256 || bytes.len() as u64 != f.bytes {
                    report.push_always(
                        FindingKind::FileModified,
                        None,
                        format!("{} differs from the manifest", f.path),
                    );
                }
            }
        }
    }
    for f in list_files(dir)? {
        if f != MANIFEST && f != MANIFEST_SIG && !listed_files.contains(&f) {
            report.push_always(
                FindingKind::Unsigned,
                None,
                format!("{f} is not listed in the manifest"),
            );
        }
    }
    Ok(report)
}
