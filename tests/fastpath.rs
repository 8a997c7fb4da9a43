//! The fast path against the stock path: generated raw requests (framing combinations,
//! duplicate lengths, obs-fold, absolute-form targets, Host mismatches, pipelined pairs) sent
//! through `serve --engine fast` and `serve --engine stock` must reach the origin as the same
//! bytes and get the same statuses back.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An origin that records every request as the bytes it received (head and body) and answers
/// each with a small fixed response, keeping the connection.
struct RawOrigin {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Length of the first complete request in `buf` (head plus body framed by Content-Length or
/// chunked), if it is all there.
fn request_len(buf: &[u8]) -> Option<usize> {
    let head = find(buf, b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
    if text.contains("\r\ntransfer-encoding:") {
        let end = find(&buf[head..], b"0\r\n\r\n")? + 5;
        return Some(head + end);
    }
    let cl = text
        .split("\r\n")
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= head + cl).then_some(head + cl)
}

/// The next whole request on `s` (bytes past it stay in `buf`); `None` once the client is gone.
async fn next_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(n) = request_len(buf) {
            return Some(buf.drain(..n).collect());
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

impl RawOrigin {
    async fn start() -> RawOrigin {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let rec = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let rec = rec.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some(req) = next_request(&mut s, &mut buf).await {
                        let head_req = req.starts_with(b"HEAD ");
                        rec.lock().unwrap().push(req);
                        let resp: &[u8] = if head_req {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
                        } else {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                        };
                        if s.write_all(resp).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        RawOrigin { addr, seen }
    }

    fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn routes(origin: &RawOrigin) -> tempfile::TempDir {
    routes_dir(&format!(
        "[upstreams.o]\naddrs = [\"{}\"]\n\
         [[routes]]\nid = \"all\"\npath = \"*\"\nto = \"o\"\n",
        origin.addr
    ))
}

/// Sends `raw` on a new connection and returns the statuses of every response read until
/// the proxy closes the connection or stays quiet for a moment.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> Vec<u16> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_millis(400), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&out);
    text.match_indices("HTTP/1.")
        .filter(|(i, _)| *i == 0 || text[..*i].ends_with('\n'))
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// One generated request.
#[derive(Debug, Clone)]
struct Gen {
    method: &'static str,
    target: &'static str,
    hosts: Vec<&'static str>,
    framing: usize,
    extra: Vec<&'static str>,
    body: String,
}

const FRAMINGS: usize = 8;

fn render(g: &Gen) -> Vec<u8> {
    let mut s = format!("{} {} HTTP/1.1\r\n", g.method, g.target);
    for h in &g.hosts {
        s.push_str(&format!("Host: {h}\r\n"));
    }
    for e in &g.extra {
        s.push_str(e);
        s.push_str("\r\n");
    }
    let n = g.body.len();
    let chunked = format!("{n:x}\r\n{}\r\n0\r\n\r\n", g.body);
    let (head, body) = match g.framing {
        0 => (String::new(), String::new()),
        1 => (format!("Content-Length: {n}\r\n"), g.body.clone()),
        2 => (
            format!("Content-Length: {n}\r\nContent-Length: {n}\r\n"),
            g.body.clone(),
        ),
        3 => (
            format!("Content-Length: {n}\r\nContent-Length: {}\r\n", n + 1),
            g.body.clone(),
        ),
        4 => ("Transfer-Encoding: chunked\r\n".to_string(), chunked),
        5 => (
            format!("Transfer-Encoding: chunked\r\nContent-Length: {n}\r\n"),
            chunked,
        ),
        6 => ("Transfer-Encoding: gzip, chunked\r\n".to_string(), chunked),
        _ => ("Transfer-Encoding: chunked, gzip\r\n".to_string(), chunked),
    };
    s.push_str(&head);
    s.push_str("\r\n");
    s.push_str(&body);
    s.into_bytes()
}

fn gen() -> impl Strategy<Value = Gen> {
    (
        prop::sample::select(vec!["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS"]),
        prop::sample::select(vec![
            "/p",
            "/p?q=1&r=%20",
            "/a/../b",
            "http://example.test/p",
            "http://other.test:81/p?x",
            "*",
        ]),
        prop::collection::vec(
            prop::sample::select(vec!["example.test", "EXAMPLE.test:80", "other.test", ""]),
            0..3,
        ),
        0..FRAMINGS,
        prop::collection::vec(
            prop::sample::select(vec![
                "X-Fold: a\r\n  folded",
                "Connection: close",
                "Connection: keep-alive",
                "Connection: x-drop",
                "Connection: host",
                "X-Drop: 1",
                "Keep-Alive: timeout=5",
                "TE: trailers",
                "Proxy-Authorization: Basic eA==",
                "X-Forwarded-For: 192.0.2.1",
                "X-Forwarded-Proto: https",
                "X-Switchyard-Secret: s",
                "Accept: */*",
                "Cookie: a=b",
            ]),
            0..4,
        ),
        "[a-z]{0,12}",
    )
        .prop_map(|(method, target, hosts, framing, extra, body)| Gen {
            method,
            target,
            hosts,
            framing,
            extra,
            body,
        })
}

struct Pair {
    fast: Proxy,
    stock: Proxy,
    fast_origin: RawOrigin,
    stock_origin: RawOrigin,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn pair() -> Pair {
    let fast_origin = RawOrigin::start().await;
    let stock_origin = RawOrigin::start().await;
    let fd = routes(&fast_origin);
    let sd = routes(&stock_origin);
    let fast = Proxy::start_with(fd.path(), &["--engine", "fast"]).await;
    let stock = Proxy::start_with(sd.path(), &["--engine", "stock"]).await;
    Pair {
        fast,
        stock,
        fast_origin,
        stock_origin,
        _dirs: (fd, sd),
    }
}

/// Sends `raw` through both engines; panics with the difference, if any.
async fn same(p: &Pair, raw: &[u8]) {
    let (a, b) = tokio::join!(exchange(p.fast.addr, raw), exchange(p.stock.addr, raw));
    let (fa, sa) = (p.fast_origin.take(), p.stock_origin.take());
    let show = |v: &Vec<Vec<u8>>| {
        v.iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        a,
        b,
        "statuses differ (fast, stock) for {:?}",
        String::from_utf8_lossy(raw)
    );
    assert_eq!(
        show(&fa),
        show(&sa),
        "origin bytes differ (fast, stock) for {:?}",
        String::from_utf8_lossy(raw)
    );
}

#[test]
fn fast_and_stock_agree() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p = rt.block_on(pair());
    // Fixed cases first: each shape the issue names at least once.
    let fixed: [&[u8]; 6] = [
        b"GET /p HTTP/1.1\r\nHost: example.test\r\n\r\n",
        b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        b"GET /p HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\n\r\n",
        b"GET http://example.test/p HTTP/1.1\r\nHost: other.test\r\n\r\n",
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ];
    for raw in fixed {
        rt.block_on(same(&p, raw));
    }
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&(gen(), gen(), any::<bool>()), |(a, b, pipelined)| {
        let mut raw = render(&a);
        if pipelined {
            raw.extend_from_slice(&render(&b));
        }
        rt.block_on(same(&p, &raw));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_reuses_both_connections() {
    let p = pair().await;
    let mut s = TcpStream::connect(p.fast.addr).await.unwrap();
    for i in 0..3 {
        let req = format!("GET /k{i} HTTP/1.1\r\nHost: a\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        while find(&got, b"\r\n\r\nok").is_none() {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
                .await
                .expect("answer in time")
                .unwrap();
            assert!(n > 0, "connection closed after request {i}");
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }
    assert_eq!(p.fast_origin.take().len(), 3);
}

/// An origin answering by path with bodies the fast path must relay as they come: large ones
/// of each framing, and one whose second chunk waits until `gate` is notified.
async fn body_origin(gate: Arc<tokio::sync::Notify>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let gate = gate.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(req) = next_request(&mut s, &mut buf).await {
                    let path = String::from_utf8_lossy(&req)
                        .split(' ')
                        .nth(1)
                        .unwrap_or("")
                        .to_string();
                    match path.as_str() {
                        "/cl" => {
                            let body = pattern(2 * 1024 * 1024);
                            let head = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                                body.len()
                            );
                            s.write_all(head.as_bytes()).await.unwrap();
                            s.write_all(&body).await.unwrap();
                        }
                        "/chunked" => {
                            s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                                .await
                                .unwrap();
                            for piece in pattern(300 * 1000).chunks(1000) {
                                let c = format!("{:x}\r\n", piece.len());
                                s.write_all(c.as_bytes()).await.unwrap();
                                s.write_all(piece).await.unwrap();
                                s.write_all(b"\r\n").await.unwrap();
                            }
                            s.write_all(b"0\r\n\r\n").await.unwrap();
                        }
                        "/close" => {
                            s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
                            s.write_all(&pattern(1024 * 1024)).await.unwrap();
                            return;
                        }
                        _ => {
                            s.write_all(
                                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
                            )
                            .await
                            .unwrap();
                            gate.notified().await;
                            s.write_all(b"6\r\nsecond\r\n0\r\n\r\n").await.unwrap();
                        }
                    }
                }
            });
        }
    });
    addr
}

/// `n` bytes of a pattern that shows a lost, repeated or reordered piece.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// Large bodies of every framing arrive whole through the fast path (a close-delimited one
/// goes to the client chunked, the connection kept), and a streamed body is relayed as it
/// comes: the client has the first chunk while the origin still holds back the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_streamed_bodies_on_the_fast_path() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let origin = body_origin(gate.clone()).await;
    let dir = routes_dir(&format!(
        "[upstreams.o]\naddrs = [\"{origin}\"]\n\
         [[routes]]\nid = \"all\"\npath = \"*\"\nto = \"o\"\n"
    ));
    let proxy = Proxy::start_with(dir.path(), &["--engine", "fast"]).await;
    use http_body_util::BodyExt;
    let c = client();
    let get = |path: &str| {
        let req = hyper::Request::get(proxy.url(path))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        c.request(req)
    };
    for (path, want) in [
        ("/cl", pattern(2 * 1024 * 1024)),
        ("/chunked", pattern(300 * 1000)),
        ("/close", pattern(1024 * 1024)),
    ] {
        let (parts, body) = get(path).await.unwrap().into_parts();
        assert_eq!(parts.status, 200, "{path}");
        if path == "/close" {
            assert_eq!(parts.headers["transfer-encoding"], "chunked");
        }
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(got.len(), want.len(), "{path}");
        assert!(got[..] == want[..], "{path}: bytes differ");
    }
    let mut body = get("/stream").await.unwrap().into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first chunk before the rest of the body")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    gate.notify_one();
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .expect("the rest once the origin sends it")
        .unwrap()
        .to_bytes();
    assert_eq!(&rest[..], b"second");
}
