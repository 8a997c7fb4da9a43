//! The JSON access log: one line per request, written by a dedicated thread so the request path
//! only formats and hands the line over (and drops it, counted, if the writer falls behind).

use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

use serde::Serialize;

use crate::metrics::METRICS;

/// One access-log line.
#[derive(Serialize)]
pub struct Entry<'a> {
    pub time: String,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub upstream: &'a str,
    pub status: u16,
    pub duration_ms: f64,
    pub table_version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where access-log lines go.
#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<Vec<u8>>,
}

impl AccessLog {
    /// Starts the writer thread for `target`: `-` or `stdout` for standard output, else a file
    /// path opened for appending.
    pub fn start(target: &str) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = if target == "-" || target == "stdout" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(target)?,
            )
        };
        let (tx, rx) = sync_channel(16 * 1024);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(rx, out))?;
        Ok(AccessLog { tx })
    }

    /// Queues one line; never blocks.
    pub fn write(&self, e: &Entry<'_>) {
        let mut line = Vec::with_capacity(256);
        if serde_json::to_writer(&mut line, e).is_err() {
            return;
        }
        line.push(b'\n');
        if let Err(TrySendError::Full(_)) = self.tx.try_send(line) {
            METRICS.access_log_dropped.inc();
        }
    }
}

fn write_loop(rx: Receiver<Vec<u8>>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(&line);
        // Drain what is queued, then flush once.
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(&line);
        }
        let _ = out.flush();
    }
}

/// RFC 3339 time with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
