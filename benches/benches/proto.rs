//! PostgreSQL v3 framing as the relay does it: find whole messages (`peek_frame`), pick out the
//! few bodies the gateway reads (Parse, Bind, Execute, Close, CommandComplete), forward the
//! rest untouched.

use std::hint::black_box;

use bytes::{BufMut, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use gatehouse_pg::proto;

/// The allocator the `gatehouse` binary runs with (see its `main.rs`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn msg(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_u32((body.len() + 4) as u32);
    out.put_slice(body);
}

fn cstr(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(s.as_bytes());
    b.push(0);
}

/// One pgbench `-M extended` transaction (libpq `PQsendQueryParams`): Parse, Bind, Describe
/// portal, Execute, Sync.
fn extended_batch(out: &mut BytesMut, aid: u32) {
    let mut p = Vec::new();
    cstr(&mut p, "");
    cstr(&mut p, "SELECT abalance FROM pgbench_accounts WHERE aid = $1;");
    p.extend_from_slice(&0u16.to_be_bytes());
    msg(out, b'P', &p);
    bind(out, "", aid);
    msg(out, b'D', b"P\0");
    msg(out, b'E', b"\0\0\0\0\0");
    msg(out, b'S', b"");
}

fn bind(out: &mut BytesMut, stmt: &str, aid: u32) {
    let v = aid.to_string();
    let mut b = Vec::new();
    cstr(&mut b, "");
    cstr(&mut b, stmt);
    b.extend_from_slice(&0u16.to_be_bytes()); // parameter formats: all text
    b.extend_from_slice(&1u16.to_be_bytes());
    b.extend_from_slice(&(v.len() as u32).to_be_bytes());
    b.extend_from_slice(v.as_bytes());
    b.extend_from_slice(&0u16.to_be_bytes()); // result formats: all text
    msg(out, b'B', &b);
}

/// What the relay's client-to-upstream loop does per message, minus the guard.
fn frontend_loop(mut buf: BytesMut) -> usize {
    let mut seen = 0;
    while let Ok(Some(f)) = proto::peek_frame(&buf, proto::MAX_MESSAGE_LEN) {
        let m = buf.split_to(f.len);
        let body = proto::body(&m);
        let ok = match f.tag {
            b'Q' => proto::parse_query(body).is_ok(),
            b'P' => proto::parse_parse(body).is_ok(),
            b'B' => proto::parse_bind(body).is_ok(),
            b'E' => proto::parse_execute(body).is_ok(),
            b'C' => proto::parse_target(body, "Close").is_ok(),
            _ => true,
        };
        seen += usize::from(ok);
    }
    seen
}

/// What the relay's upstream-to-client loop does per message: frame, count DataRows, read the
/// CommandComplete tag.
fn backend_loop(buf: &[u8]) -> (u64, u64) {
    let (mut pos, mut rows, mut tagged) = (0usize, 0u64, 0u64);
    while let Ok(Some(f)) = proto::peek_frame(buf.get(pos..).unwrap_or(&[]), proto::MAX_MESSAGE_LEN) {
        let start = pos;
        pos += f.len;
        let body = buf.get(start + 5..pos).unwrap_or(&[]);
        match f.tag {
            b'D' => rows += 1,
            b'C' => {
                let mut b = body;
                tagged += proto::tag_rows(&proto::read_cstr(&mut b).unwrap_or_default());
            }
            _ => {}
        }
    }
    (rows, tagged)
}

fn bench_frontend(c: &mut Criterion) {
    let mut g = c.benchmark_group("frontend");
    // 16 pipelined transactions of each kind, as one read from the socket.
    let mut ext = BytesMut::new();
    for i in 0..16 {
        extended_batch(&mut ext, 48_213 + i);
    }
    let mut prep = BytesMut::new();
    for i in 0..16 {
        bind(&mut prep, "P_0", 48_213 + i);
        msg(&mut prep, b'D', b"P\0");
        msg(&mut prep, b'E', b"\0\0\0\0\0");
        msg(&mut prep, b'S', b"");
    }
    let mut simple = BytesMut::new();
    for i in 0..16 {
        proto::query(
            &mut simple,
            &format!(
                "SELECT abalance FROM pgbench_accounts WHERE aid = {};",
                48_213 + i
            ),
        );
    }
    for (name, buf, n) in [
        ("extended_16_tx", &ext, 16 * 5),
        ("prepared_16_tx", &prep, 16 * 4),
        ("simple_16_tx", &simple, 16),
    ] {
        g.throughput(Throughput::Elements(n));
        g.bench_function(name, |b| {
            b.iter_batched(|| buf.clone(), frontend_loop, BatchSize::SmallInput)
        });
    }
    g.finish();
}

fn bench_backend(c: &mut Criterion) {
    let mut g = c.benchmark_group("backend");
    let mut buf = BytesMut::new();
    // RowDescription (one int4 column), 1000 DataRows, CommandComplete, ReadyForQuery.
    let mut rd = Vec::new();
    rd.extend_from_slice(&1u16.to_be_bytes());
    cstr(&mut rd, "abalance");
    rd.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 23, 0, 4, 255, 255, 255, 255, 0, 0]);
    msg(&mut buf, b'T', &rd);
    for i in 0..1000u32 {
        let v = (i * 37 % 5000).to_string();
        let mut d = Vec::new();
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&(v.len() as u32).to_be_bytes());
        d.extend_from_slice(v.as_bytes());
        msg(&mut buf, b'D', &d);
    }
    msg(&mut buf, b'C', b"SELECT 1000\0");
    msg(&mut buf, b'Z', b"I");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("result_1000_rows", |b| b.iter(|| backend_loop(black_box(&buf))));
    g.finish();
}

criterion_group!(benches, bench_frontend, bench_backend);
criterion_main!(benches);
