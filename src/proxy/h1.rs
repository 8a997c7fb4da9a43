//! The fast path's HTTP/1.1 wire work on both connections, without pingora's session objects:
//! the upstream exchange ([`Upstream`]: the request out, the response head parsed in place,
//! the body decoded) and the client's response ([`Downstream`]: the head written from the
//! upstream's own header lines, the body framed and flushed).
//!
//! pingora's v1 sessions build every response head twice over (a header map plus a map of the
//! names' original case), clone it for the proxy, insert `Date` and `Connection` into both
//! maps and serialize it again: about 19 k instructions of a 53 k request. Here the head is
//! parsed once with the same parser and settings (`httparse`, spaces after names and obs-fold
//! allowed in responses), kept as the bytes that came, and written from them: the upstream's
//! names keep their case, as on the stock path.
//!
//! The rules are pingora 0.9.1's (Apache-2.0), kept byte for byte where a client or an origin
//! could tell the difference:
//! - response framing (RFC 9112 §6.3): no body for `HEAD`, 204 and 304; `Transfer-Encoding`
//!   ending in `chunked` frames the body and any `Content-Length` is dropped; else a
//!   `Content-Length` whose values all agree (identical duplicates and comma lists are one
//!   value; anything else is an invalid response); else the body runs to the close;
//! - 1xx answers other than 101 are skipped; bytes past a complete response, a close-delimited
//!   body, a `Connection: close` either way or an HTTP/1.0 answer without `keep-alive` keep
//!   the upstream connection out of the pool;
//! - the client's head: the upstream's status line (its version and reason), its header
//!   lines in `http::HeaderMap` order (values of one name together, names as first seen, a
//!   removed name's place taken by the last name, as `HeaderMap::remove` leaves it) minus
//!   the hop-by-hop ones, `Date` replaced by the proxy's, then `Transfer-Encoding: chunked`
//!   for a close-delimited answer, the upstream-name header and `Connection`, as pingora's
//!   inserts leave them;
//! - errors carry pingora's types and retry flags (a pooled connection closed before any
//!   answer may be retried), so [`super::Ctx`] decides retries and fallbacks the same way.

use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::Stream;
use pingora::{Error, ErrorType, Result, RetryType};
use tokio::io::{AsyncWriteExt, ReadBuf};

use super::timer::{TimedOut, Timer};

/// A response head larger than this is refused (pingora's `MAX_HEADER_SIZE`).
pub const MAX_HEAD: usize = 1024 * 1024;
/// Most header lines in a response head (pingora's `MAX_HEADERS`).
pub const MAX_HEADERS: usize = 256;
/// Header lines parsed without a second try: a head with more is parsed again with room
/// for [`MAX_HEADERS`].
const FEW_HEADERS: usize = 32;
/// A read of the upstream takes at most this much at once.
const READ_SIZE: usize = 16 * 1024;
/// A chunk-size line (with extensions) longer than this is an invalid chunk (pingora's
/// partial chunk head limit).
const MAX_CHUNK_HEAD: usize = 8 * 1024;
/// Trailers after the last chunk longer than this are invalid (pingora's limit).
const MAX_TRAILERS: usize = 64 * 1024;
/// Body bytes gathered before they are written to the client (smaller pieces go out with
/// the head or the next piece; every wait for the upstream sends what is gathered first).
const GATHER: usize = 16 * 1024;

/// pingora's error type of a malformed chunk.
const INVALID_CHUNK: ErrorType = ErrorType::new("InvalidChunk");

/// One header line of a parsed response: offsets into its head, and what the name is.
#[derive(Clone, Copy)]
struct Field {
    name: (u32, u32),
    value: (u32, u32),
    kind: Kind,
    /// The name's length and first and last bytes, lowercased: lines of one name have the
    /// same key (and lines with different keys never have the same name).
    key: u32,
}

/// The names the proxy looks at, recognized once when the head is parsed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Other,
    Connection,
    KeepAlive,
    ProxyConnection,
    ContentLength,
    TransferEncoding,
    Date,
    /// `x-switchyard-upstream`.
    Upstream,
}

impl Kind {
    fn of(name: &[u8]) -> Kind {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        match name.len() {
            4 if is("date") => Kind::Date,
            10 if is("connection") => Kind::Connection,
            10 if is("keep-alive") => Kind::KeepAlive,
            14 if is("content-length") => Kind::ContentLength,
            16 if is("proxy-connection") => Kind::ProxyConnection,
            17 if is("transfer-encoding") => Kind::TransferEncoding,
            21 if is(super::UPSTREAM_HEADER) => Kind::Upstream,
            _ => Kind::Other,
        }
    }
}

/// See [`Field::key`].
fn name_key(name: &[u8]) -> u32 {
    let first = name.first().map_or(0, u8::to_ascii_lowercase);
    let last = name.last().map_or(0, u8::to_ascii_lowercase);
    ((name.len() as u32) << 16) | (u32::from(first) << 8) | u32::from(last)
}

/// How a body is delimited.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Framing {
    /// No body at all.
    Empty,
    /// This many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes.
    Close,
}

/// An upstream response head, as it came.
pub struct Response {
    head: Bytes,
    status: u16,
    /// The minor version: `HTTP/1.0` or `HTTP/1.1`.
    minor: u8,
    reason: (u32, u32),
    fields: Vec<Field>,
    framing: Framing,
    /// What its `Connection` header says: `Some(true)` keep-alive, `Some(false)` close.
    keepalive: Option<bool>,
    /// It has a `Transfer-Encoding` (then no `Content-Length` goes to the client).
    has_te: bool,
}

impl Response {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether the client gets this body chunked though it is close-delimited upstream
    /// (pingora-proxy's `h1_response_filter`: so the client connection stays usable).
    pub fn goes_chunked(&self, head_request: bool) -> bool {
        !head_request && self.framing == Framing::Close && !self.has_te
    }

    fn slice(&self, (at, len): (u32, u32)) -> &[u8] {
        &self.head[at as usize..(at + len) as usize]
    }

