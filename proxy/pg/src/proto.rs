//! PostgreSQL v3 wire protocol: framing, the few message bodies Gatehouse inspects, and
//! builders for the messages it originates.
//!
//! Messages are kept as raw bytes and forwarded untouched; only the header (type + length) is
//! read for every message, bodies only where the gateway must understand them.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest startup packet accepted (PostgreSQL uses the same limit).
pub const MAX_STARTUP_LEN: usize = 10_000;
/// Largest regular message accepted (PostgreSQL's `PQ_LARGE_MESSAGE_LIMIT`).
pub const MAX_MESSAGE_LEN: usize = 0x3fff_ffff;

pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;
pub const PROTOCOL_3_0: u32 = 196_608;

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("connection closed")]
    Eof,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid message length {0}")]
    BadLength(usize),
    #[error("malformed {0} message")]
    Malformed(&'static str),
}

/// The first packet a client sends.
#[derive(Debug)]
pub enum StartupPacket {
    Ssl,
    GssEnc,
    Cancel {
        pid: i32,
        key: i32,
    },
    Startup {
        version: u32,
        params: Vec<(String, String)>,
    },
    Unsupported(u32),
}

/// Read one length-prefixed, untyped startup packet, exactly: no byte past it is consumed
/// (bytes after an SSLRequest must be the TLS handshake, never buffered plaintext).
pub async fn read_startup<R: AsyncRead + Unpin>(r: &mut R) -> Result<StartupPacket, ProtoError> {
    let mut len_buf = [0u8; 4];
    match r.read_exact(&mut len_buf).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(ProtoError::Eof),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len_buf) as usize;
    if !(8..=MAX_STARTUP_LEN).contains(&len) {
        return Err(ProtoError::BadLength(len));
    }
    let mut body = vec![0u8; len - 4];
    r.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ProtoError::Eof
        } else {
            e.into()
        }
    })?;
    let mut b = &body[..];
    let code = b.get_u32();
    Ok(match code {
        SSL_REQUEST if len == 8 => StartupPacket::Ssl,
        GSSENC_REQUEST if len == 8 => StartupPacket::GssEnc,
        CANCEL_REQUEST if len == 16 => StartupPacket::Cancel {
            pid: b.get_i32(),
            key: b.get_i32(),
        },
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => return Err(ProtoError::Malformed("startup")),
        v if v >> 16 == 3 => {
            let mut params = Vec::new();
            loop {
                let name = read_cstr(&mut b).ok_or(ProtoError::Malformed("startup"))?;
                if name.is_empty() {
                    break;
                }
                let value = read_cstr(&mut b).ok_or(ProtoError::Malformed("startup"))?;
                params.push((name, value));
            }
            StartupPacket::Startup { version: v, params }
        }
        other => StartupPacket::Unsupported(other),
    })
}

/// Read a NUL-terminated string and advance past it.
pub fn read_cstr(b: &mut &[u8]) -> Option<String> {
    let pos = b.iter().position(|&c| c == 0)?;
    let s = String::from_utf8_lossy(b.get(..pos)?).into_owned();
    *b = b.get(pos + 1..)?;
    Some(s)
}

/// Borrowing variant of [`read_cstr`].
pub fn cstr<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let pos = b.iter().position(|&c| c == 0)?;
    let s = b.get(..pos)?;
    *b = b.get(pos + 1..)?;
    Some(s)
}

/// One complete typed message found at the front of a buffer.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub tag: u8,
    /// Total length including the tag byte.
    pub len: usize,
}

/// Inspect the buffer front: `Ok(Some(frame))` if a whole message is there, `Ok(None)` if more
/// bytes are needed.
pub fn peek_frame(buf: &[u8], max_len: usize) -> Result<Option<Frame>, ProtoError> {
    let Some(hdr) = buf.get(..5) else {
        return Ok(None);
    };
    let tag = hdr[0];
    let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
    if len < 4 || len > max_len {
        return Err(ProtoError::BadLength(len));
    }
    if buf.len() < len + 1 {
        return Ok(None);
    }
    Ok(Some(Frame { tag, len: len + 1 }))
}

