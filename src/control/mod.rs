//! The control plane: subcommands that show, make, wait for and undo the outside changes of a
//! migration (CloudFront behaviors, API Gateway stages, Route53 weights, CloudWatch gates, the
//! database cutover). One module per outside system; [`aws`] holds what the AWS ones share.

pub mod apigateway;
pub mod aws;
pub mod cloudfront;
pub mod cloudwatch;
pub mod db;
pub mod dns;

use std::io::Write;
use std::process::ExitCode;

use serde::Serialize;

/// The AWS subcommands, flattened into switchyard's top-level subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ControlCommand {
    /// CloudFront cache behaviors: plan/apply a route table, roll one path back, export.
    Cloudfront(cloudfront::Args),
    /// API Gateway REST API stages: deployment history, rollback, canary, promote.
    Apigw(apigateway::Args),
    /// Route53: status, shift weights, lower TTL, delegate a subdomain, switch / undo plain and
    /// alias records, weighted <-> plain, failover, registrar name servers.
    Dns(dns::Args),
    /// CloudWatch metrics: query a window, gate on an error rate, publish proxy counters.
    Metrics(cloudwatch::Args),
    /// MySQL/MariaDB: status, preflight, GTID replication, cutover under a proxy hold, rollback.
    Db(db::Args),
}

/// Runs one AWS subcommand to completion. Failures are printed here, as one line on stderr,
/// and become exit code 2 (this includes `cloudfront apply` stopping because the distribution
/// changed under it); exit code 1 means a check said no (`metrics gate` closed); 0 is success. `Err` is only returned if stdout cannot be
/// written.
pub async fn run(cmd: ControlCommand) -> anyhow::Result<ExitCode> {
    match execute(cmd).await {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(out.text.as_bytes())?;
            if !out.text.is_empty() && !out.text.ends_with('\n') {
                stdout.write_all(b"\n")?;
            }
            stdout.flush()?;
            Ok(ExitCode::from(out.code))
        }
        Err(msg) => {
            eprintln!("error: {}", aws::one_line(&msg));
            Ok(ExitCode::from(2))
        }
    }
}

/// Runs one AWS subcommand and returns what it would print and its exit code, or its failure
/// as text; nothing is printed here but `--wait` progress on stderr. Used by [`run`] and by
/// plan `control` steps.
pub async fn execute(cmd: ControlCommand) -> Result<Output, String> {
    match cmd {
        ControlCommand::Cloudfront(a) => cloudfront::run(a).await.map_err(|e| e.to_string()),
        ControlCommand::Apigw(a) => apigateway::run(a).await.map_err(|e| e.to_string()),
        ControlCommand::Dns(a) => dns::run(a).await.map_err(|e| e.to_string()),
        ControlCommand::Metrics(a) => cloudwatch::run(a).await.map_err(|e| e.to_string()),
        ControlCommand::Db(a) => db::run(a).await.map_err(|e| e.to_string()),
    }
}

/// What a subcommand prints on stdout and its exit code.
#[derive(Debug)]
pub struct Output {
    /// Text or JSON, already rendered.
    pub text: String,
    /// 0 done, 1 a check said no.
    pub code: u8,
}

impl Output {
    /// Renders `value` as pretty JSON when `json`, else as `human()`; exit code 0.
    pub fn new<T: Serialize>(json: bool, value: &T, human: impl FnOnce(&T) -> String) -> Output {
        let text = if json {
            serde_json::to_string_pretty(value)
                .unwrap_or_else(|e| format!("{{\"error\": \"cannot render JSON: {e}\"}}"))
        } else {
            human(value)
        };
        Output { text, code: 0 }
    }

    /// The same output with another exit code.
    pub fn with_code(mut self, code: u8) -> Output {
        self.code = code;
        self
    }
}

/// Left-aligned text table: every column as wide as its widest cell, two spaces between.
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 < r.len() {
                line.push_str(&format!("{c:<w$}  ", w = widths[i]));
            } else {
                line.push_str(c);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
