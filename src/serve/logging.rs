//! Log output of `serve` and `demo` on stderr: text, coloured only when stderr is a terminal
//! (a file or a pipe gets no escape codes), or one JSON object per line for log shippers.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Environment variable choosing the format: `text` (the default) or `json`.
pub const FORMAT_ENV: &str = "SWITCHYARD_LOG_FORMAT";
/// Environment variable holding the filter (`info` by default; e.g. `switchyard=debug`).
pub const FILTER_ENV: &str = "SWITCHYARD_LOG";

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogError {
    #[error("{FORMAT_ENV}={0:?}: expected \"text\" or \"json\"")]
    BadFormat(String),
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human-readable lines; colour only on a terminal, never with `NO_COLOR` set.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields`, `target`), never coloured.
    Json,
}

/// The format named by `value` (the content of [`FORMAT_ENV`]); unset or empty is text.
pub fn format_from(value: Option<&str>) -> Result<Format, LogError> {
    match value.map(str::trim) {
        None | Some("") => Ok(Format::Text),
        Some(v) if v.eq_ignore_ascii_case("text") => Ok(Format::Text),
        Some(v) if v.eq_ignore_ascii_case("json") => Ok(Format::Json),
        Some(v) => Err(LogError::BadFormat(v.to_string())),
    }
}

/// Installs the process's log subscriber on stderr, from [`FORMAT_ENV`] and [`FILTER_ENV`].
/// Runs once at the start of `serve` and `demo`; an unknown format is an error (nothing is
/// installed).
pub fn init() -> Result<Format, LogError> {
    let format = format_from(std::env::var(FORMAT_ENV).ok().as_deref())?;
    let filter = EnvFilter::try_from_env(FILTER_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `try_init` fails only when a subscriber is already installed (tests): keep that one.
    let _ = match format {
        Format::Text => builder.with_ansi(colour).try_init(),
        Format::Json => builder.json().with_ansi(false).try_init(),
    };
    Ok(format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(format_from(None), Ok(Format::Text));
        assert_eq!(format_from(Some("")), Ok(Format::Text));
        assert_eq!(format_from(Some("JSON")), Ok(Format::Json));
        assert_eq!(format_from(Some(" text ")), Ok(Format::Text));
        assert_eq!(
            format_from(Some("xml")).unwrap_err().to_string(),
            "SWITCHYARD_LOG_FORMAT=\"xml\": expected \"text\" or \"json\""
        );
    }
}