    fn name(&self, f: &Field) -> &[u8] {
        self.slice(f.name)
    }

    fn value(&self, f: &Field) -> &[u8] {
        self.slice(f.value)
    }

    /// Whether the client's copy leaves this line out: hop-by-hop headers (not on a 101), and
    /// `Content-Length` next to a `Transfer-Encoding`.
    fn dropped(&self, f: &Field) -> bool {
        match f.kind {
            Kind::Connection | Kind::KeepAlive | Kind::ProxyConnection => self.status != 101,
            Kind::ContentLength => self.has_te,
            _ => false,
        }
    }

    /// Whether two lines have the same name.
    fn same_name(&self, a: &Field, b: &Field) -> bool {
        a.key == b.key && self.name(a).eq_ignore_ascii_case(self.name(b))
    }

    /// Calls `f` with the header lines the client gets, in the order pingora's header map
    /// gives them: all values of a name together, names in the order they first came, except
    /// that removing a name (`Content-Length` next to a `Transfer-Encoding`, then the
    /// hop-by-hop names) moves the last name into its place (`HeaderMap::remove` swaps).
    fn client_fields(&self, mut f: impl FnMut(&Field)) {
        let fields = &self.fields;
        // The first line of each name, in order: on the stack for an ordinary head.
        let mut stack = [0u16; 32];
        let mut heap = Vec::new();
        let names: &mut [u16] = if fields.len() <= stack.len() {
            &mut stack
        } else {
            heap.resize(fields.len(), 0);
            &mut heap
        };
        let mut len = 0;
        // Whether a name came on more than one line (rare: then its lines are gathered).
        let mut repeated = false;
        for (i, field) in fields.iter().enumerate() {
            if names[..len]
                .iter()
                .any(|&l| self.same_name(&fields[l as usize], field))
            {
                repeated = true;
            } else {
                names[len] = i as u16;
                len += 1;
            }
        }
        let hop = self.status != 101;
        for (gone, applies) in [
            (Kind::ContentLength, self.has_te),
            (Kind::Connection, hop),
            (Kind::KeepAlive, hop),
            (Kind::ProxyConnection, hop),
        ] {
            let at = names[..len]
                .iter()
                .position(|&l| fields[l as usize].kind == gone);
            if let (true, Some(at)) = (applies, at) {
                // `swap_remove`, as `HeaderMap::remove` does to its entries.
                len -= 1;
                names[at] = names[len];
            }
        }
        for &l in &names[..len] {
            let first = &fields[l as usize];
            f(first);
            if repeated {
                for field in &fields[l as usize + 1..] {
                    if self.same_name(first, field) {
                        f(field);
                    }
                }
            }
        }
    }

    /// The client's headers as a map (for a shadow comparison, which sees them as the
    /// stock path's `response_filter` does: without hop-by-hop headers, with a chunked
    /// `Transfer-Encoding` when the body is made chunked).
    pub fn header_map(&self, chunked: bool) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.fields.len() + 1);
        for f in &self.fields {
            if self.dropped(f) {
                continue;
            }
            let name = self.name(f);
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name),
                HeaderValue::from_bytes(self.value(f)),
            ) {
                map.append(n, v);
            }
        }
        if chunked {
            map.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        map
    }
}

/// An upstream connection carrying one request and its response.
pub struct Upstream<'t> {
    stream: Stream,
    /// The client connection's timer, for the read and write timeouts.
    timer: &'t mut Timer,
    /// Bytes read and not used yet: the response head, then body bytes.
    buf: BytesMut,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    /// The response body's state once its head is read.
    body: Body,
    /// The request asked the upstream to close (`Connection: close`).
    request_close: bool,
    /// The connection may go back to the pool once the body is done.
    reusable: bool,
}

/// Where the response body stands.
#[derive(Clone, Copy, Debug)]
enum Body {
    /// The head is not read yet.
    Head,
    /// This many bytes are still to come.
    Length(u64),
    /// Before a chunk-size line.
    ChunkHead,
    /// Inside a chunk: this many data bytes, then its CRLF.
    ChunkData(u64),
    /// After a chunk's data: its CRLF.
    ChunkEnd,
    /// After the last chunk: trailers, then an empty line.
    Trailers,
    /// Until the connection closes.
    Close,
    /// Complete.
    Done,
}

/// What [`Upstream::piece`] found in the bytes already read.
pub enum Piece {
    /// The next `n` bytes of the buffer are body data: use [`Upstream::data`], then
    /// [`Upstream::consume`] them.
    Data(usize),
    /// The body needs more bytes from the upstream ([`Upstream::fill`]).
    More,
    /// The body is complete.
    Done,
}

