//! W3C Trace Context (`traceparent`) propagation.
//!
//! Operators follow one operator input from Discord through bot-bridge to the
//! watcher by its trace id in both services' logs. The header format is small and
//! fixed (`00-<32 hex trace>-<16 hex span>-<2 hex flags>`), so it is parsed here by
//! hand instead of pulling the OpenTelemetry propagator into every request path;
//! the current context lives in a task-local set by the HTTP layer.

use std::fmt;
use std::future::Future;

use http::{HeaderMap, HeaderValue};
use rand::Rng;

/// Header name of W3C Trace Context.
pub const TRACEPARENT: &str = "traceparent";

/// One position in a distributed trace.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

impl TraceContext {
    /// A new trace (sampled).
    pub fn new_root() -> Self {
        let mut rng = rand::rng();
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        rng.fill(&mut trace_id);
        rng.fill(&mut span_id);
        Self {
            trace_id,
            span_id,
            flags: 1,
        }
    }

    /// A new span in the same trace.
    pub fn child(&self) -> Self {
        let mut span_id = [0u8; 8];
        rand::rng().fill(&mut span_id);
        Self { span_id, ..*self }
    }

    /// Parses a `traceparent` value; `None` for anything malformed, all-zero ids
    /// or the reserved version `ff`, as the spec requires.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2 || version.eq_ignore_ascii_case("ff") {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        let mut flag = [0u8; 1];
        hex::decode_to_slice(trace, &mut trace_id).ok()?;
        hex::decode_to_slice(span, &mut span_id).ok()?;
        hex::decode_to_slice(flags, &mut flag).ok()?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags: flag[0],
        })
    }

    pub fn trace_id(&self) -> String {
        hex::encode(self.trace_id)
    }

    pub fn span_id(&self) -> String {
        hex::encode(self.span_id)
    }

    /// The `traceparent` header value.
    pub fn header_value(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            self.trace_id(),
            self.span_id(),
            self.flags
        )
    }

    /// The context of the current task, if a request or caller set one.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(|c| *c).ok()
    }

    /// The current context, or a new root when there is none.
    pub fn current_or_new() -> Self {
        Self::current().unwrap_or_else(Self::new_root)
    }

    /// Runs `fut` with this context as the current one.
    pub async fn scope<F: Future>(self, fut: F) -> F::Output {
        CURRENT.scope(self, fut).await
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.header_value())
    }
}

/// Adds a `traceparent` for an outgoing request: a child of the current context
/// (so the callee's spans join this trace), or a new root. Returns the context
/// sent so the caller can log it.
pub fn inject(headers: &mut HeaderMap) -> TraceContext {
    let cx = TraceContext::current_or_new().child();
    if let Ok(v) = HeaderValue::from_str(&cx.header_value()) {
        headers.insert(TRACEPARENT, v);
    }
    cx
}

/// Reads the incoming `traceparent`, if valid.
pub fn extract(headers: &HeaderMap) -> Option<TraceContext> {
    headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_the_spec_example() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = TraceContext::parse(v).unwrap();
        assert_eq!(cx.header_value(), v);
        assert_eq!(cx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = cx.child();
        assert_eq!(child.trace_id(), cx.trace_id());
        assert_ne!(child.span_id(), cx.span_id());
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad}");
        }
    }

    #[tokio::test]
    async fn inject_continues_the_current_trace() {
        let cx = TraceContext::new_root();
        let mut headers = HeaderMap::new();
        let sent = cx.scope(async { inject(&mut headers) }).await;
        let got = extract(&headers).unwrap();
        assert_eq!(got, sent);
        assert_eq!(got.trace_id(), cx.trace_id());
    }
}
