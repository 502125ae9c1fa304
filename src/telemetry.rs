//! Logging: tracing with text (default) or JSON lines; level from `RUST_LOG` (default info).

use tracing_subscriber::EnvFilter;

/// How log lines are written (`--log-format`, `KEFU_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global subscriber once; later calls (tests) are no-ops. Logs go to stderr so
/// command output on stdout stays machine-readable.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A closed stderr loses the log line; reporting that with `eprintln!` (the default)
        // would panic on the same closed stderr.
        .log_internal_errors(false)
        // Colour codes only for a person at a terminal, never into files or log shippers.
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
}
