//! A minimal RFC 6455 WebSocket: the server's echo loop (the origin side) and the client's
//! framing, enough to pass text messages and a close through switchyard.
#![allow(dead_code)]

use std::sync::Mutex;

use base64::Engine;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `Sec-WebSocket-Accept` for a client's key.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// One frame: opcode and (unmasked) payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// Encodes a final frame; masked (as a client must) when `mask` is given.
pub fn encode(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n < 65536 => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Decodes one frame from the start of `buf`: the frame and its length, or `None` if `buf`
/// does not hold a whole frame yet.
pub fn decode(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let key = if masked {
        let k: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(k)
    } else {
        None
    };
    let data = buf.get(at..at + len)?;
    let payload = match key {
        Some(k) => data.iter().enumerate().map(|(i, b)| b ^ k[i % 4]).collect(),
        None => data.to_vec(),
    };
    Some((Frame { opcode, payload }, at + len))
}

/// The origin's side after the 101: echoes every data frame, answers a close with a close.
pub async fn echo(mut c: TcpStream, mut buf: Vec<u8>, raw: std::sync::Arc<Mutex<Vec<u8>>>) {
    let mut tmp = [0u8; 8192];
    loop {
        while let Some((f, n)) = decode(&buf) {
            buf.drain(..n);
            let out = encode(f.opcode, &f.payload, None);
            if c.write_all(&out).await.is_err() || f.opcode == 8 {
                return;
            }
        }
        match c.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                buf.extend_from_slice(&tmp[..n]);
                raw.lock().unwrap().extend_from_slice(&tmp[..n]);
            }
        }
    }
}

/// Reads one frame from a client connection, `leftover` holding bytes already read.
pub async fn read_frame(s: &mut TcpStream, leftover: &mut Vec<u8>) -> Option<Frame> {
    let mut tmp = [0u8; 8192];
    loop {
        if let Some((f, n)) = decode(leftover) {
            leftover.drain(..n);
            return Some(f);
        }
        match tokio::time::timeout(super::raw::READ_BOUND, s.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => leftover.extend_from_slice(&tmp[..n]),
        }
    }
}

/// An origin that writes a `101` for `key` as soon as it accepts a connection, before the
/// request arrives, then reads the request head and echoes frames: the proxy finds the `101`
/// waiting the moment it has sent the head.
pub async fn eager_origin(key: &'static str) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let head = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    accept_key(key)
                );
                if c.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = Vec::new();
                let mut tmp = [0u8; 8192];
                let end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match c.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                };
                buf.drain(..end);
                echo(c, buf, Default::default()).await;
            });
        }
    });
    addr
}
