//! Logging: JSON lines in Cloud Logging's structured format (or text for a terminal), filtered
//! by `RUST_LOG`.
//!
//! A JSON line carries `severity` (Cloud Logging's names), `message`, `time`, the event's and
//! its spans' fields, `logging.googleapis.com/trace` and `logging.googleapis.com/spanId` when
//! the request came with a trace context, and fields named `httpRequest.*` nested into the
//! `httpRequest` object that Cloud Logging shows as a request log.

use std::io::{BufWriter, IsTerminal, Write};

use serde::Serializer as _;
use serde::ser::SerializeMap;
use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// The span field holding the request's trace id (32 hex digits).
pub const TRACE_ID: &str = "trace_id";
/// The span field holding the caller's span id (16 hex digits).
pub const SPAN_ID: &str = "span_id";
/// Fields named `httpRequest.<name>` become `"httpRequest": {"<name>": ...}`.
const HTTP_REQUEST: &str = "httpRequest";

/// Lines waiting for the log thread; beyond this, the threads logging wait for room rather
/// than lose a line.
const BUFFERED_LINES: usize = 8_192;

/// Bytes gathered for one write; the log thread flushes whenever no line is waiting.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// `project` names the Cloud project whose traces the trace ids belong to. Lines go to
/// standard error from a thread of their own, many in one write; the returned guard writes out
/// what is left when dropped, so it is kept until the process ends.
#[must_use = "dropping the guard stops the logging"]
pub fn init(format: LogFormat, project: &str) -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(BUFFERED_LINES)
        .lossy(false)
        .thread_name("log-writer")
        .finish(BufWriter::with_capacity(
            WRITE_BUFFER_BYTES,
            std::io::stderr(),
        ));
    match format {
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter)
            .with(CloudLogging {
                project: project.to_owned(),
                writer,
            })
            .init(),
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(writer)
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
    }
    guard
}

/// Writes each event as one JSON line.
pub struct CloudLogging {
    pub project: String,
    pub writer: NonBlocking,
}

/// Recorded fields of a span or event, in the order first recorded; a field recorded again
/// keeps its place and takes the new value.
#[derive(Default, Clone)]
struct Fields(Vec<(&'static str, Value)>);

impl Fields {
    fn set(&mut self, name: &'static str, value: Value) {
        set_field(&mut self.0, name, value);
    }
}

/// Sets `name` to `value`: in its place if it is there, else last.
fn set_field<'a, V>(fields: &mut Vec<(&'a str, V)>, name: &'a str, value: V) {
    match fields.iter_mut().find(|(known, _)| *known == name) {
        Some(slot) => slot.1 = value,
        None => fields.push((name, value)),
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field.name(), Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field.name(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field.name(), Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field.name(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field.name(), Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.set(field.name(), Value::from(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.set(field.name(), Value::from(format!("{value:?}")));
    }
}

/// Cloud Logging's severity names.
fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

/// Keys of the entry itself: a field of the same name is left out.
const ENTRY_KEYS: [&str; 6] = [
    "severity",
    "time",
    "target",
    HTTP_REQUEST,
    "logging.googleapis.com/trace",
    "logging.googleapis.com/spanId",
];

impl CloudLogging {
    /// The Cloud Logging entry of an event, as one JSON line, with the fields of its spans
    /// (outermost first, so that inner values win) and its own. Written straight from the
    /// fields, without building a JSON tree first.
    fn line(&self, level: &Level, target: &str, layers: &[Fields]) -> Vec<u8> {
        let mut fields: Vec<(&str, &Value)> = Vec::new();
        for (name, value) in layers.iter().flat_map(|layer| &layer.0) {
            set_field(&mut fields, name, value);
        }
        let (http_request, fields): (Vec<_>, Vec<_>) = fields
            .into_iter()
            .partition(|(name, _)| name.starts_with("httpRequest."));
        let mut line = Vec::with_capacity(512);
        let written = (|| {
            let mut entry = serde_json::Serializer::new(&mut line);
            let mut entry = entry.serialize_map(None)?;
            entry.serialize_entry("severity", severity(level))?;
            entry.serialize_entry(
                "time",
                &chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            )?;
            entry.serialize_entry("target", target)?;
            for (name, value) in fields {
                match name {
                    TRACE_ID => entry.serialize_entry(
                        "logging.googleapis.com/trace",
                        &format!(
                            "projects/{}/traces/{}",
                            self.project,
                            value.as_str().unwrap_or_default()
                        ),
                    )?,
                    SPAN_ID => entry.serialize_entry("logging.googleapis.com/spanId", value)?,
                    _ if ENTRY_KEYS.contains(&name) => {}
                    _ => entry.serialize_entry(name, value)?,
                }
            }
            if !http_request.is_empty() {
                let nested: Vec<(&str, &Value)> = http_request
                    .into_iter()
                    .map(|(name, value)| (&name["httpRequest.".len()..], value))
                    .collect();
                entry.serialize_entry(HTTP_REQUEST, &NestedFields(&nested))?;
            }
            entry.end()
        })();
        if written.is_err() {
            line.clear();
            line.extend_from_slice(
                b"{\"severity\":\"ERROR\",\"message\":\"a log entry could not be written\"}",
            );
        }
        line.push(b'\n');
        line
    }
}

/// Fields as a JSON object.
struct NestedFields<'a>(&'a [(&'a str, &'a Value)]);

impl serde::Serialize for NestedFields<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().copied())
    }
}

