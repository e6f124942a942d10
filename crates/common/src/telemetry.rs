//! `tracing` set-up: JSON lines in containers, pretty output on a terminal.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `format` is `DIALSTACK_LOG_FORMAT` (`json`
/// or `pretty`, default `json`); the filter comes from `RUST_LOG` (default
/// `info`). Calling it twice is harmless (the second call does nothing).
pub fn init(format: Option<&str>, rust_log: Option<&str>) {
    let filter =
        EnvFilter::try_new(rust_log.unwrap_or("info")).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let _ = match format.unwrap_or("json") {
        "pretty" => builder.with_target(false).try_init(),
        _ => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
