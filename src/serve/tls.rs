//! TLS termination for the data plane: the certificate directory (`NAME.crt` + `NAME.key`
//! pairs), the per-connection choice of a certificate by SNI, and reloads on change or SIGHUP.
//!
//! Certificates live in a [`CertStore`]: an `ArcSwap` of an immutable [`CertSet`] that the
//! rustls handshake reads through [`SniResolver`] (pingora's `certificate_callback` is not
//! called under rustls; a `ResolvesServerCert` is). A reload reads every pair again and swaps a
//! new set in; a pair that fails (unreadable, unparsable, key not matching the certificate) keeps
//! the certificate it had before, so replacing `.crt` and `.key` one after the other never serves
//! a mismatched pair, and the previous certificate serves until a matching pair is on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use parking_lot::Mutex;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{CertificateDer, ClientHello, PrivateKeyDer, ResolvesServerCert};

use crate::admin::types::{TlsCertView, TlsView};
use crate::metrics::METRICS;

fn rfc3339(unix: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// Why a certificate pair or the directory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate directory {path}: {error}")]
    Dir { path: String, error: std::io::Error },
    #[error("{path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: no PEM certificate in the file")]
    NoCertificate { path: String },
    #[error("{path}: no PEM private key in the file")]
    NoKey { path: String },
    #[error("{path}: the leaf certificate does not parse: {message}")]
    BadCertificate { path: String, message: String },
    #[error("{path}: {message}")]
    BadKey { path: String, message: String },
    #[error("{path}: the key does not match the certificate {crt}")]
    Mismatch { path: String, crt: String },
    #[error("{path}: no private key file for this certificate")]
    MissingKey { path: String },
    #[error("certificate directory {path}: no NAME.crt + NAME.key pair loaded")]
    Empty { path: String },
    #[error("--tls-default-cert {name}: no certificate {name}.crt loaded from {dir}")]
    UnknownDefault { name: String, dir: String },
    #[error("{0}")]
    Startup(String),
}

/// One loaded certificate pair.
#[derive(Debug)]
pub struct LoadedCert {
    /// The file stem: `example` for `example.crt` + `example.key`.
    pub name: String,
    /// The chain and signing key handed to rustls.
    pub key: Arc<CertifiedKey>,
    /// DNS names of the leaf's subjectAltName extension, lower case (`*.example.com` included).
    pub sans: Vec<String>,
    /// The leaf's subject, as text (`CN=example.com`).
    pub subject: String,
    /// The leaf's `notAfter`, Unix seconds.
    pub not_after: i64,
    pub crt_path: PathBuf,
    pub key_path: PathBuf,
}

/// The certificates serving now, by name, and how SNI names map to them.
#[derive(Debug, Default)]
pub struct CertSet {
    pub certs: BTreeMap<String, Arc<LoadedCert>>,
    /// Served to clients without SNI or whose SNI matches no certificate.
    pub default: Option<Arc<LoadedCert>>,
    /// Exact DNS name → certificate (the first by name wins a tie).
    exact: BTreeMap<String, Arc<LoadedCert>>,
    /// `*.example.com` → certificate, keyed by `example.com`.
    wildcard: BTreeMap<String, Arc<LoadedCert>>,
}

impl CertSet {
    fn new(certs: BTreeMap<String, Arc<LoadedCert>>, default_name: Option<&str>) -> CertSet {
        let mut exact = BTreeMap::new();
        let mut wildcard = BTreeMap::new();
        for c in certs.values() {
            for san in &c.sans {
                match san.strip_prefix("*.") {
                    Some(parent) => {
                        wildcard
                            .entry(parent.to_string())
                            .or_insert_with(|| c.clone());
                    }
                    None => {
                        exact.entry(san.clone()).or_insert_with(|| c.clone());
                    }
                }
            }
        }
        let default = match default_name {
            Some(n) => certs.get(n).cloned(),
            None => certs.values().next().cloned(),
        };
        CertSet {
            certs,
            default,
            exact,
            wildcard,
        }
    }