/// Read until at least one whole message is buffered, then split it off.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<(u8, Bytes), ProtoError> {
    loop {
        if let Some(f) = peek_frame(buf, max_len)? {
            let msg = buf.split_to(f.len).freeze();
            return Ok((f.tag, msg));
        }
        buf.reserve(8192);
        if r.read_buf(buf).await? == 0 {
            return Err(ProtoError::Eof);
        }
    }
}

/// Body of a whole message (after tag and length).
pub fn body(msg: &[u8]) -> &[u8] {
    msg.get(5..).unwrap_or(&[])
}

// ---------- message builders ----------

fn begin(out: &mut BytesMut, tag: u8) -> usize {
    out.put_u8(tag);
    let at = out.len();
    out.put_u32(0);
    at
}

fn finish(out: &mut BytesMut, at: usize) {
    let len = (out.len() - at) as u32;
    if let Some(slot) = out.get_mut(at..at + 4) {
        slot.copy_from_slice(&len.to_be_bytes());
    }
}

pub fn put_cstr(out: &mut BytesMut, s: &str) {
    // NUL bytes cannot be represented; strip them rather than truncating silently mid-string.
    out.extend(s.bytes().filter(|&b| b != 0));
    out.put_u8(0);
}

/// Severity of a gateway-originated error or notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    Notice,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Notice => "NOTICE",
        }
    }
}

/// ErrorResponse (`E`) or NoticeResponse (`N`) with the usual fields.
pub fn error_msg(out: &mut BytesMut, sev: Severity, code: &str, message: &str, detail: Option<&str>) {
    let at = begin(out, if sev == Severity::Notice { b'N' } else { b'E' });
    for (f, v) in [
        (b'S', sev.as_str()),
        (b'V', sev.as_str()),
        (b'C', code),
        (b'M', message),
    ] {
        out.put_u8(f);
        put_cstr(out, v);
    }
    if let Some(d) = detail {
        out.put_u8(b'D');
        put_cstr(out, d);
    }
    out.put_u8(0);
    finish(out, at);
}

pub fn auth_request(out: &mut BytesMut, code: i32, data: &[u8]) {
    let at = begin(out, b'R');
    out.put_i32(code);
    out.extend_from_slice(data);
    finish(out, at);
}

pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    let at = begin(out, b'S');
    put_cstr(out, name);
    put_cstr(out, value);
    finish(out, at);
}

pub fn backend_key_data(out: &mut BytesMut, pid: i32, key: i32) {
    let at = begin(out, b'K');
    out.put_i32(pid);
    out.put_i32(key);
    finish(out, at);
}

pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    let at = begin(out, b'Z');
    out.put_u8(status);
    finish(out, at);
}

pub fn negotiate_protocol_version(out: &mut BytesMut, minor: i32, unrecognized: &[String]) {
    let at = begin(out, b'v');
    out.put_i32(minor);
    out.put_i32(unrecognized.len() as i32);
    for o in unrecognized {
        put_cstr(out, o);
    }
    finish(out, at);
}

pub fn query(out: &mut BytesMut, sql: &str) {
    let at = begin(out, b'Q');
    put_cstr(out, sql);
    finish(out, at);
}

pub fn execute(out: &mut BytesMut, portal: &str, max_rows: i32) {
    let at = begin(out, b'E');
    put_cstr(out, portal);
    out.put_i32(max_rows);
    finish(out, at);
}

pub fn sync(out: &mut BytesMut) {
    let at = begin(out, b'S');
    finish(out, at);
}

pub fn terminate(out: &mut BytesMut) {
    let at = begin(out, b'X');
    finish(out, at);
}

pub fn copy_fail(out: &mut BytesMut, reason: &str) {
    let at = begin(out, b'f');
    put_cstr(out, reason);
    finish(out, at);
}

pub fn password(out: &mut BytesMut, data: &[u8]) {
    let at = begin(out, b'p');
    out.extend_from_slice(data);
    finish(out, at);
}

pub fn sasl_initial(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    let at = begin(out, b'p');
    put_cstr(out, mechanism);
    out.put_i32(data.len() as i32);
    out.extend_from_slice(data);
    finish(out, at);
}

