//! Route files: the serde types operators write (`*File`), and loading a file or directory of
//! them into one merged [`TableDoc`] that remembers which file each entry came from.
//!
//! Nothing here judges meaning (unknown upstreams, bad patterns, weights): that is
//! [`crate::routing::compile`]'s job, so that every semantic error can be reported at once.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One route file as written, and also the whole merged table as the admin API accepts and
/// returns it (TOML or JSON). Unknown keys are errors so that a typo never becomes a default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableFile {
    /// Proxy-wide settings; at most one file of a directory may set them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyFile>,
    /// Named upstreams, referenced by routes.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamFile>,
    /// Routes in precedence order: the first that matches a request wins (CloudFront's rule).
    #[serde(default)]
    pub routes: Vec<RouteFile>,
}

/// `[proxy]`: settings that apply to every route and reload with the table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyFile {
    /// Request header that lets a tester force one of a route's upstreams by name.
    /// Default `x-switchyard-upstream`; `""` disables overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_header: Option<String>,
    /// Environment variable holding a shared secret; when set, an override is honored only if
    /// the request also carries `x-switchyard-secret` with that value. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_secret_env: Option<String>,
    /// Add `x-switchyard-upstream: NAME` to responses. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header: Option<bool>,
    /// Most shadow requests (see [`ShadowFile`]) in flight at once, across routes; a request
    /// over the cap is not shadowed (counted as `skipped`). Default 128.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_max_inflight: Option<usize>,
}

/// `[upstreams.NAME]`: where and how to reach one backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// One or more `host:port`; several are used round robin.
    #[serde(default)]
    pub addrs: Vec<String>,
    /// Connect with TLS (certificate verified against web roots plus `ca_file`). Default false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub tls: bool,
    /// TLS server name. Default: the host part of the first address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Host header sent upstream. Default: the client's Host, or `sni` when `tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Prepended to the path sent upstream (an API Gateway stage such as `/prod`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Removed from the front of the client's path before forwarding (and before `path_prefix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<String>,
    /// Extra PEM trust root(s), for private CAs and tests. Relative to the route file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// TCP (and TLS) connect timeout. Default 2000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    /// Longest wait for each read from the upstream (headers or body). Default 30000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_timeout_ms: Option<u64>,
    /// Active health checks; none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthFile>,
    /// Passive outlier detection; on by default with the defaults of [`OutlierFile`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier: Option<OutlierFile>,
}

/// `health = { ... }`: an active HTTP check run in the background.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    /// Path requested with GET. Default `/`.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Time between checks. Default 1000.
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// A check slower than this fails. Default 500.
    #[serde(default = "default_health_timeout")]
    pub timeout_ms: u64,
    /// Consecutive successes that make an unhealthy upstream healthy. Default 2.
    #[serde(default = "default_two")]
    pub healthy: u32,
    /// Consecutive failures that make a healthy upstream unhealthy. Default 3.
    #[serde(default = "default_three")]
    pub unhealthy: u32,
    /// Status a healthy answer has. Default: any 2xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
}

/// `outlier = { ... }`: eject an upstream after consecutive request failures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierFile {
    /// Consecutive failures that eject. Default 5; 0 disables outlier detection.
    #[serde(default = "default_five")]
    pub consecutive_failures: u32,
    /// Count 5xx responses as failures (connect errors and timeouts always count). Default false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub count_5xx: bool,
    /// First ejection length; doubles on each repeated ejection. Default 5000.
    #[serde(default = "default_base_ejection")]
    pub base_ejection_ms: u64,
    /// Longest ejection. Default 60000.
    #[serde(default = "default_max_ejection")]
    pub max_ejection_ms: u64,
}

impl Default for OutlierFile {
    fn default() -> Self {
        OutlierFile {
            consecutive_failures: default_five(),
            count_5xx: false,
            base_ejection_ms: default_base_ejection(),
            max_ejection_ms: default_max_ejection(),
        }
    }
}

