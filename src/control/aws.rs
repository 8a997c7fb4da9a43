//! Shared AWS plumbing for the control plane: SDK configuration (credentials chain, region,
//! endpoint, retries, timeouts), the one function that turns SDK errors into one clear line,
//! duration parsing, and polling with a progress line.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_cloudfront::error::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// Flags every AWS subcommand accepts, before or after the action name.
#[derive(Debug, Clone, clap::Args)]
pub struct AwsArgs {
    /// Send every AWS call to this endpoint instead of AWS (moto, LocalStack, a proxy).
    /// Default: the SDK's own (`AWS_ENDPOINT_URL` or the service's public endpoint).
    #[arg(long, global = true, env = "AWS_ENDPOINT_URL", value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// AWS region. Default: the standard chain (`AWS_REGION`, profile), else us-east-1
    /// (CloudFront and Route53 are global and always use us-east-1).
    #[arg(long, global = true, value_name = "REGION")]
    pub region: Option<String>,
    /// Attempts per call, first one included; throttling, 5xx and transient network errors are
    /// retried with exponential backoff and jitter.
    #[arg(long, global = true, default_value_t = 5, value_name = "N")]
    pub max_attempts: u32,
    /// Print the result as JSON on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `--wait`, `--timeout` and `--poll-interval`, for commands whose change takes effect later.
#[derive(Debug, Clone, clap::Args)]
pub struct WaitArgs {
    /// After the change, poll until it has taken effect (progress on stderr).
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long (`90s`, `20m`); the change itself stays made.
    /// Default: 30m for CloudFront, 10m for Route53.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// Time between polls. Default: 20s for CloudFront, 5s for Route53.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub poll_interval: Option<Duration>,
}

/// A failed AWS call (or wait), as one line that says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error("{op}: access denied ({code}): {message}; check the credentials and IAM policy")]
    AccessDenied {
        op: String,
        code: String,
        message: String,
    },
    #[error("{op}: not found ({code}): {message}")]
    NotFound {
        op: String,
        code: String,
        message: String,
    },
    #[error("{op}: rejected as invalid ({code}): {message}")]
    Validation {
        op: String,
        code: String,
        message: String,
    },
    #[error("{op}: still throttled after retries ({code}): {message}; try again later")]
    Throttled {
        op: String,
        code: String,
        message: String,
    },
    #[error("{op}: precondition failed ({code}): the resource changed since it was read")]
    PreconditionFailed { op: String, code: String },
    #[error("{op}: AWS error ({code}): {message}")]
    Other {
        op: String,
        code: String,
        message: String,
    },
    #[error("{op}: no AWS credentials or region could be used: {message}")]
    Setup { op: String, message: String },
    #[error("{op}: could not reach the endpoint: {message}")]
    Unreachable { op: String, message: String },
    #[error("{op}: unexpected response: {message}")]
    Response { op: String, message: String },
    #[error("timed out after {waited:?} waiting for {what} (last state: {last}); the change was made and is still propagating")]
    WaitTimeout {
        what: String,
        waited: Duration,
        last: String,
    },
}

/// Which of [`AwsError`]'s kinds an error code belongs to; the codes are the union of what
/// CloudFront, API Gateway, Route53 and CloudWatch return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    AccessDenied,
    NotFound,
    Validation,
    Throttled,
    PreconditionFailed,
    Other,
}

/// Sorts an AWS error code. Decides only the message: what is retried is decided by the SDK's
/// standard retry classifier (throttling codes, 5xx, transient I/O), configured in [`load`].
pub fn kind_of(code: &str) -> ErrorKind {
    match code {
        "PreconditionFailed" | "InvalidIfMatchVersion" => ErrorKind::PreconditionFailed,
        "AccessDenied"
        | "AccessDeniedException"
        | "UnauthorizedOperation"
        | "UnauthorizedException"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "InvalidSignatureException"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "UnrecognizedClientException"
        | "MissingAuthenticationToken"
        | "MissingAuthenticationTokenException"
        | "NotAuthorizedException"
        | "IncompleteSignature" => ErrorKind::AccessDenied,
        "Throttling"
        | "ThrottlingException"
        | "ThrottledException"
        | "TooManyRequestsException"
        | "RequestLimitExceeded"
        | "RequestThrottled"
        | "RequestThrottledException"
        | "PriorRequestNotComplete"
        | "SlowDown"
        | "LimitExceededException" => ErrorKind::Throttled,
        "NotFoundException"
        | "ResourceNotFound"
        | "ResourceNotFoundException"
        | "EntityNotFound" => ErrorKind::NotFound,
        c if c.starts_with("NoSuch") || c.ends_with("NotFound") => ErrorKind::NotFound,
        "ValidationError"
        | "ValidationException"
        | "BadRequestException"
        | "MissingParameter"
        | "MalformedInput"
        | "TooManyCacheBehaviors"
        | "ConflictException"
        | "IllegalUpdate" => ErrorKind::Validation,
        c if c.starts_with("Invalid") => ErrorKind::Validation,
        _ => ErrorKind::Other,
    }
}