    /// The certificate for a client that sent `sni`: an exact SAN match, else a wildcard SAN
    /// covering its first label (`*.example.com` covers `a.example.com`, not `a.b.example.com`
    /// nor `example.com`), else the default.
    pub fn pick(&self, sni: Option<&str>) -> Option<&Arc<LoadedCert>> {
        if let Some(name) = sni {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(c) = self.exact.get(&name) {
                return Some(c);
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(c) = self.wildcard.get(parent) {
                    return Some(c);
                }
            }
        }
        self.default.as_ref()
    }
}

/// The outcome of the last load of one pair, for `GET /v1/tls`.
#[derive(Debug, Clone, Default)]
pub struct PairStatus {
    /// The last load's error (`None` once a load succeeded again).
    pub error: Option<String>,
    /// When that error was seen, Unix seconds.
    pub error_at: Option<i64>,
}

/// The certificate directory and what is serving from it. Shared by the TLS listener (through
/// [`SniResolver`]), the reload watcher and the admin API.
#[derive(Debug)]
pub struct CertStore {
    dir: PathBuf,
    default_name: Option<String>,
    live: ArcSwap<CertSet>,
    status: Mutex<BTreeMap<String, PairStatus>>,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.display().to_string(),
        error,
    })
}

/// Reads and checks one pair: the chain, the key, that the key belongs to the leaf, and the
/// leaf's SANs and expiry.
pub fn load_pair(name: &str, crt_path: &Path, key_path: &Path) -> Result<LoadedCert, TlsError> {
    let crt_text = read(crt_path)?;
    let crt = crt_path.display().to_string();
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut crt_text.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: crt.clone(),
            message: e.to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate { path: crt });
    };
    let (sans, subject, not_after) = {
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| {
            TlsError::BadCertificate {
                path: crt.clone(),
                message: e.to_string(),
            }
        })?;
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = parsed.subject_alternative_name() {
            for n in &ext.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                    sans.push(d.to_ascii_lowercase());
                }
            }
        }
        (
            sans,
            parsed.subject().to_string(),
            parsed.validity().not_after.timestamp(),
        )
    };
    if !key_path.exists() {
        return Err(TlsError::MissingKey {
            path: key_path.display().to_string(),
        });
    }
    let key_text = read(key_path)?;
    let kp = key_path.display().to_string();
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_text.as_slice())
        .map_err(|e| TlsError::BadKey {
            path: kp.clone(),
            message: e.to_string(),
        })?
        .ok_or_else(|| TlsError::NoKey { path: kp.clone() })?;
    pingora::tls::install_default_crypto_provider();
    let provider = pingora::tls::CryptoProvider::get_default()
        .ok_or_else(|| TlsError::Startup("no rustls crypto provider".into()))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::BadKey {
            path: kp.clone(),
            message: format!("unusable private key: {e}"),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    // A key whose public half cannot be compared is refused too: serving it could fail every
    // handshake, and the previous certificate is the safer choice.
    if certified.keys_match().is_err() {
        return Err(TlsError::Mismatch { path: kp, crt });
    }
    Ok(LoadedCert {
        name: name.to_string(),
        key: Arc::new(certified),
        sans,
        subject,
        not_after,
        crt_path: crt_path.to_path_buf(),
        key_path: key_path.to_path_buf(),
    })
}

/// Names of the pairs in `dir`: every `NAME.crt`, and every `NAME.key` (a key alone is
/// reported as a certificate missing).
fn pair_names(dir: &Path) -> Result<Vec<String>, TlsError> {
    let entries = std::fs::read_dir(dir).map_err(|error| TlsError::Dir {
        path: dir.display().to_string(),
        error,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "crt" || x == "key"))
        .filter_map(|p| p.file_stem().and_then(|s| s.to_str()).map(str::to_string))
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// What one reload did.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// Pairs (re)loaded and serving from the files now on disk.
    pub loaded: Vec<String>,
    /// Pairs rejected, with the error; each keeps its previous certificate, if it had one.
    pub rejected: Vec<(String, String)>,
    /// Pairs whose files are both gone: no longer served.
    pub removed: Vec<String>,
}

