//! Zero-downtime upgrade: a new `switchyard serve --upgrade` takes over the listening sockets
//! of the running one (pingora's fd passing over a Unix socket, triggered by SIGQUIT to the old
//! process), and the admin port and state directory follow.
//!
//! The data-plane sockets are shared by both processes for a moment (the same kernel sockets),
//! so no connection attempt is refused. The admin listener and the history database belong to
//! the control side, which pingora does not hand over: the old process closes both as soon as
//! the hand-over starts, and the new one binds and opens them then, retrying until they are
//! free. Until the old process exits it keeps serving with its last route table.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pingora::server::ExecutionPhase;

/// How long a new process waits for the old one to let the admin port and state go.
pub const RELEASE_DEADLINE: Duration = Duration::from_secs(30);

/// Default hand-over socket: `upgrade.sock` in the state directory, else
/// /tmp/switchyard-upgrade.sock.
pub fn sock_path(given: Option<&Path>, state: Option<&Path>) -> PathBuf {
    match (given, state) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(s)) => s.join("upgrade.sock"),
        (None, None) => PathBuf::from("/tmp/switchyard-upgrade.sock"),
    }
}

/// Runs `f` once, or with `upgrading` until it succeeds or [`RELEASE_DEADLINE`] passes (the
/// old process still holds what `f` needs); the last error is returned.
pub fn retry<T, E>(upgrading: bool, mut f: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let deadline = Instant::now() + RELEASE_DEADLINE;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if !upgrading || Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Resolves when this process starts handing its sockets to a new one (it got SIGQUIT); never
/// when the phase channel closes without that.
pub async fn handing_over(mut phases: tokio::sync::broadcast::Receiver<ExecutionPhase>) {
    loop {
        match phases.recv().await {
            Ok(
                ExecutionPhase::GracefulUpgradeTransferringFds
                | ExecutionPhase::GracefulUpgradeCloseTimeout,
            ) => return,
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                std::future::pending::<()>().await
            }
        }
    }
}

/// Why a self-upgrade (SIGUSR2) could not start.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("starting the new binary {path}: {error}")]
    Spawn { path: String, error: std::io::Error },
    #[error("no program path in this process's arguments")]
    NoProgram,
}

/// The command line of the process that takes over on SIGUSR2: this process's own arguments
/// (the program path first, so a binary replaced at that path is the one started) with
/// `--upgrade` added once.
pub fn successor_args() -> Result<Vec<std::ffi::OsString>, UpgradeError> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.is_empty() {
        return Err(UpgradeError::NoProgram);
    }
    if !args.iter().any(|a| a == "--upgrade") {
        args.push("--upgrade".into());
    }
    Ok(args)
}

/// Identity of the hand-over socket file, to tell a new one from a stale one.
fn sock_identity(path: &Path) -> Option<(u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.mtime(), m.mtime_nsec()))
}

/// On SIGUSR2 (`systemctl kill -s USR2 --kill-who=main switchyard`): starts the binary at
/// this process's program path with the same arguments plus `--upgrade`, waits until it
/// listens on the hand-over socket `sock` (up to 10 s), then sends this process SIGQUIT, so
/// the new one takes the sockets over and this one drains and exits. When the new binary does
/// not start, exits, or never listens, that is logged (and a lingering one killed) and this
/// process keeps serving.
pub async fn on_sigusr2(sock: PathBuf) {
    let mut usr2 = match tokio::signal::unix::signal(
        tokio::signal::unix::SignalKind::user_defined2(),
    ) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGUSR2; binary upgrades need `serve --upgrade` by hand");
            return;
        }
    };
    while usr2.recv().await.is_some() {
        let args = match successor_args() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "SIGUSR2: upgrade not started");
                continue;
            }
        };
        let program = args[0].clone();
        tracing::info!(program = %program.to_string_lossy(), "SIGUSR2: starting the new binary to take over");
        let stale = sock_identity(&sock);
        let mut child = match std::process::Command::new(&program)
            .args(&args[1..])
            .spawn()
        {
            Ok(c) => c,
            Err(error) => {
                let e = UpgradeError::Spawn {
                    path: program.to_string_lossy().into_owned(),
                    error,
                };
                tracing::error!(error = %e, "SIGUSR2: upgrade not started; this process keeps serving");
                continue;
            }
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let ready = loop {
            if let Ok(Some(status)) = child.try_wait() {
                tracing::error!(pid = child.id(), %status, "SIGUSR2: the new process exited before taking over; this process keeps serving");
                break false;
            }
            let now = sock_identity(&sock);
            if now.is_some() && now != stale {
                break true;
            }
            if Instant::now() >= deadline {
                tracing::error!(pid = child.id(), sock = %sock.display(), "SIGUSR2: the new process never listened on the hand-over socket; stopped it, this process keeps serving");
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if ready {
            tracing::info!(
                pid = child.id(),
                "new process waiting; handing over the sockets"
            );
            // pingora's SIGQUIT: send the listening sockets, drain, exit.
            // SAFETY: kill(2) on our own pid with a valid signal number has no memory effects.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGQUIT);
            }
            return;
        }
    }
}

/// Tells systemd (when started as a `Type=notify` unit: `$NOTIFY_SOCKET` set) that this
/// process is ready and is the unit's main process, which is what lets a process started by
/// an upgrade outlive the one it replaces. Does nothing outside systemd.
pub fn notify_systemd_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let msg = format!("MAINPID={}\nREADY=1\n", std::process::id());
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "systemd notification not sent");
            return;
        }
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let sent = match bytes.strip_prefix(b"@") {
        Some(name) => <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(msg.as_bytes(), &a)),
        None => sock.send_to(msg.as_bytes(), &path),
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "systemd notification not sent");
    }
}