impl<'t> Upstream<'t> {
    /// A request/response exchange on `stream` with pingora's per-read and per-write
    /// timeouts of the peer.
    pub fn new(
        stream: Stream,
        read_timeout: Option<Duration>,
        write_timeout: Option<Duration>,
        timer: &'t mut Timer,
    ) -> Upstream<'t> {
        Upstream {
            stream,
            timer,
            buf: BytesMut::new(),
            read_timeout,
            write_timeout,
            body: Body::Head,
            request_close: false,
            reusable: false,
        }
    }

    /// Sends `req` (serialized as pingora's client does) and `body` in one write, then
    /// flushes. The body goes chunked when the request says so.
    pub async fn send(&mut self, req: &RequestHeader, body: &[u8]) -> Result<()> {
        let Some(out) = pingora::protocols::http::v1::client::http_req_header_to_wire(req) else {
            return Error::e_explain(
                ErrorType::InvalidHTTPHeader,
                "request-line contains forbidden delimiter bytes or unsupported HTTP version",
            );
        };
        let close = req
            .headers
            .get(header::CONNECTION)
            .and_then(|v| keepalive_of(v.as_bytes()))
            .is_some_and(|keep| !keep);
        let chunked = req
            .headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .is_some_and(|v| last_token_is_chunked(v.as_bytes()));
        self.send_head(out, (chunked, close), body).await
    }

    /// Sends a request head already serialized in `out` and `body` in one write, then
    /// flushes: `chunked`, the head frames the body chunked; `close`, it asks the upstream to
    /// close the connection after the answer.
    pub async fn send_head(
        &mut self,
        mut out: BytesMut,
        (chunked, close): (bool, bool),
        body: &[u8],
    ) -> Result<()> {
        self.request_close = close;
        if chunked {
            if !body.is_empty() {
                put_chunk_size(&mut out, body.len());
                out.put_slice(body);
                out.put_slice(b"\r\n");
            }
            out.put_slice(b"0\r\n\r\n");
        } else {
            out.put_slice(body);
        }
        let stream = &mut self.stream;
        let write = async {
            stream.write_all(&out).await?;
            stream.flush().await
        };
        let r = match self.write_timeout {
            Some(t) => match self.timer.within(t, write).await {
                Ok(r) => r,
                Err(TimedOut) => {
                    return Error::e_explain(
                        ErrorType::WriteTimedout,
                        "while writing request (timeout)",
                    )
                }
            },
            None => write.await,
        };
        r.or_err_msg(ErrorType::WriteError, "while writing request")
    }

    /// Reads the response head, skipping 1xx answers other than 101. `head_request`: the
    /// request was `HEAD` (no body whatever the head says).
    pub async fn read_head(&mut self, head_request: bool) -> Result<Response> {
        loop {
            if !self.buf.is_empty() {
                match parse_head(&self.buf)? {
                    Some(mut parsed) => {
                        let len = parsed.len;
                        let head = self.buf.split_to(len).freeze();
                        parsed.resp.head = head;
                        let mut resp = parsed.resp;
                        if (100..200).contains(&resp.status) && resp.status != 101 {
                            continue;
                        }
                        frame(&mut resp)?;
                        self.start_body(&resp, head_request);
                        return Ok(resp);
                    }
                    None if self.buf.len() > MAX_HEAD => {
                        return Error::e_explain(
                            ErrorType::InvalidHTTPHeader,
                            format!("Response header larger than {MAX_HEAD}"),
                        );
                    }
                    None => {}
                }
            }
            let already = self.buf.len();
            match self.read().await {
                Ok(0) => {
                    let mut e = Error::explain(
                        ErrorType::ConnectionClosed,
                        format!("while reading response headers, bytes already read: {already}"),
                    );
                    e.retry = RetryType::ReusedOnly;
                    return Err(e);
                }
                Ok(_) => {}
                Err(ReadFail::Timeout) => {
                    return Error::e_explain(
                        ErrorType::ReadTimedout,
                        "while reading response headers",
                    )
                }
                Err(ReadFail::Io(e)) => {
                    let os = e.raw_os_error().is_some();
                    let mut e = Error::because(
                        ErrorType::ReadError,
                        format!("while reading response headers, bytes already read: {already}"),
                        e,
                    );
                    if os {
                        e.retry = RetryType::ReusedOnly;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Sets up the body reader for `resp` and whether the connection may be reused after it.
    fn start_body(&mut self, resp: &Response, head_request: bool) {
        self.body = match resp.framing {
            _ if head_request => Body::Done,
            Framing::Empty => Body::Done,
            Framing::Length(0) => Body::Done,
            Framing::Length(n) => Body::Length(n),
            Framing::Chunked => Body::ChunkHead,
            Framing::Close => Body::Close,
        };
        let close_delimited = matches!(self.body, Body::Close);
        let keepalive = if self.request_close {
            false
        } else {
            match resp.keepalive {
                Some(k) => k,
                None => resp.minor == 1,
            }
        };
        self.reusable = !close_delimited
            && resp.status != 101
            && keepalive
            && !(resp.minor == 0 && resp.has_te);
    }

    /// The body's next piece among the bytes already read (no I/O).
    pub fn piece(&mut self) -> Result<Piece> {
        loop {
            match self.body {
                Body::Head | Body::Done => return Ok(Piece::Done),
                Body::Length(left) | Body::ChunkData(left) => {
                    if self.buf.is_empty() {
                        return Ok(Piece::More);
                    }
                    let n = (self.buf.len() as u64).min(left) as usize;
                    return Ok(Piece::Data(n));
                }
                Body::Close => {
                    if self.buf.is_empty() {
                        return Ok(Piece::More);
                    }
                    return Ok(Piece::Data(self.buf.len()));
                }
                Body::ChunkHead => match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete((at, size))) => {
                        self.buf.advance(at);
                        self.body = if size == 0 {
                            Body::Trailers
                        } else {
                            Body::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) => {
                        if self.buf.len() > MAX_CHUNK_HEAD {
                            return Error::e_explain(INVALID_CHUNK, "chunk head too long");
                        }
                        return Ok(Piece::More);
                    }
                    Err(_) => {
                        return Error::e_explain(
                            INVALID_CHUNK,
                            format!(
                                "invalid chunk size: {}",
                                self.buf[..self.buf.len().min(32)].escape_ascii()
                            ),
                        )
                    }
                },
                Body::ChunkEnd => {
                    if self.buf.len() < 2 {
                        if self.buf.first().is_some_and(|&b| b != b'\r') {
                            return Error::e_explain(INVALID_CHUNK, "no CRLF after chunk data");
                        }
                        return Ok(Piece::More);
                    }
                    if &self.buf[..2] != b"\r\n" {
                        return Error::e_explain(INVALID_CHUNK, "no CRLF after chunk data");
                    }
                    self.buf.advance(2);
                    self.body = Body::ChunkHead;
                }
                Body::Trailers => {
                    if self.buf.len() >= 2 && &self.buf[..2] == b"\r\n" {
                        self.buf.advance(2);
                        self.body = Body::Done;
                        continue;
                    }
                    match find(&self.buf, b"\r\n\r\n") {
                        Some(at) => {
                            self.buf.advance(at + 4);
                            self.body = Body::Done;
                        }
                        None if self.buf.len() > MAX_TRAILERS => {
                            return Error::e_explain(INVALID_CHUNK, "trailers too long");
                        }
                        None => return Ok(Piece::More),
                    }
                }
            }
        }
    }

    /// The first `n` bytes read (after [`Piece::Data`]).
    pub fn data(&self, n: usize) -> &[u8] {
        &self.buf[..n]
    }

    /// `n` data bytes were used.
    pub fn consume(&mut self, n: usize) {
        self.buf.advance(n);
        self.body = match self.body {
            Body::Length(left) if left <= n as u64 => Body::Done,
            Body::Length(left) => Body::Length(left - n as u64),
            Body::ChunkData(left) if left <= n as u64 => Body::ChunkEnd,
            Body::ChunkData(left) => Body::ChunkData(left - n as u64),
            other => other,
        };
    }

    /// Reads more of the body (after [`Piece::More`]). A close ends a close-delimited body;
    /// anywhere else it is an error.
    pub async fn fill(&mut self) -> Result<()> {
        match self.read().await {
            Ok(0) => {
                if matches!(self.body, Body::Close) {
                    self.body = Body::Done;
                    return Ok(());
                }
                Error::e_explain(
                    ErrorType::ConnectionClosed,
                    "upstream closed before the end of the response body",
                )
            }
            Ok(_) => Ok(()),
            Err(ReadFail::Timeout) => {
                Error::e_explain(ErrorType::ReadTimedout, "while reading response body")
            }
            Err(ReadFail::Io(e)) => {
                Error::e_because(ErrorType::ReadError, "while reading response body", e)
            }
        }
    }

    /// The connection, when it can carry another request: the body is done, nothing came
    /// past it, and neither side asked to close.
    pub fn into_reusable(self) -> Option<Stream> {
        (self.reusable && matches!(self.body, Body::Done) && self.buf.is_empty())
            .then_some(self.stream)
    }

    /// One read into the buffer: tried once without a timer (body bytes and answers are
    /// often there already), then under the read timeout.
    async fn read(&mut self) -> std::result::Result<usize, ReadFail> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_SIZE);
        }
        let stream = &mut self.stream;
        let buf = &mut self.buf;
        let first = poll_fn(|cx| {
            Poll::Ready(match poll_read_buf(stream, cx, buf) {
                Poll::Ready(r) => Some(r),
                Poll::Pending => None,
            })
        })
        .await;
        if let Some(r) = first {
            return r.map_err(ReadFail::Io);
        }
        let read = poll_fn(|cx| poll_read_buf(stream, cx, buf));
        // The connection's timer, moved lazily: pingora's `timeout` boxes a timer and
        // registers it with a shared timer manager for every read (about 650 instructions and
        // an allocation), tokio's own costs a registration per read.
        match self.read_timeout {
            Some(t) => match self.timer.within(t, read).await {
                Ok(r) => r.map_err(ReadFail::Io),
                Err(TimedOut) => Err(ReadFail::Timeout),
            },
            None => read.await.map_err(ReadFail::Io),
        }
    }
}

