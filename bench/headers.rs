//! criterion micro-benches of the header edits the proxy makes on every request, on pingora's
//! `RequestHeader` (case-preserving, as parsed from the wire): the way
//! `ProxyHttp::upstream_request_filter` did them first (names as `&str`, values as `String`), and
//! the cheaper forms bench/RESULTS.md suggested (finding 1), which `src/proxy/mod.rs` now uses. The request is cloned outside the
//! timed part, so only the edits are measured.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::RequestHeader;

/// Hop-by-hop request headers, as `src/proxy/mod.rs` lists them.
const HOP_BY_HOP: [&str; 5] = [
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "proxy-authenticate",
];

static HOP_BY_HOP_NAMES: [HeaderName; 5] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("te"),
    HeaderName::from_static("trailer"),
    HeaderName::from_static("proxy-authenticate"),
];
static SECRET: HeaderName = HeaderName::from_static("x-switchyard-secret");
static OVERRIDE: HeaderName = HeaderName::from_static("x-switchyard-upstream");
static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
static XFH: HeaderName = HeaderName::from_static("x-forwarded-host");

/// A browser-like request as pingora's parser leaves it (with the case map).
fn client_request() -> RequestHeader {
    let mut r = RequestHeader::build("GET", b"/api/users/42", Some(8)).expect("request");
    for (k, v) in [
        ("Host", "shop.example.com"),
        (
            "User-Agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
        ),
        ("Accept", "text/html,application/xhtml+xml"),
        ("Accept-Language", "en-GB,en;q=0.5"),
        ("Accept-Encoding", "gzip, deflate, br"),
        ("Cookie", "sid=user-42-4f9a2c7e; theme=dark"),
    ] {
        r.append_header(k, v).expect("header");
    }
    r
}

/// What `upstream_request_filter` does today, minus the path rewrite (none configured).
fn as_now(req: &mut RequestHeader, client_ip: IpAddr) {
    let host = req
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let conn: Vec<String> = req
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for h in HOP_BY_HOP {
        req.remove_header(h);
    }
    if conn.is_empty() {
        req.remove_header(&header::CONNECTION);
        req.remove_header(&header::UPGRADE);
    }
    req.remove_header("x-switchyard-secret");
    req.remove_header("x-switchyard-upstream");
    let xff = match req
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) if !prev.is_empty() => format!("{prev}, {client_ip}"),
        _ => client_ip.to_string(),
    };
    req.insert_header("x-forwarded-for", xff).expect("xff");
    req.insert_header("x-forwarded-proto", "http").expect("xfp");
    req.insert_header("x-forwarded-host", host).expect("xfh");
}

/// Writes an IPv4 address as text into `buf`; returns the length.
fn write_ipv4(a: Ipv4Addr, buf: &mut [u8; 15]) -> usize {
    let mut n = 0;
    for (i, o) in a.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if o >= 100 {
            buf[n] = b'0' + o / 100;
            n += 1;
        }
        if o >= 10 {
            buf[n] = b'0' + (o / 10) % 10;
            n += 1;
        }
        buf[n] = b'0' + o % 10;
        n += 1;
    }
    n
}

/// The same edits with the suggested forms: static names, remove only what is there, a static
/// value, the client's Host value reused, the address written without `fmt`.
fn suggested(req: &mut RequestHeader, client_ip: IpAddr) {
    let has_connection = req.headers.contains_key(header::CONNECTION);
    for h in &HOP_BY_HOP_NAMES {
        if req.headers.contains_key(h) {
            req.remove_header(h);
        }
    }
    if has_connection {
        req.remove_header(&header::CONNECTION);
        req.remove_header(&header::UPGRADE);
    }
    for h in [&SECRET, &OVERRIDE] {
        if req.headers.contains_key(h) {
            req.remove_header(h);
        }
    }
    let xff = match (client_ip, req.headers.get(&XFF)) {
        (IpAddr::V4(a), None) => {
            let mut buf = [0u8; 15];
            let n = write_ipv4(a, &mut buf);
            HeaderValue::from_bytes(&buf[..n]).expect("ip")
        }
        (ip, prev) => {
            let s = match prev.and_then(|v| v.to_str().ok()) {
                Some(p) if !p.is_empty() => format!("{p}, {ip}"),
                _ => ip.to_string(),
            };
            HeaderValue::try_from(s).expect("xff")
        }
    };
    let host = req
        .headers
        .get(header::HOST)
        .filter(|v| {
            !v.as_bytes()
                .iter()
                .any(|b| b.is_ascii_uppercase() || *b == b':')
        })
        .cloned();
    req.insert_header(XFF.clone(), xff).expect("xff");
    req.insert_header(XFP.clone(), HeaderValue::from_static("http"))
        .expect("xfp");
    if let Some(h) = host {
        req.insert_header(XFH.clone(), h).expect("xfh");
    }
}

fn upstream_headers(c: &mut Criterion) {
    let base = client_request();
    let ip = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    let mut a = base.clone();
    let mut b = base.clone();
    as_now(&mut a, ip);
    suggested(&mut b, ip);
    let wire = |r: &RequestHeader| {
        let mut v = Vec::new();
        r.header_to_h1_wire(&mut v);
        v
    };
    assert_eq!(wire(&a), wire(&b), "both forms send the same headers");

    let mut g = c.benchmark_group("upstream_headers");
    g.bench_function("as_now", |bn| {
        bn.iter_batched_ref(
            || base.clone(),
            |r| as_now(black_box(r), ip),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("suggested", |bn| {
        bn.iter_batched_ref(
            || base.clone(),
            |r| suggested(black_box(r), ip),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = upstream_headers
}
criterion_main!(benches);