impl CertStore {
    /// Loads every pair in `dir` at startup. Fails on any bad pair, on an empty directory and
    /// on a `default_name` that is not one of the pairs: a listener should not start half
    /// configured. The default is `default_name`, or else the first pair by name.
    pub fn open(dir: &Path, default_name: Option<&str>) -> Result<Arc<CertStore>, TlsError> {
        let store = CertStore {
            dir: dir.to_path_buf(),
            default_name: default_name.map(str::to_string),
            live: ArcSwap::from_pointee(CertSet::default()),
            status: Mutex::new(BTreeMap::new()),
        };
        let report = store.reload()?;
        if let Some((_, e)) = report.rejected.first() {
            return Err(TlsError::Startup(e.clone()));
        }
        let set = store.live.load();
        if set.certs.is_empty() {
            return Err(TlsError::Empty {
                path: dir.display().to_string(),
            });
        }
        if let Some(n) = default_name {
            if !set.certs.contains_key(n) {
                return Err(TlsError::UnknownDefault {
                    name: n.to_string(),
                    dir: dir.display().to_string(),
                });
            }
        }
        drop(set);
        Ok(Arc::new(store))
    }

    /// The directory watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The certificates serving now.
    pub fn current(&self) -> Arc<CertSet> {
        self.live.load_full()
    }

    /// The last load outcome of each pair seen in the directory.
    pub fn status(&self) -> BTreeMap<String, PairStatus> {
        self.status.lock().clone()
    }

    /// Reads every pair again and swaps in the result. A pair that fails keeps its previous
    /// certificate (and is logged with the file and counted in
    /// `switchyard_tls_cert_reload_errors_total{name}`); a pair whose files are both gone is
    /// dropped. Errors only when the directory cannot be listed (nothing changes then).
    pub fn reload(&self) -> Result<ReloadReport, TlsError> {
        let names = pair_names(&self.dir)?;
        let old = self.live.load_full();
        let mut certs = BTreeMap::new();
        let mut report = ReloadReport::default();
        let mut status = self.status.lock();
        for name in &names {
            let crt = self.dir.join(format!("{name}.crt"));
            let key = self.dir.join(format!("{name}.key"));
            let result = if crt.exists() {
                load_pair(name, &crt, &key)
            } else {
                Err(TlsError::NoCertificate {
                    path: crt.display().to_string(),
                })
            };
            match result {
                Ok(c) => {
                    let unchanged = old
                        .certs
                        .get(name)
                        .is_some_and(|o| o.key.cert == c.key.cert && o.crt_path == c.crt_path);
                    if !unchanged {
                        tracing::info!(cert = %name, file = %crt.display(), sans = ?c.sans, not_after = c.not_after, "TLS certificate loaded");
                    }
                    certs.insert(name.clone(), Arc::new(c));
                    status.insert(name.clone(), PairStatus::default());
                    report.loaded.push(name.clone());
                }
                Err(e) => {
                    let kept = old.certs.get(name).cloned();
                    tracing::error!(cert = %name, error = %e, kept_previous = kept.is_some(), "TLS certificate rejected; the previous certificate keeps serving");
                    METRICS
                        .tls_cert_reload_errors
                        .with_label_values(&[name])
                        .inc();
                    if let Some(k) = kept {
                        certs.insert(name.clone(), k);
                    }
                    status.insert(
                        name.clone(),
                        PairStatus {
                            error: Some(e.to_string()),
                            error_at: Some(now_unix()),
                        },
                    );
                    report.rejected.push((name.clone(), e.to_string()));
                }
            }
        }
        for name in old.certs.keys() {
            if !names.contains(name) {
                tracing::warn!(cert = %name, dir = %self.dir.display(), "TLS certificate files removed; no longer served");
                let _ = METRICS.tls_cert_expiry.remove_label_values(&[name]);
                status.remove(name);
                report.removed.push(name.clone());
            }
        }
        drop(status);
        let set = CertSet::new(certs, self.default_name.as_deref());
        if set.default.is_none() && !set.certs.is_empty() {
            tracing::warn!(default = ?self.default_name, "the default TLS certificate is not loaded; clients without a matching SNI name are refused");
        }
        self.live.store(Arc::new(set));
        self.refresh_expiry();
        Ok(report)
    }