/// Writes `data`, gathered here already, as vectored writes: the client connection's write
/// buffer ([`crate::serve::wbuf`]) sends those through instead of copying them into a buffer of
/// its own first.
async fn write_gathered(stream: &mut Stream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let n = stream
            .write_vectored(&[std::io::IoSlice::new(data)])
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
    }
    Ok(())
}

/// Why a read failed.
enum ReadFail {
    Timeout,
    Io(std::io::Error),
}

/// Reads into the spare capacity of `buf`.
fn poll_read_buf(
    stream: &mut Stream,
    cx: &mut std::task::Context<'_>,
    buf: &mut BytesMut,
) -> Poll<std::io::Result<usize>> {
    let spare = buf.spare_capacity_mut();
    let mut rb = ReadBuf::uninit(spare);
    match std::pin::Pin::new(&mut **stream).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) => {
            let n = rb.filled().len();
            // SAFETY: `poll_read` initialized the first `n` bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n) };
            Poll::Ready(Ok(n))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// The first position of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A parsed head and its length (the response's `head` is filled in by the caller).
struct Parsed {
    resp: Response,
    len: usize,
}

/// Parses a response head at the start of `buf`: `None` while it is incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<Parsed>> {
    let mut few = [httparse::EMPTY_HEADER; FEW_HEADERS];
    match parse_with(buf, &mut few) {
        Err(httparse::Error::TooManyHeaders) => {
            let mut many = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
            parse_with(buf, &mut many)
        }
        r => r,
    }
    .map_err(|e| {
        Error::because(
            ErrorType::InvalidHTTPHeader,
            format!("buf: {}", buf[..buf.len().min(256)].escape_ascii()),
            e,
        )
    })
}

fn parse_with<'b>(
    buf: &'b [u8],
    headers: &mut [httparse::Header<'b>],
) -> std::result::Result<Option<Parsed>, httparse::Error> {
    let mut config = httparse::ParserConfig::default();
    config.allow_spaces_after_header_name_in_responses(true);
    config.allow_obsolete_multiline_headers_in_responses(true);
    let mut resp = httparse::Response::new(headers);
    let len = match config.parse_response(&mut resp, buf)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| ((s.as_ptr() as usize - base) as u32, s.len() as u32);
    let reason = resp.reason.map(|r| at(r.as_bytes())).unwrap_or((0, 0));
    let mut fields = Vec::with_capacity(resp.headers.len());
    let mut has_te = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        let kind = Kind::of(name);
        has_te |= kind == Kind::TransferEncoding;
        fields.push(Field {
            name: at(name),
            value: at(h.value),
            kind,
            key: name_key(name),
        });
    }
    Ok(Some(Parsed {
        resp: Response {
            head: Bytes::new(),
            status: resp.code.unwrap_or(0),
            minor: resp.version.unwrap_or(1),
            reason,
            fields,
            framing: Framing::Close,
            keepalive: None,
            has_te,
        },
        len,
    }))
}

