//! What every request leaves behind: a span carrying its trace context, one request log line
//! with Cloud Logging's `httpRequest` fields, and the HTTP metrics. Only the path is logged:
//! query strings and headers (tokens) never are.
//!
//! A metric label never carries request text as it came: every label value is one of a closed
//! set (a standard method or `other`, a route template or `unmatched`), so that no client can
//! add series. The log line keeps the request's text, cut to a bounded length.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use tracing::field::Empty;

use crate::metrics::{HTTP_REQUEST_DURATION, HTTP_REQUESTS, HTTP_REQUESTS_IN_FLIGHT};
use crate::telemetry::{SPAN_ID, TRACE_ID};

pub async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = bounded(request.method().as_str());
    let method_label = method_label(request.method());
    let path = bounded(request.uri().path());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let user_agent = header_text(request.headers(), header::USER_AGENT).map(|text| bounded(&text));
    let remote_ip = client_ip(&request).map(|ip| bounded(&ip));
    let span = tracing::info_span!("request", trace_id = Empty, span_id = Empty);
    if let Some(context) = TraceContext::from_headers(request.headers()) {
        span.record(TRACE_ID, context.trace_id.as_str());
        span.record(SPAN_ID, context.span_id.as_str());
    }
    let in_flight = InFlight::start();
    let response = next.run(request).instrument(span.clone()).await;
    drop(in_flight);

    let latency = started.elapsed();
    let status = response.status().as_u16();
    span.in_scope(|| {
        tracing::info!(
            httpRequest.requestMethod = %method,
            httpRequest.requestUrl = %path,
            httpRequest.status = status,
            httpRequest.latency = %format!("{:.6}s", latency.as_secs_f64()),
            httpRequest.userAgent = user_agent.as_deref(),
            httpRequest.remoteIp = remote_ip.as_deref(),
            "request"
        );
    });
    let labels = [("route", route), ("method", method_label)];
    metrics::histogram!(HTTP_REQUEST_DURATION, &labels).record(latency.as_secs_f64());
    let [route, method] = labels;
    metrics::counter!(
        HTTP_REQUESTS,
        &[route, method, ("status", status.to_string())]
    )
    .increment(1);
    response
}

/// The methods a metric label names; any other is `other`.
const LABELLED_METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
    Method::CONNECT,
    Method::TRACE,
];

fn method_label(method: &Method) -> String {
    if LABELLED_METHODS.contains(method) {
        method.as_str().to_owned()
    } else {
        "other".to_owned()
    }
}

/// The longest request text (in characters) a log line carries: a request head may be hundreds
/// of kilobytes, a log entry should not be.
const LOGGED_TEXT_MAX_CHARS: usize = 1024;

/// `text`, cut to `LOGGED_TEXT_MAX_CHARS` with `…` marking the cut.
fn bounded(text: &str) -> String {
    match text.char_indices().nth(LOGGED_TEXT_MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Counts a request in flight until it is answered or dropped (a client gone away).
struct InFlight;

impl InFlight {
    fn start() -> Self {
        metrics::gauge!(HTTP_REQUESTS_IN_FLIGHT).increment(1.0);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(HTTP_REQUESTS_IN_FLIGHT).decrement(1.0);
    }
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// The client, as the front end that forwarded the request saw it, else the peer.
fn client_ip(request: &Request) -> Option<String> {
    header_text(
        request.headers(),
        header::HeaderName::from_static("x-forwarded-for"),
    )
    .and_then(|forwarded| forwarded.split(',').next().map(|ip| ip.trim().to_owned()))
    .filter(|ip| !ip.is_empty())
    .or_else(|| {
        request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| peer.ip().to_string())
    })
}

/// The trace a request belongs to, from W3C `traceparent` or Google's
/// `X-Cloud-Trace-Context`.
#[derive(Debug, PartialEq, Eq)]
struct TraceContext {
    /// 32 lowercase hex digits.
    trace_id: String,
    /// 16 lowercase hex digits.
    span_id: String,
}

impl TraceContext {
    fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let text = |name: &'static str| headers.get(name).and_then(|value| value.to_str().ok());
        text("traceparent")
            .and_then(Self::from_traceparent)
            .or_else(|| text("x-cloud-trace-context").and_then(Self::from_cloud_trace))
    }

    /// `00-<trace id>-<span id>-<flags>`.
    fn from_traceparent(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (Some(version), Some(trace_id), Some(span_id), Some(_flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        (version.len() == 2 && hex_id(trace_id, 32) && hex_id(span_id, 16)).then(|| Self {
            trace_id: trace_id.to_ascii_lowercase(),
            span_id: span_id.to_ascii_lowercase(),
        })
    }

    /// `<trace id>/<decimal span id>;o=<options>`.
    fn from_cloud_trace(value: &str) -> Option<Self> {
        let (trace_id, rest) = value.trim().split_once('/')?;
        let span = rest.split(';').next()?.parse::<u64>().ok()?;
        (hex_id(trace_id, 32) && span != 0).then(|| Self {
            trace_id: trace_id.to_ascii_lowercase(),
            span_id: format!("{span:016x}"),
        })
    }
}

/// `len` hex digits, not all zero (an invalid id in both formats).
fn hex_id(id: &str, len: usize) -> bool {
    id.len() == len && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_standard_methods_are_label_values() {
        for standard in [
            "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
        ] {
            let method = Method::from_bytes(standard.as_bytes()).unwrap();
            assert_eq!(method_label(&method), standard);
        }
        for invented in ["X0Y", "get", "PROPFIND", "QUERY", "A-VERY-LONG-METHOD-NAME"] {
            let method = Method::from_bytes(invented.as_bytes()).unwrap();
            assert_eq!(method_label(&method), "other", "{invented}");
        }
    }

    #[test]
    fn logged_request_text_is_cut_to_its_bound() {
        assert_eq!(bounded("GET"), "GET");
        let at_bound = "a".repeat(LOGGED_TEXT_MAX_CHARS);
        assert_eq!(bounded(&at_bound), at_bound);
        let cut = bounded(&"é".repeat(400_000));
        assert_eq!(cut.chars().count(), LOGGED_TEXT_MAX_CHARS + 1);
        assert!(cut.ends_with("é…"), "{cut}");
    }

    #[test]
    fn both_trace_headers_are_read() {
        let parent = TraceContext::from_traceparent(
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        )
        .unwrap();
        assert_eq!(
            parent,
            TraceContext {
                trace_id: "0af7651916cd43dd8448eb211c80319c".to_owned(),
                span_id: "b7ad6b7169203331".to_owned(),
            }
        );
        let cloud =
            TraceContext::from_cloud_trace("105445aa7843bc8bf206b12000100000/1;o=1").unwrap();
        assert_eq!(cloud.trace_id, "105445aa7843bc8bf206b12000100000");
        assert_eq!(cloud.span_id, "0000000000000001");
        for bad in [
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd-b7ad6b7169203331-01",
            "garbage",
        ] {
            assert_eq!(TraceContext::from_traceparent(bad), None, "{bad}");
        }
        for bad in [
            "105445aa7843bc8bf206b12000100000",
            "xyz/1;o=1",
            "105445aa7843bc8bf206b12000100000/abc",
        ] {
            assert_eq!(TraceContext::from_cloud_trace(bad), None, "{bad}");
        }
    }
}