/// `[[routes]]`: which requests go where.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Unique across all files; used in metrics, logs and the admin API.
    pub id: String,
    /// Exact host names or `*.example.com`; empty or absent = any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// CloudFront path pattern: `*` any run of characters including `/`, `?` one character.
    pub path: String,
    /// HTTP methods; empty or absent = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// The single upstream (a split of one). Exactly one of `to` and `split`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Percent of traffic per upstream, summing to 100 (two decimals allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<BTreeMap<String, f64>>,
    /// Upstream(s) tried, in order, when the chosen one is down or fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<OneOrMany>,
    /// `cookie:NAME`, `header:NAME` or `client_ip`: keeps a client on one arm of the split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<String>,
    /// Replay POST/PATCH on the fallback after a 5xx or timeout. Default false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub retry_non_idempotent: bool,
    /// Largest request body kept for a replay; larger bodies are never retried. Default 65536.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_buffer_bytes: Option<usize>,
    /// Copy a share of the requests to another upstream and compare its answers; none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowFile>,
    /// Largest request body in bytes; a larger declared `Content-Length` is answered 413 before
    /// anything reaches an upstream. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// An upgraded (WebSocket) connection through this route closes after this many
    /// milliseconds without a byte in either direction. Default 60000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket_idle_timeout_ms: Option<u64>,
}

/// `shadow = { upstream = "new", percent = 10 }`: after the primary answered the client, the
/// same request is sent to `upstream` (with `x-switchyard-shadow: 1`), its answer is compared
/// with the primary's and dropped. The client never waits for it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowFile {
    /// The upstream receiving the copies (plain HTTP).
    pub upstream: String,
    /// Percent of the route's eligible requests copied (two decimals allowed). Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Methods copied. Default `["GET", "HEAD"]`; list others (POST...) only if the shadow
    /// backend does not write, or ignores requests carrying `x-switchyard-shadow`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// What is compared: `status`, `headers`, `body`. Default `["status", "body"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compare: Vec<String>,
    /// Response headers compared (implies `headers`); empty = every header not ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// Response headers never compared (besides `date`, `content-length`, hop-by-hop headers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_headers: Vec<String>,
    /// JSON fields left out when both bodies are JSON: a key name (at any depth) or a dotted
    /// path from the top (`meta.ts`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_json_fields: Vec<String>,
    /// Bytes of each body read and hashed (and kept for a JSON comparison). Default 1048576.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<usize>,
}

/// A string or a list of strings (`fallback = "legacy"` or `fallback = ["a", "b"]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// The names in order.
    pub fn names(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}
fn default_health_path() -> String {
    "/".into()
}
fn default_interval() -> u64 {
    1000
}
fn default_health_timeout() -> u64 {
    500
}
fn default_two() -> u32 {
    2
}
fn default_three() -> u32 {
    3
}
fn default_five() -> u32 {
    5
}
fn default_base_ejection() -> u64 {
    5000
}
fn default_max_ejection() -> u64 {
    60000
}

/// The merged table plus where each entry came from: what compile needs to name files in errors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableDoc {
    pub table: TableFile,
    pub origins: Origins,
}

/// Per entry, the label of its source (a file path, or `api`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Origins {
    pub proxy: Option<String>,
    pub upstreams: BTreeMap<String, String>,
    /// Parallel to `table.routes`.
    pub routes: Vec<String>,
    /// Directory relative paths (`ca_file`) are resolved against, per source label.
    pub base_dirs: BTreeMap<String, PathBuf>,
}

impl TableDoc {
    /// A document that came from one source, such as the admin API (`source = "api"`).
    pub fn single(source: &str, table: TableFile, base_dir: Option<PathBuf>) -> TableDoc {
        let mut origins = Origins {
            proxy: table.proxy.as_ref().map(|_| source.to_string()),
            upstreams: table
                .upstreams
                .keys()
                .map(|k| (k.clone(), source.to_string()))
                .collect(),
            routes: vec![source.to_string(); table.routes.len()],
            base_dirs: BTreeMap::new(),
        };
        if let Some(dir) = base_dir {
            origins.base_dirs.insert(source.to_string(), dir);
        }
        TableDoc { table, origins }
    }

    /// Label of the source route `i` came from (`?` if unknown).
    pub fn route_origin(&self, i: usize) -> &str {
        self.origins
            .routes
            .get(i)
            .map(String::as_str)
            .unwrap_or("?")
    }

    /// Label of the source upstream `name` came from.
    pub fn upstream_origin(&self, name: &str) -> &str {
        self.origins
            .upstreams
            .get(name)
            .map(String::as_str)
            .unwrap_or("?")
    }
}