/// Fills in a response's framing and `Connection` from its header lines (the head's bytes
/// in place): the checks pingora's client makes after parsing.
fn frame(resp: &mut Response) -> Result<()> {
    let mut te_last: Option<(u32, u32)> = None;
    let mut length: Option<u64> = None;
    let mut bad_length = false;
    let mut keepalive = None;
    let mut connection_seen = false;
    for f in &resp.fields {
        if f.kind == Kind::TransferEncoding {
            te_last = Some(f.value);
        } else if f.kind == Kind::ContentLength && !resp.has_te {
            let Ok(line) = std::str::from_utf8(resp.value(f)) else {
                bad_length = true;
                continue;
            };
            for v in line.split(',') {
                match from_digits(v.trim().as_bytes()) {
                    Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                    _ => bad_length = true,
                }
            }
        } else if f.kind == Kind::Connection && !connection_seen {
            // Only the first `Connection` line counts, as with pingora (`get`).
            connection_seen = true;
            keepalive = keepalive_of(resp.value(f));
        }
    }
    if bad_length {
        return Error::e_explain(
            ErrorType::InvalidHTTPHeader,
            "invalid Content-Length header",
        );
    }
    resp.keepalive = keepalive;
    let chunked = te_last.is_some_and(|v| last_token_is_chunked(resp.slice(v)));
    resp.framing = match resp.status {
        204 | 304 => Framing::Empty,
        _ if chunked => Framing::Chunked,
        _ => match length {
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        },
    };
    Ok(())
}

/// A `Content-Length` token: ASCII digits only, no overflow.
fn from_digits(b: &[u8]) -> Option<u64> {
    if b.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(n)
}

/// Whether the last `Transfer-Encoding` token is `chunked`.
fn last_token_is_chunked(v: &[u8]) -> bool {
    if v.eq_ignore_ascii_case(b"chunked") {
        return true;
    }
    let last = v
        .iter()
        .rposition(|&b| b == b',')
        .map_or(v, |at| &v[at + 1..]);
    last.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// What a `Connection` value says: `Some(true)` a `keep-alive` token, `Some(false)` a
/// `close` token (and no `keep-alive`), `None` neither.
fn keepalive_of(value: &[u8]) -> Option<bool> {
    let (mut keep, mut close) = (false, false);
    for token in value.split(|&b| b == b',') {
        let t = token.trim_ascii();
        keep |= t.eq_ignore_ascii_case(b"keep-alive");
        close |= t.eq_ignore_ascii_case(b"close");
    }
    if keep {
        Some(true)
    } else if close {
        Some(false)
    } else {
        None
    }
}

/// How the client's body is written.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Out {
    /// No head written yet.
    Nothing,
    /// A head without a body (HEAD, 204, 304).
    Empty,
    /// This many bytes left.
    Length(u64),
    Chunked,
    /// Raw bytes, the connection closed after them.
    Close,
    /// The response is complete.
    Done,
}

/// The client connection while the fast path answers one request on it.
pub struct Downstream {
    stream: Stream,
    /// The response's bytes not written yet.
    out: BytesMut,
    mode: Out,
    /// The connection may carry another request once this response is complete.
    keepalive: bool,
    /// The status written, 0 before a head.
    status: u16,
}

impl Downstream {
    /// The client's connection, its request read; `keepalive`: it may carry another.
    pub fn new(stream: Stream, keepalive: bool) -> Downstream {
        Downstream {
            stream,
            out: BytesMut::new(),
            mode: Out::Nothing,
            keepalive,
            status: 0,
        }
    }

    /// The status of the head written, 0 when none was.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether a head was written.
    pub fn started(&self) -> bool {
        self.mode != Out::Nothing
    }

    /// The upstream's response head for the client (see the module's rules); the body
    /// follows with [`Downstream::body`]. `no_body`: the request was HEAD; `upstream_name`:
    /// the `x-switchyard-upstream` value when the table adds it; `chunked`: the body is
    /// close-delimited upstream and goes chunked ([`Response::goes_chunked`]).
    pub fn head(
        &mut self,
        resp: &Response,
        no_body: bool,
        chunked: bool,
        upstream_name: Option<&HeaderValue>,
    ) {
        let out = &mut self.out;
        out.reserve(resp.head.len() + 128);
        out.put_slice(if resp.minor == 0 && !chunked {
            b"HTTP/1.0 "
        } else {
            b"HTTP/1.1 "
        });
        out.put_slice(&itoa3(resp.status));
        out.put_u8(b' ');
        out.put_slice(resp.slice(resp.reason));
        out.put_slice(b"\r\n");
        // Formatted once a second per thread, by the coarse clock (`super::clock`).
        let date = super::clock::http_date();
        let (mut had_date, mut had_name) = (false, false);
        resp.client_fields(|f| match (f.kind, upstream_name) {
            (Kind::Date, _) => {
                if !had_date {
                    had_date = true;
                    put_field(out, b"Date", &date);
                }
            }
            (Kind::Upstream, Some(v)) => {
                if !had_name {
                    had_name = true;
                    put_field(out, super::UPSTREAM_HEADER.as_bytes(), v.as_bytes());
                }
            }
            _ => put_field(out, resp.name(f), resp.value(f)),
        });
        if chunked {
            put_field(out, b"Transfer-Encoding", b"chunked");
        }
        if let (Some(v), false) = (upstream_name, had_name) {
            put_field(out, super::UPSTREAM_HEADER.as_bytes(), v.as_bytes());
        }
        if !had_date {
            put_field(out, b"Date", &date);
        }
        // The body's framing for the client, as pingora's server decides it from the
        // headers it writes.
        // (A `Content-Length` next to a `Transfer-Encoding` is neither framing nor sent.)
        self.mode = match resp.framing {
            _ if no_body => Out::Empty,
            Framing::Empty => Out::Empty,
            _ if chunked => Out::Chunked,
            Framing::Chunked => Out::Chunked,
            Framing::Length(n) => Out::Length(n),
            Framing::Close => Out::Close,
        };
        if self.mode == Out::Close {
            self.keepalive = false;
        }
        put_field(
            out,
            b"Connection",
            if self.keepalive {
                b"keep-alive"
            } else {
                b"close"
            },
        );
        out.put_slice(b"\r\n");
        self.status = resp.status;
    }

