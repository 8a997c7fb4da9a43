//! criterion micro-benches: route matching at 10 / 1,000 / 10,000 routes (the matched route is
//! the last one), the sticky bucket pick, and compiling + publishing a 10,000-route table.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use switchyard::config::{parse_toml, TableDoc};
use switchyard::routing::split::{bucket_of, Distribution, BUCKETS};
use switchyard::routing::{compile, RouteTable, TableStore};

/// A table of `n` routes `/svcN/*` plus a catch-all, each to one of two upstreams.
fn table_text(n: usize) -> String {
    let mut s = String::from("[upstreams.legacy]\naddrs = [\"127.0.0.1:1\"]\n[upstreams.new]\naddrs = [\"127.0.0.1:2\"]\n");
    for i in 0..n {
        s.push_str(&format!(
            "[[routes]]\nid = \"r{i}\"\npath = \"/svc{i}/*\"\nsplit = {{ new = 10, legacy = 90 }}\nsticky = \"cookie:sid\"\nfallback = \"legacy\"\n"
        ));
    }
    s
}

fn doc(n: usize) -> TableDoc {
    TableDoc::single(
        "bench.toml",
        parse_toml("bench.toml", &table_text(n)).expect("parses"),
        None,
    )
}

fn matching(c: &mut Criterion) {
    let mut g = c.benchmark_group("match");
    for n in [10usize, 1_000, 10_000] {
        let table = compile(&doc(n)).expect("compiles").table;
        let path = format!("/svc{}/users/42/profile", n - 1);
        assert_eq!(
            table.match_request("example.com", path.as_bytes(), &http::Method::GET),
            Some(n - 1)
        );
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                table.match_request(
                    black_box("example.com"),
                    black_box(path.as_bytes()),
                    &http::Method::GET,
                )
            })
        });
    }
    g.finish();
}

fn sticky(c: &mut Criterion) {
    let d = Distribution::new(&[(0, 1000), (1, BUCKETS - 1000)], vec![1]);
    c.bench_function("sticky_bucket_pick", |b| {
        b.iter(|| {
            d.pick(bucket_of(black_box(
                b"sid-4f9a2c7e-1b3d-4e5f-8a9b-0c1d2e3f4a5b",
            )))
        })
    });
}

fn compile_publish(c: &mut Criterion) {
    let d = doc(10_000);
    let store = TableStore::new(RouteTable::empty());
    c.bench_function("compile_publish_10000", |b| {
        b.iter(|| store.publish(compile(black_box(&d)).expect("compiles").table))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = matching, sticky, compile_publish
}
criterion_main!(benches);