impl<S> tracing_subscriber::Layer<S> for CloudLogging
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attributes: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        context: Context<'_, S>,
    ) {
        let mut fields = Fields::default();
        attributes.record(&mut fields);
        if let Some(span) = context.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        context: Context<'_, S>,
    ) {
        if let Some(span) = context.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, context: Context<'_, S>) {
        let mut layers: Vec<Fields> = context
            .event_scope(event)
            .into_iter()
            .flat_map(|scope| scope.from_root())
            .filter_map(|span| span.extensions().get::<Fields>().cloned())
            .collect();
        let mut own = Fields::default();
        event.record(&mut own);
        layers.push(own);
        let metadata = event.metadata();
        let line = self.line(metadata.level(), metadata.target(), &layers);
        // One write per line, so that lines from several threads never interleave.
        let _ = self.writer.clone().write_all(&line);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_entry_has_cloud_loggings_field_names() {
        let (writer, _guard) = tracing_appender::non_blocking(std::io::sink());
        let layer = CloudLogging {
            project: "my-project".to_owned(),
            writer,
        };
        let fields = |pairs: &[(&'static str, Value)]| {
            let mut fields = Fields::default();
            for (name, value) in pairs {
                fields.set(name, value.clone());
            }
            fields
        };
        let span = fields(&[
            (TRACE_ID, json!("0af7651916cd43dd8448eb211c80319c")),
            (SPAN_ID, json!("b7ad6b7169203331")),
            ("path", json!("/usage")),
            ("user", json!("outer")),
        ]);
        let event = fields(&[
            ("message", json!("request")),
            ("httpRequest.status", json!(200)),
            ("httpRequest.requestMethod", json!("POST")),
            ("user", json!("inner")),
            ("severity", json!("not a severity")),
        ]);
        let line = layer.line(&Level::WARN, "token_limits::http", &[span, event]);
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let entry: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(entry["user"], "inner", "inner values win");
        assert_eq!(entry["severity"], "WARNING");
        assert_eq!(entry["message"], "request");
        assert_eq!(
            entry["logging.googleapis.com/trace"],
            "projects/my-project/traces/0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(entry["logging.googleapis.com/spanId"], "b7ad6b7169203331");
        assert_eq!(
            entry["httpRequest"],
            json!({"status": 200, "requestMethod": "POST"})
        );
        assert_eq!(entry["path"], "/usage");
        assert!(chrono::DateTime::parse_from_rfc3339(entry["time"].as_str().unwrap()).is_ok());
        for (level, name) in [
            (Level::ERROR, "ERROR"),
            (Level::INFO, "INFO"),
            (Level::DEBUG, "DEBUG"),
            (Level::TRACE, "DEBUG"),
        ] {
            assert_eq!(severity(&level), name);
        }
    }
}