    /// A head generated here (an error or refusal) and its whole body, the connection closed
    /// after it: `Date` and `Connection: close` added as pingora's server adds them.
    pub async fn error(&mut self, mut resp: ResponseHeader, body: &[u8]) -> Result<()> {
        if self.started() {
            return Ok(());
        }
        self.keepalive = false;
        // The same date as every other fast-path answer (`super::clock`).
        resp.insert_header(
            header::DATE,
            HeaderValue::from_bytes(&super::clock::http_date()).map_err(|e| {
                Error::because(ErrorType::InternalError, "HTTP date not a header value", e)
            })?,
        )?;
        resp.insert_header(header::CONNECTION, "close")?;
        put_head(&mut self.out, &resp);
        self.out.put_slice(body);
        self.status = resp.status.as_u16();
        self.mode = Out::Done;
        self.send().await
    }

    /// A piece of the body (framed as the head said); it may wait in the buffer until
    /// [`Downstream::send`] or [`Downstream::finish`].
    pub async fn body(&mut self, data: &[u8]) -> Result<()> {
        match self.mode {
            Out::Length(left) => {
                let n = (data.len() as u64).min(left) as usize;
                self.mode = Out::Length(left - n as u64);
                self.put(&data[..n]).await
            }
            Out::Chunked if !data.is_empty() => {
                put_chunk_size(&mut self.out, data.len());
                self.put(data).await?;
                self.out.put_slice(b"\r\n");
                Ok(())
            }
            Out::Close => self.put(data).await,
            _ => Ok(()),
        }
    }

    /// Adds `data` to what goes out; a large piece sends what is gathered and goes straight.
    async fn put(&mut self, data: &[u8]) -> Result<()> {
        if self.out.len() + data.len() <= GATHER {
            self.out.put_slice(data);
            return Ok(());
        }
        self.send().await?;
        self.stream
            .write_all(data)
            .await
            .or_err_msg(ErrorType::WriteError, "writing body")
    }

    /// Writes what is gathered and flushes it (before waiting for the upstream).
    pub async fn send(&mut self) -> Result<()> {
        if !self.out.is_empty() {
            let r = write_gathered(&mut self.stream, &self.out).await;
            self.out.clear();
            r.or_err_msg(ErrorType::WriteError, "writing response")?;
        }
        self.stream
            .flush()
            .await
            .or_err_msg(ErrorType::WriteError, "flushing response")
    }

    /// Ends the body (the last chunk of a chunked one) and sends everything.
    pub async fn finish(&mut self) -> Result<()> {
        if self.mode == Out::Chunked {
            self.out.put_slice(b"0\r\n\r\n");
        }
        if let Out::Length(left) = self.mode {
            if left > 0 {
                self.keepalive = false;
            }
        }
        self.mode = Out::Done;
        self.send().await
    }

    /// Whether the connection may carry another request: the response is complete and
    /// nothing said to close.
    pub fn reusable(&self) -> bool {
        self.keepalive && self.mode == Out::Done && self.out.is_empty()
    }

    /// The connection (see [`Downstream::reusable`]).
    pub fn into_stream(self) -> Stream {
        self.stream
    }