pub fn startup(out: &mut BytesMut, params: &[(String, String)]) {
    let at = out.len();
    out.put_u32(0);
    out.put_u32(PROTOCOL_3_0);
    for (k, v) in params {
        put_cstr(out, k);
        put_cstr(out, v);
    }
    out.put_u8(0);
    finish(out, at);
}

pub fn ssl_request(out: &mut BytesMut) {
    out.put_u32(8);
    out.put_u32(SSL_REQUEST);
}

pub fn cancel_request(out: &mut BytesMut, pid: i32, key: i32) {
    out.put_u32(16);
    out.put_u32(CANCEL_REQUEST);
    out.put_i32(pid);
    out.put_i32(key);
}

// ---------- bodies the gateway reads ----------

/// Fields of an ErrorResponse/NoticeResponse body: (field type, value).
pub fn error_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut b = body;
    let mut out = Vec::new();
    while let Some((&f, rest)) = b.split_first() {
        if f == 0 {
            break;
        }
        b = rest;
        match read_cstr(&mut b) {
            Some(v) => out.push((f, v)),
            None => break,
        }
    }
    out
}

pub fn error_field(fields: &[(u8, String)], f: u8) -> Option<&str> {
    fields.iter().find(|(k, _)| *k == f).map(|(_, v)| v.as_str())
}

/// Parse: (statement name, query text).
pub fn parse_parse(body: &[u8]) -> Result<(String, String), ProtoError> {
    let mut b = body;
    let name = read_cstr(&mut b).ok_or(ProtoError::Malformed("Parse"))?;
    let sql = read_cstr(&mut b).ok_or(ProtoError::Malformed("Parse"))?;
    Ok((name, sql))
}

/// Bind: (portal name, statement name).
pub fn parse_bind(body: &[u8]) -> Result<(String, String), ProtoError> {
    let mut b = body;
    let portal = read_cstr(&mut b).ok_or(ProtoError::Malformed("Bind"))?;
    let stmt = read_cstr(&mut b).ok_or(ProtoError::Malformed("Bind"))?;
    Ok((portal, stmt))
}

/// Execute: portal name.
pub fn parse_execute(body: &[u8]) -> Result<String, ProtoError> {
    let mut b = body;
    let portal = read_cstr(&mut b).ok_or(ProtoError::Malformed("Execute"))?;
    if b.len() != 4 {
        return Err(ProtoError::Malformed("Execute"));
    }
    Ok(portal)
}

/// Close / Describe: (`S` or `P`, name).
pub fn parse_target(body: &[u8], what: &'static str) -> Result<(u8, String), ProtoError> {
    let (&kind, mut b) = body.split_first().ok_or(ProtoError::Malformed(what))?;
    if kind != b'S' && kind != b'P' {
        return Err(ProtoError::Malformed(what));
    }
    let name = read_cstr(&mut b).ok_or(ProtoError::Malformed(what))?;
    Ok((kind, name))
}

/// Query: the SQL text.
pub fn parse_query(body: &[u8]) -> Result<String, ProtoError> {
    let mut b = body;
    read_cstr(&mut b).ok_or(ProtoError::Malformed("Query"))
}

fn take_i16(b: &mut &[u8]) -> Option<i16> {
    let (h, t) = b.split_first_chunk::<2>()?;
    *b = t;
    Some(i16::from_be_bytes(*h))
}

fn take_i32(b: &mut &[u8]) -> Option<i32> {
    let (h, t) = b.split_first_chunk::<4>()?;
    *b = t;
    Some(i32::from_be_bytes(*h))
}

fn take_u32(b: &mut &[u8]) -> Option<u32> {
    let (h, t) = b.split_first_chunk::<4>()?;
    *b = t;
    Some(u32::from_be_bytes(*h))
}

/// Bind: the result-column format codes (empty = all text; one = applies to all).
pub fn bind_result_formats(body: &[u8]) -> Result<Vec<i16>, ProtoError> {
    let bad = || ProtoError::Malformed("Bind");
    let mut b = body;
    cstr(&mut b).ok_or_else(bad)?;
    cstr(&mut b).ok_or_else(bad)?;
    let nparam_formats = take_i16(&mut b).ok_or_else(bad)?;
    for _ in 0..nparam_formats.max(0) {
        take_i16(&mut b).ok_or_else(bad)?;
    }
    let nparams = take_i16(&mut b).ok_or_else(bad)?;
    for _ in 0..nparams.max(0) {
        let len = take_i32(&mut b).ok_or_else(bad)?;
        if len > 0 {
            b = b.get(len as usize..).ok_or_else(bad)?;
        }
    }
    let n = take_i16(&mut b).ok_or_else(bad)?;
    (0..n.max(0)).map(|_| take_i16(&mut b).ok_or_else(bad)).collect()
}

