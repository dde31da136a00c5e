//! Logging of a process: text for people or JSON lines for collectors, on
//! stderr, every line naming the service (tasks spawned by libraries do not
//! inherit spans, so the name is put on each line, not in a root span).

use std::io::IsTerminal as _;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, format};
use tracing_subscriber::registry::LookupSpan;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `<service> <time> <level> <target>: <message> <fields>`, for people.
    Text,
    /// One JSON object per line: `service`, `timestamp`, `level`, `fields`
    /// (`message` and the event's own), `target` and the current `span`.
    Json,
}

/// Logging options.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct LogOpts {
    /// Log line format: `text` for people, `json` (one object per line) for
    /// log collectors.
    #[arg(
        long,
        env = "STREAMGATE_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Which events to log, as a tracing filter: `info`, `warn`,
    /// `info,streamgate=debug`, ...
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_filter: String,
}

/// Installs the process's logger: `opts`, every line naming `service`.
///
/// # Errors
/// The filter does not parse, or a logger is installed already.
pub fn init(opts: &LogOpts, service: &'static str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(&opts.log_filter)
        .map_err(|e| format!("--log-filter {:?}: {e}", opts.log_filter))?;
    let installed = match opts.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .event_format(WithService::text(service, format()))
            .try_init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .event_format(WithService::json(
                service,
                format().json().with_span_list(false),
            ))
            .try_init(),
    };
    installed.map_err(|e| format!("logger: {e}"))
}

/// An event format that puts the service's name on every line: in front
/// of a text line, as the first key of a JSON object.
#[derive(Debug)]
pub struct WithService<F> {
    inner: F,
    service: &'static str,
    json: bool,
}

impl<F> WithService<F> {
    /// `inner`'s text lines, after the service's name.
    pub fn text(service: &'static str, inner: F) -> Self {
        Self {
            inner,
            service,
            json: false,
        }
    }

    /// `inner`'s JSON objects, with `"service"` first.
    pub fn json(service: &'static str, inner: F) -> Self {
        Self {
            inner,
            service,
            json: true,
        }
    }
}

impl<S, N, F> FormatEvent<S, N> for WithService<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        if !self.json {
            write!(writer, "{} ", self.service)?;
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => {
                let name = serde_json::to_string(self.service).map_err(|_| std::fmt::Error)?;
                write!(writer, "{{\"service\":{name},{rest}")
            }
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn text_of(buf: &Buf) -> String {
        String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf-8")
    }

    #[test]
    fn json_lines_carry_the_service_and_the_fields() {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .event_format(WithService::json(
                "cache",
                format().json().with_span_list(false),
            ))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(id = "cache-1", service = "other", "registered");
        });
        let out = text_of(&buf);
        let line: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
        assert_eq!(line["service"], "cache", "{out}");
        let fields = &line["fields"];
        assert_eq!(fields["message"], "registered");
        assert_eq!(fields["id"], "cache-1");
        assert_eq!(
            fields["service"], "other",
            "an event's own field keeps its name"
        );
        assert_eq!(line["level"], "INFO");
        assert!(out.starts_with("{\"service\":\"cache\","), "{out}");
    }

    #[test]
    fn text_lines_start_with_the_service() {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .event_format(WithService::text("upload", format()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(video_id = "v1", "stored");
        });
        let out = text_of(&buf);
        assert!(out.starts_with("upload "), "{out}");
        assert!(
            out.contains("WARN") && out.contains("stored video_id=\"v1\""),
            "{out}"
        );
    }
}
