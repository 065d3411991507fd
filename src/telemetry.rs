//! Logging: JSON lines in Cloud Logging's structured format (or text for a terminal), filtered
//! by `RUST_LOG`.
//!
//! A JSON line carries `severity` (Cloud Logging's names), `message`, `time`, the event's and
//! its spans' fields, `logging.googleapis.com/trace` and `logging.googleapis.com/spanId` when
//! the request came with a trace context, and fields named `httpRequest.*` nested into the
//! `httpRequest` object that Cloud Logging shows as a request log.

use std::io::{BufWriter, IsTerminal, Write};

use serde_json::{Map, Value};
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

/// Recorded fields of a span or event.
#[derive(Default)]
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_owned(), Value::from(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::from(format!("{value:?}")));
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

impl CloudLogging {
    /// The Cloud Logging entry of an event with the fields of its spans (outermost first, so
    /// that inner values win) and its own.
    fn entry(&self, level: &Level, target: &str, fields: Vec<Map<String, Value>>) -> Value {
        let mut entry = Map::new();
        entry.insert("severity".to_owned(), Value::from(severity(level)));
        entry.insert(
            "time".to_owned(),
            Value::from(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        entry.insert("target".to_owned(), Value::from(target));
        let mut http_request = Map::new();
        for (name, value) in fields.into_iter().flatten() {
            if let Some(inner) = name.strip_prefix("httpRequest.") {
                http_request.insert(inner.to_owned(), value);
            } else if name == TRACE_ID {
                let trace = value.as_str().unwrap_or_default();
                entry.insert(
                    "logging.googleapis.com/trace".to_owned(),
                    Value::from(format!("projects/{}/traces/{trace}", self.project)),
                );
            } else if name == SPAN_ID {
                entry.insert("logging.googleapis.com/spanId".to_owned(), value);
            } else {
                entry.insert(name, value);
            }
        }
        if !http_request.is_empty() {
            entry.insert(HTTP_REQUEST.to_owned(), Value::Object(http_request));
        }
        Value::Object(entry)
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
        let mut layers: Vec<Map<String, Value>> = context
            .event_scope(event)
            .into_iter()
            .flat_map(|scope| scope.from_root())
            .filter_map(|span| span.extensions().get::<Fields>().map(|f| f.0.clone()))
            .collect();
        let mut own = Fields::default();
        event.record(&mut own);
        layers.push(own.0);
        let metadata = event.metadata();
        let entry = self.entry(metadata.level(), metadata.target(), layers);
        // One write per line, so that lines from several threads never interleave.
        let mut line = entry.to_string().into_bytes();
        line.push(b'\n');
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
        let span = json!({"trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "b7ad6b7169203331", "path": "/usage"});
        let event = json!({
            "message": "request",
            "httpRequest.status": 200,
            "httpRequest.requestMethod": "POST",
        });
        let entry = layer.entry(
            &Level::WARN,
            "token_limits::http",
            vec![
                span.as_object().unwrap().clone(),
                event.as_object().unwrap().clone(),
            ],
        );
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
