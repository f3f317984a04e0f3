//! Keeping result rows for the record (`[recorder.results]`): the relay makes a capture per
//! operation and pushes each DataRow the client receives until the limit.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

/// DataRow body with these text cells.
fn data_row(cells: &[&str]) -> Vec<u8> {
    let mut b = (cells.len() as i16).to_be_bytes().to_vec();
    for c in cells {
        b.extend_from_slice(&(c.len() as i32).to_be_bytes());
        b.extend_from_slice(c.as_bytes());
    }
    b
}

/// Keeping result rows for the record (`[recorder.results]`): per operation a capture is made
/// and each DataRow the client receives is pushed until the limit.
fn bench_results(c: &mut Criterion) {
    use gatehouse_pg::results::Capture;
    let mut g = c.benchmark_group("results");
    // pgbench's SELECT: one row, one column, per operation.
    let one = data_row(&["-2319"]);
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_row_statement", |b| {
        b.iter(|| {
            let mut cap = Capture::new(vec!["abalance".into()], Vec::new(), vec![false]);
            cap.push(black_box(&one), 16 * 1024);
            black_box(cap.into_rows())
        })
    });
    // A wide row (20 columns of ~12 bytes), pushed into an operation still under the limit.
    let cols: Vec<String> = (0..20).map(|i| format!("value-{i:06}")).collect();
    let wide = data_row(&cols.iter().map(String::as_str).collect::<Vec<_>>());
    g.bench_function("wide_row", |b| {
        b.iter_batched(
            || Capture::new(Vec::new(), Vec::new(), Vec::new()),
            |mut cap| {
                cap.push(black_box(&wide), 16 * 1024);
                cap
            },
            BatchSize::SmallInput,
        )
    });
    // Past the limit: a row costs a flag check.
    g.bench_function("row_past_the_limit", |b| {
        let mut cap = Capture::new(Vec::new(), Vec::new(), Vec::new());
        cap.push(&wide, 1);
        b.iter(|| cap.push(black_box(&wide), 1))
    });
    g.finish();
}

criterion_group!(benches, bench_results);
criterion_main!(benches);
