//! Harness of the TLS edge tests: certificate pairs written to a directory, a TLS client that
//! reports the certificate it was served, HTTP/1.1 and HTTP/2 clients over TLS and h2c, and
//! `switchyard serve` started with a TLS listener.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::common::{reserve_port, Proxy, Resp};

/// A generated certificate pair.
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
    /// DER of the certificate, to compare with what a handshake served.
    pub der: Vec<u8>,
}

/// A self-signed certificate for `sans` with common name `cn`, valid for `days` from now.
pub fn pair(cn: &str, sans: &[&str], days: i64) -> Pair {
    let mut params =
        rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
    }
}

/// Writes `p` as `NAME.crt` and `NAME.key` in `dir`, each by rename (as a deploy tool would),
/// the key first.
pub fn install(dir: &Path, name: &str, p: &Pair) {
    write_atomic(&dir.join(format!("{name}.key")), &p.key_pem);
    write_atomic(&dir.join(format!("{name}.crt")), &p.cert_pem);
}

pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Accepts any server certificate: the tests compare the served certificate with the files.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS connector offering `alpn` (e.g. `[b"h2", b"http/1.1"]`).
pub fn connector(alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// A TLS connection to `addr`, sending `sni` (none when `None`).
pub async fn tls_connect(
    addr: SocketAddr,
    sni: Option<&str>,
    alpn: &[&[u8]],
) -> Result<TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = match sni {
        Some(n) => ServerName::try_from(n.to_string()).map_err(|e| e.to_string())?,
        None => ServerName::IpAddress(addr.ip().into()),
    };
    connector(alpn)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())
}

/// The leaf certificate a connection was served.
pub fn served(s: &TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default()
}

/// The protocol ALPN chose.
pub fn alpn(s: &TlsStream<TcpStream>) -> Option<String> {
    s.get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
}

/// The leaf certificate served for `sni` (a fresh connection).
pub async fn cert_for(addr: SocketAddr, sni: Option<&str>) -> Result<Vec<u8>, String> {
    Ok(served(&tls_connect(addr, sni, &[b"http/1.1"]).await?))
}

async fn into_resp(r: hyper::Response<hyper::body::Incoming>) -> Result<Resp, String> {
    let (parts, body) = r.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn request(
    method: &str,
    uri: &str,
    host: Option<&str>,
    headers: &[(&str, &str)],
    body: Bytes,
) -> hyper::Request<Full<Bytes>> {
    let mut b = hyper::Request::builder().method(method).uri(uri);
    if let Some(h) = host {
        b = b.header("host", h);
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body)).unwrap()
}

/// One HTTP/1.1 request on a fresh TLS connection with SNI and Host `host`.
pub async fn https1(addr: SocketAddr, host: &str, path: &str) -> Result<Resp, String> {
    let s = tls_connect(addr, Some(host), &[b"http/1.1"]).await?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let r = tx
        .send_request(request("GET", path, Some(host), &[], Bytes::new()))
        .await
        .map_err(|e| e.to_string())?;
    into_resp(r).await
}

/// Prefix of an [`H2::send`] error for a request hyper canceled before sending it (the
/// connection was closing): safe to send again on a new connection, as hyper's own pooled
/// client does.
pub const CANCELED: &str = "canceled before sending: ";

/// An HTTP/2 connection (over TLS with ALPN h2, or h2c with prior knowledge); requests are
/// multiplexed on it.
#[derive(Clone)]
pub struct H2 {
    tx: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    scheme: &'static str,
    /// The `:authority` of requests.
    pub authority: String,
}

impl H2 {
    /// Over TLS: SNI `host`, ALPN `h2` (fails if the server did not choose h2).
    pub async fn tls(addr: SocketAddr, host: &str) -> H2 {
        let s = tls_connect(addr, Some(host), &[b"h2"])
            .await
            .expect("TLS handshake");
        assert_eq!(alpn(&s).as_deref(), Some("h2"), "ALPN chose h2");
        Self::over(TokioIo::new(s), "https", format!("{host}:{}", addr.port())).await
    }

    /// Clear text with prior knowledge (h2c).
    pub async fn h2c(addr: SocketAddr, host: &str) -> H2 {
        let s = TcpStream::connect(addr).await.unwrap();
        Self::over(TokioIo::new(s), "http", format!("{host}:{}", addr.port())).await
    }

    async fn over<T>(io: T, scheme: &'static str, authority: String) -> H2
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        H2 {
            tx,
            scheme,
            authority,
        }
    }