/// A Bind's parameter values as a person should read them: `'text'` (quotes doubled, cut at
/// 200 characters), `NULL`, or `<binary N bytes: 0x…>`.
pub fn bind_parameters(body: &[u8]) -> Result<Vec<String>, ProtoError> {
    let bad = || ProtoError::Malformed("Bind");
    let mut b = body;
    cstr(&mut b).ok_or_else(bad)?;
    cstr(&mut b).ok_or_else(bad)?;
    let nformats = take_i16(&mut b).ok_or_else(bad)?;
    let formats: Vec<i16> = (0..nformats.max(0))
        .map(|_| take_i16(&mut b).ok_or_else(bad))
        .collect::<Result<_, _>>()?;
    let nparams = take_i16(&mut b).ok_or_else(bad)?;
    let mut out = Vec::with_capacity(nparams.max(0) as usize);
    for i in 0..nparams.max(0) as usize {
        let len = take_i32(&mut b).ok_or_else(bad)?;
        if len < 0 {
            out.push("NULL".to_string());
            continue;
        }
        let value = b.get(..len as usize).ok_or_else(bad)?;
        b = b.get(len as usize..).ok_or_else(bad)?;
        let binary = match formats.len() {
            0 => false,
            1 => formats.first() == Some(&1),
            _ => formats.get(i) == Some(&1),
        };
        // A binary value is shown as text when it reads as text (the binary form of text types
        // is their UTF-8), otherwise in hex: the types are not known at Bind.
        let text = std::str::from_utf8(value)
            .ok()
            .filter(|t| !binary || !t.chars().any(char::is_control));
        out.push(match text {
            Some(t) => {
                let mut shown: String = t.chars().take(200).collect();
                if t.chars().count() > 200 {
                    shown.push('…');
                }
                format!("'{}'", shown.replace('\'', "''"))
            }
            None if binary => {
                let head = value.get(..32).unwrap_or(value);
                let more = if value.len() > 32 { "…" } else { "" };
                format!("<binary {len} bytes: 0x{}{more}>", hex::encode(head))
            }
            None => format!("<{len} bytes, not UTF-8>"),
        });
    }
    Ok(out)
}

/// One RowDescription field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDesc {
    pub name: String,
    pub table_oid: u32,
    pub column: i16,
    pub type_oid: u32,
    /// 0 text, 1 binary.
    pub format: i16,
}

/// RowDescription body → its fields.
pub fn parse_row_description(body: &[u8]) -> Result<Vec<FieldDesc>, ProtoError> {
    let bad = || ProtoError::Malformed("RowDescription");
    let mut b = body;
    let n = take_i16(&mut b).ok_or_else(bad)?;
    let mut fields = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n.max(0) {
        let name = read_cstr(&mut b).ok_or_else(bad)?;
        let table_oid = take_u32(&mut b).ok_or_else(bad)?;
        let column = take_i16(&mut b).ok_or_else(bad)?;
        let type_oid = take_u32(&mut b).ok_or_else(bad)?;
        take_i16(&mut b).ok_or_else(bad)?; // type size
        take_i32(&mut b).ok_or_else(bad)?; // type modifier
        let format = take_i16(&mut b).ok_or_else(bad)?;
        fields.push(FieldDesc {
            name,
            table_oid,
            column,
            type_oid,
            format,
        });
    }
    Ok(fields)
}

/// DataRow body → its cells (`None` = NULL), borrowed.
pub fn parse_data_row(body: &[u8]) -> Result<Vec<Option<&[u8]>>, ProtoError> {
    let bad = || ProtoError::Malformed("DataRow");
    let mut b = body;
    let n = take_i16(&mut b).ok_or_else(bad)?;
    let mut cells = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n.max(0) {
        let len = take_i32(&mut b).ok_or_else(bad)?;
        if len < 0 {
            cells.push(None);
        } else {
            let (v, rest) = b.split_at_checked(len as usize).ok_or_else(bad)?;
            cells.push(Some(v));
            b = rest;
        }
    }
    Ok(cells)
}

