//! A client connection's write buffer, held only while a response is being written.
//!
//! pingora's socket stream allocates its write buffer (1,460 bytes) when a connection is
//! accepted and keeps it as long as the connection lives, so every idle keep-alive connection
//! holds one. switchyard's listeners turn that buffer off; the connection loop wraps each
//! HTTP/1.x connection in [`Buffered`] instead, which allocates its buffer on the first write
//! of a response and frees it once a flush has sent everything. The head and a small body of
//! a response still leave in one write (and over TLS, in one record), and an idle connection
//! holds no buffer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN, IO,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::proxy::plain;

/// Size of the buffer while it exists (pingora's own default: one TCP segment). A write at
/// least this large goes straight to the connection.
pub const WRITE_BUFFER: usize = 1460;

/// A connection whose writes are buffered only between the first write of a response and the
/// flush that ends it; reads and everything else go to the connection itself.
#[derive(Debug)]
pub struct Buffered<S: ?Sized = dyn IO> {
    inner: Box<S>,
    /// Bytes written and not sent yet; no allocation while empty after a flush.
    buf: Vec<u8>,
    /// How much of `buf` is already sent (a flush may take several writes).
    sent: usize,
}

impl<S: IO + ?Sized> Buffered<S> {
    /// `inner` with writes buffered between a response's first write and its flush.
    pub fn new(inner: Box<S>) -> Buffered<S> {
        Buffered {
            inner,
            buf: Vec::new(),
            sent: 0,
        }
    }

    /// Sends what is buffered; frees the buffer once all of it is sent.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            match ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..])) {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the connection took no bytes",
                    )))
                }
                Ok(n) => self.sent += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if self.buf.capacity() > 0 {
            self.buf = Vec::new();
        }
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

/// A client connection whose plain TCP socket is taken over from pingora's stream
/// ([`plain::unwrap`]: no pingora socket layers, one `dyn` call less per read and write) once
/// a request is done and nothing is buffered; any other connection (TLS, already taken over)
/// as it is. `None`: the connection was lost on the way, which the type checks rule out.
pub fn take_over(stream: Stream) -> Option<Stream> {
    let ready = stream.as_any().downcast_ref::<Buffered>().is_some_and(|b| {
        b.buf.is_empty()
            && b.inner
                .as_any()
                .is::<pingora::protocols::l4::stream::Stream>()
    });
    if !ready {
        return Some(stream);
    }
    let b = stream.into_any().downcast::<Buffered>().ok()?;
    Some(match plain::unwrap(b.inner) {
        Ok(p) => Box::new(Buffered::new(Box::new(p))),
        Err(inner) => Box::new(Buffered::new(inner)),
    })
}

impl<S: IO + ?Sized> AsyncRead for Buffered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: IO + ?Sized> AsyncWrite for Buffered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.buf.len() + data.len() > WRITE_BUFFER {
            ready!(this.poll_send(cx))?;
        }
        if data.len() >= WRITE_BUFFER {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        if this.buf.capacity() == 0 {
            this.buf.reserve_exact(WRITE_BUFFER);
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    /// A vectored write is already gathered by its caller (the fast path writes a response's
    /// head and small body as one): it goes through, after anything buffered, uncopied.
    /// `is_write_vectored` stays false, so generic writers (tokio's `write_all_buf`, which
    /// pingora's body writer uses) keep writing through the buffer: the stock path's head and
    /// small body still leave in one write.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut *this.inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl<S: IO + ?Sized> Shutdown for Buffered<S> {
    async fn shutdown(&mut self) {
        // What is buffered goes out first, as pingora's own buffered stream does.
        let _ = self.flush().await;
        Shutdown::shutdown(&mut *self.inner).await;
    }
}

impl<S: IO + ?Sized> UniqueID for Buffered<S> {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl<S: IO + ?Sized> Ssl for Buffered<S> {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl<S: IO + ?Sized> GetTimingDigest for Buffered<S> {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl<S: IO + ?Sized> GetProxyDigest for Buffered<S> {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl<S: IO + ?Sized> GetSocketDigest for Buffered<S> {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl<S: IO + ?Sized> Peek for Buffered<S> {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn writes_leave_together_at_the_flush_and_the_buffer_goes() {
        let (a, mut b) = tokio::io::duplex(64 * 1024);
        let mut c = Buffered::new(Box::new(a));
        c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
            .await
            .unwrap();
        c.write_all(b"hello").await.unwrap();
        assert!(c.buf.capacity() >= WRITE_BUFFER, "buffered until the flush");
        let mut got = [0u8; 64];
        let early = tokio::time::timeout(Duration::from_millis(50), b.read(&mut got)).await;
        assert!(early.is_err(), "nothing sent before the flush");
        c.flush().await.unwrap();
        assert_eq!(c.buf.capacity(), 0, "no buffer once everything is sent");
        let n = b.read(&mut got).await.unwrap();
        assert_eq!(
            &got[..n],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        );
        // A large write goes straight through, after what was buffered, in order.
        c.write_all(b"head").await.unwrap();
        let big = vec![b'x'; 10_000];
        c.write_all(&big).await.unwrap();
        c.flush().await.unwrap();
        let mut all = Vec::new();
        while all.len() < 10_004 {
            let mut chunk = [0u8; 4096];
            let n = b.read(&mut chunk).await.unwrap();
            all.extend_from_slice(&chunk[..n]);
        }
        assert!(all.starts_with(b"headxxx") && all.len() == 10_004);
        // A vectored write goes through at once, after what was buffered, without a buffer.
        c.write_all(b"a").await.unwrap();
        let n = c.write_vectored(&[io::IoSlice::new(b"bc")]).await.unwrap();
        assert_eq!(n, 2);
        assert_eq!(c.buf.capacity(), 0, "nothing kept for a gathered write");
        let mut got = [0u8; 8];
        let mut have = 0;
        while have < 3 {
            have += b.read(&mut got[have..]).await.unwrap();
        }
        assert_eq!(&got[..3], b"abc", "sent without a flush, in order");
        // Generic writers still buffer: `write_all_buf` (pingora's body writer) goes through
        // `poll_write` while the stream does not claim vectored writes.
        let mut piece = bytes::Bytes::from_static(b"d");
        c.write_all_buf(&mut piece).await.unwrap();
        assert!(c.buf.capacity() >= WRITE_BUFFER, "buffered until the flush");
    }
}