    /// Sets `switchyard_tls_cert_expiry_seconds{name}` from the serving certificates.
    pub fn refresh_expiry(&self) {
        let now = now_unix();
        for c in self.live.load().certs.values() {
            METRICS
                .tls_cert_expiry
                .with_label_values(&[&c.name])
                .set(c.not_after - now);
        }
    }

    /// What `GET /v1/tls` shows: every pair seen, what serves, the last error of each.
    pub fn view(&self) -> TlsView {
        let set = self.live.load();
        let status = self.status();
        let now = now_unix();
        let mut names: Vec<&String> = set.certs.keys().chain(status.keys()).collect();
        names.sort();
        names.dedup();
        let certificates = names
            .into_iter()
            .map(|name| {
                let c = set.certs.get(name);
                let st = status.get(name).cloned().unwrap_or_default();
                TlsCertView {
                    name: name.clone(),
                    serving: c.is_some(),
                    subject: c.map(|c| c.subject.clone()),
                    sans: c.map(|c| c.sans.clone()).unwrap_or_default(),
                    not_after: c.and_then(|c| rfc3339(c.not_after)),
                    not_after_unix: c.map(|c| c.not_after),
                    seconds_left: c.map(|c| c.not_after - now),
                    crt_file: self.dir.join(format!("{name}.crt")).display().to_string(),
                    key_file: self.dir.join(format!("{name}.key")).display().to_string(),
                    last_error: st.error,
                    last_error_at: st.error_at.and_then(rfc3339),
                }
            })
            .collect();
        TlsView {
            enabled: true,
            dir: Some(self.dir.display().to_string()),
            default: set.default.as_ref().map(|c| c.name.clone()),
            certificates,
        }
    }

    /// The resolver to install in the listener's rustls configuration.
    pub fn resolver(self: &Arc<Self>) -> Arc<SniResolver> {
        Arc::new(SniResolver {
            store: self.clone(),
        })
    }
}

/// rustls' certificate choice for each handshake: reads the store's current set (one atomic
/// load) and picks by SNI. `None` (no match and no default) aborts the handshake.
#[derive(Debug)]
pub struct SniResolver {
    store: Arc<CertStore>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.store.live.load();
        set.pick(hello.server_name()).map(|c| c.key.clone())
    }
}

/// Pingora TLS settings for the data-plane TLS listener: TLS 1.2 and 1.3 (pingora's rustls
/// default), certificates from `store`, and ALPN `h2,http/1.1` when `h2` (else HTTP/1.1 only).
pub fn settings(
    store: &Arc<CertStore>,
    h2: bool,
) -> Result<pingora::listeners::tls::TlsSettings, TlsError> {
    let mut s = pingora::listeners::tls::TlsSettings::intermediate("", "")
        .map_err(|e| TlsError::Startup(format!("TLS settings: {e}")))?;
    s.set_cert_resolver(store.resolver());
    if h2 {
        s.enable_h2();
    } else {
        s.set_alpn(pingora::protocols::ALPN::H1);
    }
    Ok(s)
}

