//! Test harness for the AWS subcommands: starts one moto_server per test binary on an ephemeral
//! loopback port (stopped when the test process exits), runs the built `switchyard` binary
//! with test credentials and nothing from the developer's environment, and builds SDK clients
//! that check the resulting state.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_cloudfront::config::Credentials;

/// The moto_server binary: `$MOTO_SERVER`, else `<repo>/.venv/bin/moto_server`.
fn moto_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MOTO_SERVER") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server")
}

struct Moto {
    url: String,
    // Held open for the life of the test process; when it closes, the wrapper kills moto.
    _stdin: Mutex<ChildStdin>,
}

static MOTO: OnceLock<Moto> = OnceLock::new();

/// The URL of this test binary's moto_server, started on first use. Panics (fails the test)
/// with instructions when moto_server is not installed.
pub fn moto() -> &'static str {
    &MOTO.get_or_init(start_moto).url
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

fn start_moto() -> Moto {
    let bin = moto_binary();
    assert!(
        bin.is_file(),
        "moto_server not found at {} — install it with `python3 -m venv .venv && .venv/bin/pip install 'moto[server]'` at the repo root, or set MOTO_SERVER to its path",
        bin.display()
    );
    let port = free_port();
    let log = std::env::temp_dir().join(format!("switchyard-moto-{port}.log"));
    // `read` returns when this process's end of the pipe closes (the test binary exited, even
    // by a panic or a kill), and then moto is stopped: no server outlives the tests.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#""$0" -H 127.0.0.1 -p "$1" >"$2" 2>&1 & pid=$!; read _x; kill $pid 2>/dev/null; wait $pid"#)
        .arg(&bin)
        .arg(port.to_string())
        .arg(&log)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .spawn()
        .expect("cannot start sh for moto_server");
    let stdin = child.stdin.take().expect("moto stdin");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if http_ok(port, "/moto-api/") {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "moto_server exited ({status}) before serving; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "moto_server did not answer on {url} within 90s; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Moto {
        url,
        _stdin: Mutex::new(stdin),
    }
}

fn http_ok(port: u16, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if n >= 12 && buf.starts_with(b"HTTP/1.") && &buf[9..12] == b"200")
}

/// A finished `switchyard` run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Panics with both streams unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "exit code {} (wanted {code})\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    pub fn ok(&self) -> &Run {
        self.expect_code(0)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// Runs the built binary against `endpoint` with test credentials; HOME and the state dir
/// are `home`, so nothing of the developer's (credentials, profiles, state) is read.
pub async fn switchyard(endpoint: &str, home: &Path, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("SWITCHYARD_STATE_DIR", home.join("state"))
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", home.join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            home.join("no-aws-credentials"),
        )
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run switchyard");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

macro_rules! client_fn {
    ($name:ident, $krate:ident) => {
        /// An SDK client for checking state, configured only from arguments (no files, no env).
        pub fn $name(endpoint: &str) -> $krate::Client {
            let conf = $krate::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .endpoint_url(endpoint)
                .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
                .build();
            $krate::Client::from_conf(conf)
        }
    };
}

client_fn!(cloudfront, aws_sdk_cloudfront);
client_fn!(apigateway, aws_sdk_apigateway);
client_fn!(route53, aws_sdk_route53);
client_fn!(cloudwatch, aws_sdk_cloudwatch);

/// A name no other test in this run uses (moto is shared by the whole test binary).
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