/// Build a DataRow.
pub fn data_row<'a>(out: &mut BytesMut, cells: impl ExactSizeIterator<Item = Option<&'a [u8]>>) {
    let at = begin(out, b'D');
    out.put_i16(cells.len() as i16);
    for c in cells {
        match c {
            None => out.put_i32(-1),
            Some(v) => {
                out.put_i32(v.len() as i32);
                out.extend_from_slice(v);
            }
        }
    }
    finish(out, at);
}

/// CommandComplete tag → affected/returned row count (last word when numeric).
pub fn tag_rows(tag: &str) -> u64 {
    tag.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    #[test]
    fn bind_parameters_are_rendered_for_people() {
        let mut body = Vec::new();
        body.extend_from_slice(b"p\0s\0");
        body.extend_from_slice(&4i16.to_be_bytes());
        for f in [0i16, 1, 1, 0] {
            body.extend_from_slice(&f.to_be_bytes());
        }
        body.extend_from_slice(&4i16.to_be_bytes());
        body.extend_from_slice(&6i32.to_be_bytes());
        body.extend_from_slice(b"o'neil");
        body.extend_from_slice(&8i32.to_be_bytes());
        body.extend_from_slice(&7i64.to_be_bytes());
        body.extend_from_slice(&2i32.to_be_bytes());
        body.extend_from_slice(b"ok");
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        let shown = bind_parameters(&body).unwrap();
        assert_eq!(
            shown,
            vec![
                "'o''neil'",
                "<binary 8 bytes: 0x0000000000000007>",
                "'ok'",
                "NULL"
            ]
        );
        assert!(bind_parameters(&body[..body.len() - 9]).is_err(), "truncated");
    }

    use super::*;

    #[tokio::test]
    async fn startup_roundtrip() {
        let mut out = BytesMut::new();
        startup(
            &mut out,
            &[("user".into(), "a".into()), ("database".into(), "d".into())],
        );
        let mut r = &out[..];
        match read_startup(&mut r).await.unwrap() {
            StartupPacket::Startup { version, params } => {
                assert_eq!(version, PROTOCOL_3_0);
                assert_eq!(params[0], ("user".into(), "a".into()));
                assert_eq!(params.len(), 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn startup_rejects_bad_lengths() {
        let mut r: &[u8] = &[0, 0, 0, 3, 1, 2, 3];
        assert!(matches!(
            read_startup(&mut r).await,
            Err(ProtoError::BadLength(3))
        ));
        let mut r: &[u8] = &[0, 1, 0, 0];
        assert!(matches!(
            read_startup(&mut r).await,
            Err(ProtoError::BadLength(_))
        ));
        let mut r: &[u8] = &[0, 0, 0, 20, 0, 3];
        assert!(matches!(read_startup(&mut r).await, Err(ProtoError::Eof)));
    }

    #[test]
    fn frames_and_errors() {
        let mut out = BytesMut::new();
        error_msg(&mut out, Severity::Error, "42501", "nope", Some("d"));
        ready_for_query(&mut out, b'I');
        let f = peek_frame(&out, MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!(f.tag, b'E');
        let fields = error_fields(body(&out[..f.len]));
        assert_eq!(error_field(&fields, b'C'), Some("42501"));
        assert_eq!(error_field(&fields, b'M'), Some("nope"));
        let rest = &out[f.len..];
        let f2 = peek_frame(rest, MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!((f2.tag, f2.len), (b'Z', 6));
        assert!(peek_frame(&rest[..3], MAX_MESSAGE_LEN).unwrap().is_none());
        assert!(peek_frame(&[b'Q', 0, 0, 0, 1], MAX_MESSAGE_LEN).is_err());
    }

    #[test]
    fn tags() {
        assert_eq!(tag_rows("SELECT 12"), 12);
        assert_eq!(tag_rows("INSERT 0 3"), 3);
        assert_eq!(tag_rows("BEGIN"), 0);
    }
}