    /// Closes the connection.
    pub async fn shutdown(mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// A three-digit status code.
fn itoa3(code: u16) -> [u8; 3] {
    let c = code.min(999);
    [
        b'0' + (c / 100) as u8,
        b'0' + (c / 10 % 10) as u8,
        b'0' + (c % 10) as u8,
    ]
}

/// A head built as a `ResponseHeader`, as pingora's server serializes it
/// (`http_resp_header_to_buf`).
fn put_head(out: &mut BytesMut, resp: &ResponseHeader) {
    out.put_slice(match resp.version {
        http::Version::HTTP_10 => b"HTTP/1.0 ",
        _ => b"HTTP/1.1 ",
    });
    out.put_slice(resp.status.as_str().as_bytes());
    out.put_u8(b' ');
    if let Some(r) = resp.get_reason_phrase() {
        out.put_slice(r.as_bytes());
    }
    out.put_slice(b"\r\n");
    resp.header_to_h1_wire(out);
    out.put_slice(b"\r\n");
}

/// A chunk-size line: the length in upper-case hex, then CRLF.
fn put_chunk_size(out: &mut BytesMut, n: usize) {
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.put_u8(b"0123456789ABCDEF"[(n >> (i * 4)) & 0xF]);
    }
    out.put_slice(b"\r\n");
}

fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// `or_err` with a fixed message, for `io::Result`s.
trait OrErrMsg<T> {
    fn or_err_msg(self, t: ErrorType, msg: &'static str) -> Result<T>;
}

impl<T> OrErrMsg<T> for std::io::Result<T> {
    fn or_err_msg(self, t: ErrorType, msg: &'static str) -> Result<T> {
        self.map_err(|e| Error::because(t, msg, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::protocols::http::v1::client::HttpSession as PingoraClient;
    use tokio::io::AsyncWriteExt;

    /// Two ends of a loopback connection: the far end gets `bytes`, then a close.
    async fn fed(bytes: &[u8]) -> Stream {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (mut far, _) = l.accept().await.unwrap();
        far.write_all(bytes).await.unwrap();
        far.shutdown().await.unwrap();
        Box::new(pingora::protocols::l4::stream::Stream::from(near))
    }

    /// The response as switchyard reads it: head, body, and whether the connection could
    /// be pooled (an error as its text).
    async fn ours(bytes: &[u8]) -> std::result::Result<(Response, Vec<u8>, bool), String> {
        let mut timer = Timer::new();
        let mut up = Upstream::new(fed(bytes).await, None, None, &mut timer);
        let resp = up.read_head(false).await.map_err(|e| e.to_string())?;
        let body = body_of(&mut up).await?;
        Ok((resp, body, up.into_reusable().is_some()))
    }

    /// The rest of the response body, read as the fast path reads it.
    async fn body_of(up: &mut Upstream<'_>) -> std::result::Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            match up.piece().map_err(|e| e.to_string())? {
                Piece::Data(n) => {
                    body.extend_from_slice(up.data(n));
                    up.consume(n);
                }
                Piece::More => up.fill().await.map_err(|e| e.to_string())?,
                Piece::Done => return Ok(body),
            }
        }
    }

    /// The same with pingora's client session: its head, body, and whether it would reuse.
    async fn pingora(
        bytes: &[u8],
    ) -> std::result::Result<(ResponseHeader, bool, Vec<u8>, bool), String> {
        let mut s = PingoraClient::new(fed(bytes).await);
        s.read_response().await.map_err(|e| e.to_string())?;
        loop {
            match s.resp_header().map(|r| r.status.as_u16()) {
                Some(100..=199) if s.resp_header().is_some_and(|r| r.status != 101) => {
                    s.read_response().await.map_err(|e| e.to_string())?;
                }
                _ => break,
            }
        }
        let resp = s.resp_header().cloned().unwrap();
        let end = s.is_body_done();
        let mut body = Vec::new();
        while let Some(b) = s.read_body_ref().await.map_err(|e| e.to_string())? {
            body.extend_from_slice(b);
        }
        s.respect_keepalive();
        let reusable = s.reuse().await.is_some();
        Ok((resp, end, body, reusable))
    }

    /// What the stock path sends the client for `resp` (pingora-proxy's filters and the v1
    /// server's `write_response_header`), the date left out.
    fn stock_head(
        mut resp: ResponseHeader,
        end: bool,
        name: Option<&HeaderValue>,
        keepalive: bool,
    ) -> Vec<u8> {
        super::super::strip_response_hop_by_hop(&mut resp);
        if !end
            && !resp.status.is_informational()
            && !matches!(resp.status.as_u16(), 204 | 304)
            && resp.headers.get(header::TRANSFER_ENCODING).is_none()
            && resp.headers.get(header::CONTENT_LENGTH).is_none()
        {
            resp.set_version(http::Version::HTTP_11);
            resp.insert_header(header::TRANSFER_ENCODING, "chunked")
                .unwrap();
        }
        if let Some(v) = name {
            resp.insert_header(super::super::UPSTREAM_HEADER, v.clone())
                .unwrap();
        }
        resp.insert_header(header::DATE, "-").unwrap();
        // pingora decides `Connection` before it sees a close-delimited body; switchyard
        // says `close` then (the connection is closed either way).
        let close_delimited = !matches!(resp.status.as_u16(), 204 | 304)
            && resp
                .headers
                .get(header::TRANSFER_ENCODING)
                .is_some_and(|v| !last_token_is_chunked(v.as_bytes()));
        let keep = keepalive && !close_delimited;
        resp.insert_header(
            header::CONNECTION,
            if keep { "keep-alive" } else { "close" },
        )
        .unwrap();
        let mut out = BytesMut::new();
        put_head(&mut out, &resp);
        out.to_vec()
    }

    /// switchyard's head for the client, the date left out.
    async fn our_head(resp: &Response, name: Option<&HeaderValue>, keepalive: bool) -> Vec<u8> {
        let mut down = Downstream::new(fed(b"").await, keepalive);
        down.head(resp, false, resp.goes_chunked(false), name);
        undated(&down.out)
    }

    /// `bytes` with the value of its `Date` line replaced by `-`.
    fn undated(bytes: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(bytes);
        text.split("\r\n")
            .map(|l| {
                if l.starts_with("Date: ") {
                    "Date: -"
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\r\n")
            .into_bytes()
    }

    /// A small deterministic generator (xorshift).
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// Generated upstream responses (header case, duplicates of one name apart, hop-by-hop
    /// headers, dates, every framing, HTTP/1.0, odd reasons, bodies split anywhere) give the
    /// client the same head and body bytes as pingora's client and server sessions, and the
    /// upstream connection is pooled exactly when pingora would reuse it.
    #[tokio::test]
    async fn responses_match_pingoras_sessions() {
        const FIELDS: &[(&str, &str)] = &[
            ("Content-Type", "text/plain"),
            ("X-A", "1"),
            ("x-a", "2"),
            ("Set-Cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("Connection", "keep-alive"),
            ("Connection", "close"),
            ("connection", "X-A, close"),
            ("Keep-Alive", "timeout=5"),
            ("Date", "Mon, 01 Jan 2001 00:00:00 GMT"),
            ("Server", "origin"),
            ("X-Switchyard-Upstream", "spoofed"),
            ("Proxy-Connection", "x"),
            ("Cache-Control", "no-cache"),
            ("ETag", "\"e\""),
        ];
        const FRAMES: &[&str] = &["", "cl", "cl2", "cl-bad", "te", "te2", "te-gzip", "te+cl"];
        let name = HeaderValue::from_static("new");
        let mut rng = Rng(0x5eed_1234_abcd);
        let mut compared = 0;
        for round in 0..600 {
            let status = [200, 201, 204, 304, 404, 500, 299][rng.below(7)];
            let minor = rng.below(4).min(1);
            let reason = ["OK", "Custom Reason", "", "Not Found"][rng.below(4)];
            let mut head = format!("HTTP/1.{minor} {status} {reason}\r\n");
            for _ in 0..rng.below(7) {
                let (n, v) = FIELDS[rng.below(FIELDS.len())];
                head.push_str(&format!("{n}: {v}\r\n"));
            }
            let body: &[u8] = match FRAMES[rng.below(FRAMES.len())] {
                "cl" => {
                    head.push_str("Content-Length: 3\r\n");
                    b"abc"
                }
                "cl2" => {
                    head.push_str("Content-Length: 3, 3\r\ncontent-length: 3\r\n");
                    b"abc"
                }
                "cl-bad" => {
                    head.push_str("Content-Length: 3\r\nContent-Length: 4\r\n");
                    b"abc"
                }
                "te" => {
                    head.push_str("Transfer-Encoding: chunked\r\n");
                    b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
                }
                "te2" => {
                    head.push_str("Transfer-Encoding: gzip, chunked\r\n");
                    b"1\r\na\r\n0\r\nTrailer: t\r\n\r\n"
                }
                "te-gzip" => {
                    head.push_str("Transfer-Encoding: gzip\r\n");
                    b"raw"
                }
                "te+cl" => {
                    head.push_str("Content-Length: 9\r\nTransfer-Encoding: chunked\r\n");
                    b"3\r\nabc\r\n0\r\n\r\n"
                }
                _ => b"to the close",
            };
            head.push_str("\r\n");
            let mut bytes = head.into_bytes();
            bytes.extend_from_slice(body);
            let keepalive = round % 3 != 0;
            let with_name = (round % 2 == 0).then_some(&name);
            let theirs = pingora(&bytes).await;
            let mine = ours(&bytes).await;
            let text = String::from_utf8_lossy(&bytes).to_string();
            match (theirs, mine) {
                (Ok((p, end, pbody, preuse)), Ok((r, body, reuse))) => {
                    assert_eq!(pbody, body, "body of {text:?}");
                    assert_eq!(preuse, reuse, "reuse after {text:?}");
                    assert_eq!(
                        String::from_utf8_lossy(&stock_head(p, end, with_name, keepalive)),
                        String::from_utf8_lossy(&our_head(&r, with_name, keepalive).await),
                        "head for {text:?}"
                    );
                    compared += 1;
                }
                (Err(_), Err(_)) => {}
                (p, r) => panic!(
                    "{text:?}: pingora {:?}, switchyard {:?}",
                    p.map(|_| ()),
                    r.map(|_| ())
                ),
            }
        }
        assert!(compared > 400, "{compared}");
    }

    /// A chunked body split at every byte decodes the same (pingora's reader is the
    /// reference), and malformed chunk framing is an error in both.
    #[tokio::test]
    async fn chunked_bodies_decode_like_pingora() {
        let bodies: &[&[u8]] = &[
            b"5\r\nhello\r\n0\r\n\r\n",
            b"A\r\n0123456789\r\n1;ext=1\r\nx\r\n0\r\nT: 1\r\nU: 2\r\n\r\n",
            b"0\r\n\r\n",
            b"3\r\nabcX\r\n0\r\n\r\n",
            b"zz\r\nabc\r\n0\r\n\r\n",
            b"3\r\nab",
        ];
        for body in bodies {
            let mut bytes = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            bytes.extend_from_slice(body);
            let theirs = pingora(&bytes).await.map(|(_, _, b, _)| b);
            let mine = split_reads(&bytes).await;
            assert_eq!(
                theirs.is_ok(),
                mine.is_ok(),
                "{:?}",
                body.escape_ascii().to_string()
            );
            if let (Ok(a), Ok(b)) = (theirs, mine) {
                assert_eq!(a, b);
            }
        }
    }

    /// Reads `bytes` a few bytes at a time through `Upstream` (every split of the chunk
    /// framing comes up).
    async fn split_reads(bytes: &[u8]) -> std::result::Result<Vec<u8>, String> {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        near.set_nodelay(true).unwrap();
        let (mut far, _) = l.accept().await.unwrap();
        far.set_nodelay(true).unwrap();
        let feed = bytes.to_vec();
        let writer = tokio::spawn(async move {
            for piece in feed.chunks(3) {
                far.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            far.shutdown().await.unwrap();
        });
        let stream: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(near));
        let mut timer = Timer::new();
        let mut up = Upstream::new(stream, None, None, &mut timer);
        let r = async {
            up.read_head(false).await.map_err(|e| e.to_string())?;
            body_of(&mut up).await
        }
        .await;
        writer.await.unwrap();
        r
    }

    /// Chunk-size lines are what `format!("{:X}\r\n")` writes.
    #[test]
    fn chunk_sizes_are_upper_hex() {
        for n in [0, 1, 9, 10, 15, 16, 255, 4096, 65_535, 1 << 20, usize::MAX] {
            let mut out = BytesMut::new();
            put_chunk_size(&mut out, n);
            assert_eq!(&out[..], format!("{n:X}\r\n").as_bytes());
        }
    }

    /// A `HEAD` answer has no body whatever its head says, and the connection is reusable.
    #[tokio::test]
    async fn head_answers_have_no_body() {
        let bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        let mut timer = Timer::new();
        let mut up = Upstream::new(fed(bytes).await, None, None, &mut timer);
        let resp = up.read_head(true).await.unwrap();
        assert!(matches!(up.piece().unwrap(), Piece::Done));
        assert!(!resp.goes_chunked(true));
        let mut down = Downstream::new(fed(b"").await, true);
        down.head(&resp, true, false, None);
        assert_eq!(down.mode, Out::Empty);
        assert!(String::from_utf8_lossy(&down.out).contains("Content-Length: 10\r\n"));
        assert!(up.into_reusable().is_some());
    }

    /// 1xx answers before the response are skipped; bytes past the response keep the
    /// connection out of the pool.
    #[tokio::test]
    async fn informational_skipped_and_overread_not_pooled() {
        let bytes = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxEXTRA";
        let mut timer = Timer::new();
        let mut up = Upstream::new(fed(bytes).await, None, None, &mut timer);
        let resp = up.read_head(false).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(matches!(up.piece().unwrap(), Piece::Data(1)));
        up.consume(1);
        assert!(matches!(up.piece().unwrap(), Piece::Done));
        assert!(up.into_reusable().is_none());
    }
}
