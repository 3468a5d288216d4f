//! Logging of every command: the tracing subscriber, text or JSON on stderr.

use clap::ValueEnum;

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the tracing subscriber; `RUST_LOG` overrides the default filter. `tokio_postgres` stays at
/// `info` or above because at debug it logs query parameters, which hold identifiers. Text logs are
/// coloured only when stderr is a terminal and `NO_COLOR` is not set (files and log collectors get no
/// ANSI escapes).
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .add_directive("tokio_postgres=info".parse().expect("valid directive"));
    let colour = use_colour(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Whether log lines get ANSI colours: only on a terminal, and not when `NO_COLOR` is set to a
/// non-empty value (<https://no-color.org>).
fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|value| value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::use_colour;
    use std::ffi::OsStr;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(!use_colour(false, None));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        // NO_COLOR set but empty does not disable colours (no-color.org).
        assert!(use_colour(true, Some(OsStr::new(""))));
    }
}
