//! A plain TCP connection without pingora's socket layers, for connections that carry many
//! requests: kept client connections and pooled upstream connections of the fast path.
//!
//! pingora's `l4::Stream` puts a read buffer, a write buffer, a rewind buffer and two
//! pending-time clocks in front of every read and write (each read that has to wait reads the
//! clock twice), and answers through two levels of `dyn` dispatch once the connection loop
//! wraps it. [`Plain`] is the socket itself with the digests pingora took at accept or
//! connect time: four clock reads a request less, and fewer instructions (measured together
//! with the edge guard's lazy timer: 30,191 → 28,418 a request, bench/RESULTS.md). An idle
//! kept connection went from 2,028 to 1,750 bytes with this and the connection timer (a
//! 112-byte boxed tokio timer and 24 bytes inline) together.
//!
//! A stream is taken over by [`unwrap`] only when nothing of it can be lost: pingora's plain
//! TCP stream with empty buffers. Its file descriptor is duplicated (the socket, its options
//! and its non-blocking mode are shared by both descriptors), the new descriptor registered
//! with the runtime, and pingora's stream dropped (its descriptor deregistered and closed). That
//! costs a few system calls, so it is done once per connection and only for connections
//! expected to carry more requests.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A plain TCP connection taken over from pingora (see the module documentation).
#[derive(Debug)]
pub struct Plain {
    tcp: TcpStream,
    socket: Option<Arc<SocketDigest>>,
    proxy: Option<Arc<ProxyDigest>>,
    timing: Option<TimingDigest>,
}

/// `stream` as a [`Plain`] when it is pingora's plain TCP stream (`Err` gives it back
/// unchanged otherwise, or when the descriptor cannot be duplicated). The caller makes sure
/// nothing was read into pingora's buffers and nothing is left to write: true of a stream just
/// connected, and of a client connection between two requests of the fast path (the listeners
/// read unbuffered, and every response is flushed).
pub fn unwrap(stream: Stream) -> Result<Plain, Stream> {
    let Some(l4) = stream.as_any().downcast_ref::<L4Stream>() else {
        return Err(stream);
    };
    let tcp = l4
        .get_socket_digest()
        .is_some_and(|d| d.peer_addr().is_some_and(|a| a.as_inet().is_some()));
    if !tcp {
        return Err(stream);
    }
    // SAFETY: the descriptor belongs to `stream`, alive for this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(l4.as_raw_fd()) };
    let Ok(tcp) = fd
        .try_clone_to_owned()
        .map(std::net::TcpStream::from)
        .and_then(TcpStream::from_std)
    else {
        return Err(stream);
    };
    let plain = Plain {
        tcp,
        socket: l4.get_socket_digest(),
        proxy: l4.get_proxy_digest(),
        timing: l4.get_timing_digest().into_iter().next().flatten(),
    };
    drop(stream);
    Ok(plain)
}

impl AsyncRead for Plain {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Plain {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Plain {
    async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.tcp).await;
    }
}

impl UniqueID for Plain {
    fn id(&self) -> UniqueIDType {
        self.tcp.as_raw_fd()
    }
}

impl Ssl for Plain {}

impl GetTimingDigest for Plain {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        vec![self.timing.clone()]
    }
    fn get_read_pending_time(&self) -> Duration {
        Duration::ZERO
    }
    fn get_write_pending_time(&self) -> Duration {
        Duration::ZERO
    }
}

impl GetProxyDigest for Plain {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.proxy.clone()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.proxy = Some(Arc::new(digest));
    }
}

impl GetSocketDigest for Plain {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.socket.clone()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.socket = Some(Arc::new(digest));
    }
}

#[async_trait]
impl Peek for Plain {}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A stream taken over keeps the connection (both ways), its peer address and timing, and
    /// the old descriptor is closed; anything but pingora's plain TCP stream is given back.
    #[tokio::test]
    async fn takes_over_a_tcp_stream_and_nothing_else() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (mut far, _) = l.accept().await.unwrap();
        let mut l4 = L4Stream::from(near);
        l4.set_socket_digest(SocketDigest::from_raw_fd(l4.as_raw_fd()));
        let old_fd = l4.as_raw_fd();
        let stream: Stream = Box::new(l4);
        let peer = stream.get_socket_digest().unwrap().peer_addr().cloned();

        let mut plain = unwrap(stream).unwrap();
        assert_ne!(plain.id(), old_fd);
        assert_eq!(
            plain.get_socket_digest().unwrap().peer_addr().cloned(),
            peer
        );
        assert!(plain.get_timing_digest()[0].is_some());
        plain.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        far.write_all(b"pong").await.unwrap();
        plain.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        // Dropping it closes the connection: pingora's descriptor was closed already.
        drop(plain);
        assert_eq!(
            far.read(&mut got).await.unwrap(),
            0,
            "closed with the last descriptor"
        );

        let (a, _b) = tokio::io::duplex(64);
        let other: Stream = Box::new(a);
        assert!(unwrap(other).is_err());
    }
}