/// A problem found while reading or merging files: always names the file, and the line when the
/// parser knows it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct LoadError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file, l, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Parses one file's text. `label` names it in errors.
pub fn parse_toml(label: &str, text: &str) -> Result<TableFile, LoadError> {
    toml::from_str::<TableFile>(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        LoadError {
            file: label.to_string(),
            line,
            message: e.message().trim().to_string(),
        }
    })
}

/// Parses a table sent as TOML or JSON (JSON when it starts with `{`).
pub fn parse_any(label: &str, text: &str) -> Result<TableFile, LoadError> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str::<TableFile>(text).map_err(|e| LoadError {
            file: label.to_string(),
            line: Some(e.line()),
            message: e.to_string(),
        })
    } else {
        parse_toml(label, text)
    }
}

/// The route files of `path`: the file itself, or every `*.toml` directly in the directory,
/// in file-name order.
pub fn route_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let io_err = |e: std::io::Error| LoadError {
        file: path.display().to_string(),
        line: None,
        message: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io_err)? {
        let p = entry.map_err(io_err)?.path();
        if p.extension().is_some_and(|e| e == "toml") && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(LoadError {
            file: path.display().to_string(),
            line: None,
            message: "directory has no *.toml route files".into(),
        });
    }
    Ok(files)
}

/// Reads and merges a file or a directory of route files. Every parse error and every clash
/// between files (an upstream or `[proxy]` defined twice) is returned, not just the first.
pub fn load_path(path: &Path) -> Result<TableDoc, Vec<LoadError>> {
    let files = route_files(path).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let mut parsed = Vec::new();
    for file in files {
        let label = file.display().to_string();
        match std::fs::read_to_string(&file) {
            Ok(text) => match parse_toml(&label, &text) {
                Ok(t) => parsed.push((label, file, t)),
                Err(e) => errors.push(e),
            },
            Err(e) => errors.push(LoadError {
                file: label,
                line: None,
                message: e.to_string(),
            }),
        }
    }
    let mut doc = TableDoc::default();
    for (label, file, t) in parsed {
        if let Some(dir) = file.parent() {
            doc.origins
                .base_dirs
                .insert(label.clone(), dir.to_path_buf());
        }
        if let Some(p) = t.proxy {
            if let Some(prev) = &doc.origins.proxy {
                errors.push(LoadError {
                    file: label.clone(),
                    line: None,
                    message: format!("[proxy] is already set in {prev}"),
                });
            } else {
                doc.table.proxy = Some(p);
                doc.origins.proxy = Some(label.clone());
            }
        }
        for (name, up) in t.upstreams {
            if let Some(prev) = doc.origins.upstreams.get(&name) {
                errors.push(LoadError {
                    file: label.clone(),
                    line: None,
                    message: format!("upstream {name:?} is already defined in {prev}"),
                });
                continue;
            }
            doc.origins.upstreams.insert(name.clone(), label.clone());
            doc.table.upstreams.insert(name, up);
        }
        for r in t.routes {
            doc.origins.routes.push(label.clone());
            doc.table.routes.push(r);
        }
    }
    if errors.is_empty() {
        Ok(doc)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_file_and_line() {
        let text = "[upstreams.a]\naddrs = [\"127.0.0.1:1\"]\n\n[[routes]]\nid = \"r\"\npath = \"/*\"\nto = \"a\"\ntimeout = 3\n";
        let e = parse_toml("x.toml", text).unwrap_err();
        assert_eq!(e.file, "x.toml");
        assert_eq!(e.line, Some(8));
        assert!(e.message.contains("timeout"), "{}", e.message);
    }

    #[test]
    fn fallback_one_or_many() {
        let t = parse_toml(
            "x",
            "[[routes]]\nid='a'\npath='/'\nto='n'\nfallback='l'\n[[routes]]\nid='b'\npath='/'\nto='n'\nfallback=['l','m']\n",
        )
        .unwrap();
        assert_eq!(t.routes[0].fallback.as_ref().unwrap().names(), ["l"]);
        assert_eq!(t.routes[1].fallback.as_ref().unwrap().names(), ["l", "m"]);
    }

    #[test]
    fn json_and_toml_agree() {
        let t = parse_toml(
            "x",
            "[upstreams.a]\naddrs=['h:1']\n[[routes]]\nid='r'\npath='/*'\nto='a'\n",
        )
        .unwrap();
        let j = serde_json::to_string(&t).unwrap();
        assert_eq!(parse_any("y", &j).unwrap(), t);
    }
}