    /// Sends a request for `path` (`:authority` is this connection's, or `host` if given).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        host: Option<&str>,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Resp, String> {
        let authority = host.unwrap_or(&self.authority);
        let uri = format!("{}://{}{}", self.scheme, authority, path);
        let mut tx = self.tx.clone();
        tx.ready().await.map_err(|e| e.to_string())?;
        let r = tx
            .send_request(request(method, &uri, None, headers, body.into()))
            .await
            .map_err(|e| {
                if e.is_canceled() {
                    format!("{CANCELED}{e}")
                } else {
                    e.to_string()
                }
            })?;
        into_resp(r).await
    }

    /// False when the connection takes no more requests (closed, or the server sent GOAWAY):
    /// a request would not be sent, and a client opens a new connection instead.
    pub async fn usable(&self) -> bool {
        let mut tx = self.tx.clone();
        tx.ready().await.is_ok()
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send("GET", path, None, &[], Bytes::new())
            .await
            .unwrap_or_else(|e| panic!("h2 GET {path}: {e}"))
    }
}

/// `switchyard serve` with a TLS listener on a fresh port beside the plain one; waits until the
/// TLS port accepts too. Returns the proxy and the TLS address.
pub async fn start_tls(
    routes: &Path,
    certs: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Proxy, SocketAddr) {
    let tls: SocketAddr = format!("127.0.0.1:{}", reserve_port()).parse().unwrap();
    let tls_s = tls.to_string();
    let certs_s = certs.display().to_string();
    let mut args = vec!["--tls-listen", &tls_s, "--tls-certs", &certs_s];
    args.extend_from_slice(extra);
    let p = Proxy::start_env(routes, &args, env).await;
    wait_port(tls).await;
    (p, tls)
}

/// Waits until `addr` accepts connections.
pub async fn wait_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listening on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `cond` every 20 ms until it holds; panics after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A hand-written ClientHello offering only `version` (0x0302 = TLS 1.1, 0x0303 = TLS 1.2),
/// without the supported_versions extension, with ECDHE-ECDSA/RSA AES-GCM suites.
pub fn client_hello(version: u16, sni: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version.to_be_bytes());
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    let suites: [u16; 4] = [0xc02b, 0xc02f, 0xc009, 0xc013];
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null
    let mut ext = Vec::new();
    let mut push = |typ: u16, data: &[u8]| {
        ext.extend_from_slice(&typ.to_be_bytes());
        ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
        ext.extend_from_slice(data);
    };
    // server_name
    let mut sn = Vec::new();
    sn.extend_from_slice(&((sni.len() + 3) as u16).to_be_bytes());
    sn.push(0);
    sn.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    sn.extend_from_slice(sni.as_bytes());
    push(0x0000, &sn);
    // supported_groups: x25519, secp256r1
    push(0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17]);
    // ec_point_formats: uncompressed
    push(0x000b, &[1, 0]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256
    push(0x000d, &[0, 6, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01]);
    // extended_master_secret
    push(0x0017, &[]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1u8];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// Sends `hello` and returns the first record's content type and, for a handshake record,
/// its first message type (2 = ServerHello); for an alert, its description (70 =
/// protocol_version). `None` when the server closed without a record.
pub async fn first_record(addr: SocketAddr, hello: &[u8]) -> Option<(u8, u8)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(hello).await.ok()?;
    let mut head = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .ok()?
        .ok()?;
    let len = u16::from_be_bytes([head[3], head[4]]) as usize;
    let mut body = vec![0u8; len];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut body))
        .await
        .ok()?
        .ok()?;
    match head[0] {
        0x15 => Some((0x15, *body.get(1)?)),
        t => Some((t, *body.first()?)),
    }
}

/// An HTTP/1.1 keep-alive connection over TLS.
pub struct Https1 {
    tx: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Https1 {
    pub async fn connect(addr: SocketAddr, host: &str) -> Result<Https1, String> {
        let s = tls_connect(addr, Some(host), &[b"http/1.1"]).await?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Https1 {
            tx,
            host: host.to_string(),
        })
    }

    /// False once the connection takes no more requests (the server answered with
    /// `Connection: close`, or closed it while idle).
    pub async fn usable(&mut self) -> bool {
        self.tx.ready().await.is_ok()
    }

    pub async fn get(&mut self, path: &str) -> Result<Resp, String> {
        let r = self
            .tx
            .send_request(request("GET", path, Some(&self.host), &[], Bytes::new()))
            .await
            .map_err(|e| e.to_string())?;
        into_resp(r).await
    }
}
