//! Raw-socket harness of the edge tests: an origin that records every byte it receives and
//! answers by path (content-length, chunked, close-delimited, WebSocket echo, a refused
//! upgrade), and a client that reads HTTP/1.1 responses off a socket.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the origin received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The head as received (request line and headers).
    pub head: String,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Seen {
    /// The request line.
    pub fn line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }
    /// A header's value (first match, case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        header(&self.head, name)
    }
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// An origin on a loopback port. Paths: `/chunked` (chunked body `hello world`), `/close`
/// (close-delimited body `hello world`), `/ws` (WebSocket echo after a 101), `/no-upgrade`
/// (200 whatever the request asks), anything else 200 with `Content-Length` and the body
/// `path=TARGET body=N`.
pub struct RawOrigin {
    pub addr: SocketAddr,
    /// Every request received, in order.
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Every byte received, on every connection.
    pub raw: Arc<Mutex<Vec<u8>>>,
}

impl RawOrigin {
    pub async fn start() -> RawOrigin {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (seen.clone(), raw.clone());
        tokio::spawn(async move {
            while let Ok((c, _)) = l.accept().await {
                tokio::spawn(conn(c, s.clone(), r.clone()));
            }
        });
        RawOrigin { addr, seen, raw }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn raw_text(&self) -> String {
        String::from_utf8_lossy(&self.raw.lock().unwrap()).into_owned()
    }
}

/// Reads from `c` into `buf` (recording into `raw`); false at EOF or error.
async fn fill(c: &mut TcpStream, buf: &mut Vec<u8>, raw: &Mutex<Vec<u8>>) -> bool {
    let mut tmp = [0u8; 8192];
    match c.read(&mut tmp).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&tmp[..n]);
            raw.lock().unwrap().extend_from_slice(&tmp[..n]);
            true
        }
    }
}

fn find(buf: &[u8], pat: &[u8]) -> Option<usize> {
    buf.windows(pat.len()).position(|w| w == pat)
}

async fn conn(mut c: TcpStream, seen: Arc<Mutex<Vec<Seen>>>, raw: Arc<Mutex<Vec<u8>>>) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if !fill(&mut c, &mut buf, &raw).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end - 4]).into_owned();
        buf.drain(..end);
        let mut body = Vec::new();
        let chunked = header(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
        if chunked {
            loop {
                let line_end = loop {
                    if let Some(i) = find(&buf, b"\r\n") {
                        break i;
                    }
                    if !fill(&mut c, &mut buf, &raw).await {
                        return;
                    }
                };
                let size = String::from_utf8_lossy(&buf[..line_end]).into_owned();
                let size =
                    usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap_or(0);
                buf.drain(..line_end + 2);
                while buf.len() < size + 2 {
                    if !fill(&mut c, &mut buf, &raw).await {
                        return;
                    }
                }
                body.extend_from_slice(&buf[..size]);
                buf.drain(..size + 2);
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = header(&head, "content-length").and_then(|v| v.parse().ok()) {
            while buf.len() < n {
                if !fill(&mut c, &mut buf, &raw).await {
                    return;
                }
            }
            body = buf.drain(..n).collect();
        }
        let target = head.split(' ').nth(1).unwrap_or("").to_string();
        let upgrade = header(&head, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        let key = header(&head, "sec-websocket-key");
        seen.lock().unwrap().push(Seen {
            head,
            body: body.clone(),
        });
        match target.as_str() {
            "/chunked" => {
                let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
                if c.write_all(r).await.is_err() {
                    return;
                }
            }
            "/close" => {
                let _ = c
                    .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello world")
                    .await;
                return;
            }
            "/ws" if upgrade => {
                let accept = super::ws::accept_key(key.as_deref().unwrap_or(""));
                let r = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                if c.write_all(r.as_bytes()).await.is_err() {
                    return;
                }
                super::ws::echo(c, buf, raw).await;
                return;
            }
            _ => {
                let b = format!("path={target} body={}", body.len());
                let r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{b}", b.len());
                if c.write_all(r.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A response read off a client socket.
#[derive(Debug, Clone)]
pub struct RawResp {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResp {
    pub fn header(&self, name: &str) -> Option<String> {
        header(&self.head, name)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection with a read buffer, so pipelined responses are read one by one.
pub struct RawClient {
    pub s: TcpStream,
    buf: Vec<u8>,
}

/// Bounds every read of a test: a stuck connection fails the test instead of hanging it.
pub const READ_BOUND: Duration = Duration::from_secs(10);

impl From<TcpStream> for RawClient {
    fn from(s: TcpStream) -> Self {
        RawClient { s, buf: Vec::new() }
    }
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        RawClient {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    async fn more(&mut self) -> bool {
        let mut tmp = [0u8; 8192];
        match tokio::time::timeout(READ_BOUND, self.s.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
            Err(_) => panic!("no answer within {READ_BOUND:?}"),
        }
    }

    /// Reads one response (`None` when the connection closed before a whole head).
    /// `head_only` for responses to HEAD and for 101.
    pub async fn response(&mut self) -> Option<RawResp> {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if !self.more().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end - 4]).into_owned();
        self.buf.drain(..end);
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut body = Vec::new();
        if status == 101 || status == 204 || status == 304 {
        } else if header(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    if !self.more().await {
                        return None;
                    }
                };
                let size = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                self.buf.drain(..line_end + 2);
                while self.buf.len() < size + 2 {
                    if !self.more().await {
                        return None;
                    }
                }
                body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = header(&head, "content-length").and_then(|v| v.parse().ok()) {
            while self.buf.len() < n {
                if !self.more().await {
                    return None;
                }
            }
            body = self.buf.drain(..n).collect();
        } else {
            while self.more().await {}
            body = std::mem::take(&mut self.buf);
        }
        Some(RawResp { status, head, body })
    }

    /// Whether the server closed the connection (EOF or reset) within [`READ_BOUND`], with
    /// nothing more to read.
    pub async fn closed(&mut self) -> bool {
        let mut tmp = [0u8; 1024];
        matches!(
            tokio::time::timeout(READ_BOUND, self.s.read(&mut tmp)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    /// What is left in the read buffer.
    pub fn leftover(&self) -> &[u8] {
        &self.buf
    }
}

/// Sends `bytes` on a new connection and reads one response.
pub async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Option<RawResp> {
    let mut c = RawClient::connect(addr).await;
    c.send(bytes).await;
    c.response().await
}