/// Turns a failed SDK call into one line naming the operation. Messages come from the service
/// (never from the request), so no credential can appear in them; they are cut to one line.
pub fn classify<E, R>(op: &str, err: SdkError<E, R>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let op = op.to_string();
    match &err {
        SdkError::ServiceError(se) => {
            let e = se.err();
            let code = e.code().unwrap_or("Unknown").to_string();
            let message = one_line(e.message().unwrap_or("(no message)"));
            match kind_of(&code) {
                ErrorKind::AccessDenied => AwsError::AccessDenied { op, code, message },
                ErrorKind::NotFound => AwsError::NotFound { op, code, message },
                ErrorKind::Validation => AwsError::Validation { op, code, message },
                ErrorKind::Throttled => AwsError::Throttled { op, code, message },
                ErrorKind::PreconditionFailed => AwsError::PreconditionFailed { op, code },
                ErrorKind::Other => AwsError::Other { op, code, message },
            }
        }
        SdkError::ConstructionFailure(_) => AwsError::Setup {
            op,
            message: one_line(&DisplayErrorContext(&err).to_string()),
        },
        SdkError::DispatchFailure(d) if !d.is_io() && !d.is_timeout() => AwsError::Setup {
            op,
            message: one_line(&DisplayErrorContext(&err).to_string()),
        },
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => AwsError::Unreachable {
            op,
            message: one_line(&DisplayErrorContext(&err).to_string()),
        },
        _ => AwsError::Response {
            op,
            message: one_line(&DisplayErrorContext(&err).to_string()),
        },
    }
}

/// First line of `s`, at most 300 characters, so that an error is always one line.
pub fn one_line(s: &str) -> String {
    let first = s
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if first.chars().count() > 300 {
        let cut: String = first.chars().take(300).collect();
        format!("{cut}…")
    } else {
        first.to_string()
    }
}

/// Loads the SDK configuration the way the AWS CLI does (environment, profile, SSO, process
/// credentials, IMDS), then applies `--region`, `--endpoint-url` and the standard retry mode
/// with `--max-attempts`. Runs once per command; the result is shared by every client it makes.
pub async fn load(args: &AwsArgs) -> SdkConfig {
    let retry = RetryConfig::standard()
        .with_max_attempts(args.max_attempts.max(1))
        .with_initial_backoff(Duration::from_millis(500))
        .with_max_backoff(Duration::from_secs(20));
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(30))
        .operation_timeout(Duration::from_secs(120))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(retry)
        .timeout_config(timeouts);
    if let Some(r) = &args.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(e) = &args.endpoint_url {
        loader = loader.endpoint_url(e.clone());
    }
    let conf = loader.load().await;
    if conf.region().is_none() {
        // CloudFront and Route53 are global; for CloudWatch and API Gateway a region is needed
        // to sign, and us-east-1 is the SDK's own fallback for global services.
        let mut b = conf.to_builder();
        b.set_region(Some(Region::from_static("us-east-1")));
        return b.build();
    }
    conf
}

/// Parses `90s`, `5m`, `1h`, `250ms` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 30s, 5m, 1h or 250ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use ms, s, m or h")),
    };
    if !secs.is_finite() || !(0.0..=7.0 * 86400.0).contains(&secs) {
        return Err(format!("{s:?} is out of range (0 to 7 days)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration for people: `45s`, `5m 30s`, `2h 5m`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        if d.as_millis() < 10_000 && d.subsec_millis() != 0 {
            return format!("{:.1}s", d.as_secs_f64());
        }
        format!("{s}s")
    } else if s < 3600 {
        if s.is_multiple_of(60) {
            format!("{}m", s / 60)
        } else {
            format!("{}m {}s", s / 60, s % 60)
        }
    } else {
        format!("{}h {}m", s / 3600, (s % 3600) / 60)
    }
}

/// Polls `poll` every `interval` until it reports done or `timeout` passes, printing one
/// progress line per poll on stderr (rewritten in place on a terminal). `poll` returns whether
/// the change has taken effect and a short state to show (`InProgress`, `PENDING`). The result
/// is how long it took; a timeout is [`AwsError::WaitTimeout`], and a failed poll ends the wait.
pub async fn wait_until<F, Fut>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut poll: F,
) -> Result<Duration, AwsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(bool, String), AwsError>>,
{
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut polls = 0u32;
    loop {
        let (done, state) = poll().await?;
        polls += 1;
        let elapsed = start.elapsed();
        let line = format!(
            "waiting for {what}: {state} ({} elapsed, poll {polls})",
            human_duration(elapsed)
        );
        let mut err = std::io::stderr().lock();
        // Progress is best effort: a closed stderr must not fail the command.
        if tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            if done {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{line}");
        }
        drop(err);
        if done {
            return Ok(elapsed);
        }
        if elapsed + interval > timeout {
            if tty {
                let _ = writeln!(std::io::stderr());
            }
            return Err(AwsError::WaitTimeout {
                what: what.to_string(),
                waited: elapsed,
                last: state,
            });
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(human_duration(Duration::from_secs(330)), "5m 30s");
    }

    #[test]
    fn error_kinds() {
        assert_eq!(kind_of("PreconditionFailed"), ErrorKind::PreconditionFailed);
        assert_eq!(
            kind_of("InvalidIfMatchVersion"),
            ErrorKind::PreconditionFailed
        );
        assert_eq!(kind_of("NoSuchDistribution"), ErrorKind::NotFound);
        assert_eq!(kind_of("NoSuchHostedZone"), ErrorKind::NotFound);
        assert_eq!(kind_of("NotFoundException"), ErrorKind::NotFound);
        assert_eq!(kind_of("AccessDenied"), ErrorKind::AccessDenied);
        assert_eq!(kind_of("InvalidChangeBatch"), ErrorKind::Validation);
        assert_eq!(kind_of("BadRequestException"), ErrorKind::Validation);
        assert_eq!(kind_of("Throttling"), ErrorKind::Throttled);
        assert_eq!(kind_of("ServiceUnavailable"), ErrorKind::Other);
    }

    #[test]
    fn one_line_cuts() {
        assert_eq!(one_line("a\nb"), "a");
        assert_eq!(one_line(&"x".repeat(400)).chars().count(), 301);
    }
}