/// Watches the certificate directory and SIGHUP; reloads on every change (debounced 200 ms,
/// so a `.crt` and `.key` written one after the other are usually read together), and refreshes
/// the expiry metric every 10 s. Runs until the process ends.
pub async fn watch(store: Arc<CertStore>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<&'static str>(16);
    let watch_tx = tx.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            let pair_file = ev
                .paths
                .iter()
                .any(|p| p.extension().is_some_and(|e| e == "crt" || e == "key"));
            if !ev.kind.is_access() && pair_file {
                let _ = watch_tx.try_send("changed");
            }
        }
    });
    let _watcher = match watcher {
        Ok(mut w) => match w.watch(store.dir(), RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::error!(path = %store.dir().display(), error = %e, "cannot watch the certificate directory; reload with SIGHUP");
                None
            }
        },
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the certificate directory; reload with SIGHUP");
            None
        }
    };
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    let _ = tx.send("SIGHUP").await;
                }
            });
        }
        Err(e) => tracing::error!(error = %e, "cannot listen for SIGHUP"),
    }
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        let how = tokio::select! {
            m = rx.recv() => match m {
                Some(how) => how,
                None => return,
            },
            _ = tick.tick() => {
                store.refresh_expiry();
                continue;
            }
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        while rx.try_recv().is_ok() {}
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.reload()).await {
            Ok(Ok(r)) => {
                tracing::info!(
                    how,
                    loaded = r.loaded.len(),
                    rejected = r.rejected.len(),
                    removed = r.removed.len(),
                    "TLS certificates reloaded"
                )
            }
            Ok(Err(e)) => {
                tracing::error!(how, error = %e, "TLS certificates not reloaded; the current ones keep serving")
            }
            Err(e) => tracing::error!(how, error = %e, "TLS reload task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str, sans: &[&str]) -> rcgen::KeyPair {
        let ck = rcgen::generate_simple_self_signed(
            sans.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        std::fs::write(dir.join(format!("{name}.crt")), ck.cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), ck.key_pair.serialize_pem()).unwrap();
        ck.key_pair
    }

    #[test]
    fn sni_exact_wildcard_and_default() {
        let d = tempfile::tempdir().unwrap();
        write_pair(d.path(), "a", &["a.example.com"]);
        write_pair(d.path(), "b", &["*.b.example.com", "b.example.com"]);
        let s = CertStore::open(d.path(), Some("b")).unwrap();
        let set = s.current();
        let name = |sni: Option<&str>| set.pick(sni).map(|c| c.name.clone());
        assert_eq!(name(Some("a.example.com")).as_deref(), Some("a"));
        assert_eq!(name(Some("A.Example.COM.")).as_deref(), Some("a"));
        assert_eq!(name(Some("x.b.example.com")).as_deref(), Some("b"));
        assert_eq!(name(Some("b.example.com")).as_deref(), Some("b"));
        // One label only: falls to the default (b), not a match of a's.
        assert_eq!(name(Some("y.x.a.example.com")).as_deref(), Some("b"));
        assert_eq!(name(None).as_deref(), Some("b"));
        let s = CertStore::open(d.path(), None).unwrap();
        assert_eq!(s.current().pick(None).unwrap().name, "a");
    }

    #[test]
    fn mismatched_pair_keeps_the_previous_certificate() {
        let d = tempfile::tempdir().unwrap();
        write_pair(d.path(), "a", &["a.example.com"]);
        let s = CertStore::open(d.path(), None).unwrap();
        let before = s.current().certs["a"].key.cert.clone();
        // A new certificate whose key is not on disk yet.
        let other = rcgen::generate_simple_self_signed(vec!["a.example.com".to_string()]).unwrap();
        std::fs::write(d.path().join("a.crt"), other.cert.pem()).unwrap();
        let r = s.reload().unwrap();
        assert_eq!(r.rejected.len(), 1, "{r:?}");
        assert!(r.rejected[0].1.contains("a.key"), "{r:?}");
        assert!(r.rejected[0].1.contains("does not match"), "{r:?}");
        assert_eq!(s.current().certs["a"].key.cert, before);
        assert!(s.status()["a"].error.is_some());
        // The matching key arrives.
        std::fs::write(d.path().join("a.key"), other.key_pair.serialize_pem()).unwrap();
        let r = s.reload().unwrap();
        assert!(r.rejected.is_empty(), "{r:?}");
        assert_ne!(s.current().certs["a"].key.cert, before);
        assert!(s.status()["a"].error.is_none());
    }

    #[test]
    fn startup_refuses_bad_pairs_and_unknown_default() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            CertStore::open(d.path(), None),
            Err(TlsError::Empty { .. })
        ));
        write_pair(d.path(), "a", &["a.example.com"]);
        let e = CertStore::open(d.path(), Some("zz")).unwrap_err();
        assert!(e.to_string().contains("zz"), "{e}");
        std::fs::write(d.path().join("b.crt"), "not a certificate").unwrap();
        let e = CertStore::open(d.path(), None).unwrap_err();
        assert!(e.to_string().contains("b.crt"), "{e}");
    }
}
