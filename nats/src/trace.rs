//! The W3C trace context that follows a command through the pipeline: from
//! the HTTP request (its `traceparent` header) into the command's events (a
//! `traceparent` in their metadata), the relay's publish (the header of the
//! same name), and every follower of the log, which reads it from the entry
//! whether the entry came over NATS or from the Postgres log.
//!
//! Spans that carry it have the target [`TARGET`] and are exported only when
//! an OpenTelemetry layer records them (`HERALD_OTLP_ENDPOINT`); otherwise
//! they are disabled, [`current`] is `None` and nothing is formatted.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::LogEntry;

/// The target of every span of the pipeline's traces.
pub const TARGET: &str = "herald::trace";

/// The name of the trace context, as an HTTP and NATS header and as a key of
/// an event's metadata.
pub const TRACEPARENT: &str = "traceparent";

/// The `traceparent` naming the current span, when it is being recorded.
pub fn current() -> Option<String> {
    traceparent(&Span::current())
}

/// The `traceparent` naming `span`, when it is being recorded: version `00`,
/// its trace id, its span id and its flags.
fn traceparent(span: &Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span = context.span();
    let context = span.span_context();
    context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            context.trace_id(),
            context.span_id(),
            context.trace_flags().to_u8()
        )
    })
}

/// `span`, as a child of the span `traceparent` names, when both are there
/// (the span recorded, the trace context well-formed); else `span` as it was.
pub fn continued(span: Span, traceparent: Option<&str>) -> Span {
    if span.is_disabled() {
        return span;
    }
    if let Some(parent) = traceparent.and_then(parse) {
        // Fails only for a span already started, which a new one is not.
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }
    span
}

/// The span `span` makes, as a child of the span `traceparent` names; no span
/// at all for what carries no trace context (an event stored before tracing
/// was switched on, or while it was off), so that such work opens no trace of
/// its own.
fn following(traceparent: Option<&str>, span: impl FnOnce() -> Span) -> Span {
    match traceparent {
        Some(_) => continued(span(), traceparent),
        None => Span::none(),
    }
}

/// The span `what` (`publish`, `project`, `react`, `live`) of `entry`, done
/// by the follower `by` when one is named: a child of the span of the
/// command that stored the entry, or none for an entry stored untraced.
pub fn of_entry(what: &'static str, by: Option<&str>, entry: &LogEntry) -> Span {
    following(entry.traceparent(), || {
        let span = tracing::debug_span!(
            target: TARGET,
            "entry",
            otel.name = what,
            follower = tracing::field::Empty,
            position = entry.position,
            event_type = entry.event_type,
        );
        if let Some(by) = by {
            span.record("follower", by);
        }
        span
    })
}

/// The span context a `traceparent` of version `00` names.
fn parse(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.split('-');
    let (Some("00"), Some(trace_id), Some(span_id), Some(flags), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    if trace_id.len() != 32 || span_id.len() != 16 || flags.len() != 2 {
        return None;
    }
    let context = SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        SpanId::from_hex(span_id).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_traceparent_of_version_00_names_a_parent() {
        let parsed = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            parsed.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(parsed.span_id().to_string(), "00f067aa0ba902b7");
        assert!(parsed.is_sampled());
        for refused in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
        ] {
            assert!(parse(refused).is_none(), "{refused}");
        }
    }

    #[test]
    fn a_recorded_span_names_itself_and_a_span_continuing_it_joins_its_trace() {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt;

        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let command = tracing::info_span!(target: TARGET, "command");
            let named = traceparent(&command).unwrap();
            let context = parse(&named).unwrap();
            assert!(context.is_sampled());
            assert_eq!(named, command.in_scope(current).unwrap());

            let follower = following(
                Some(&named),
                || tracing::info_span!(target: TARGET, "project"),
            );
            let followed = parse(&traceparent(&follower).unwrap()).unwrap();
            assert_eq!(followed.trace_id(), context.trace_id());
            assert_ne!(followed.span_id(), context.span_id());

            let unrelated = tracing::info_span!(target: TARGET, "request");
            let unrelated = parse(&traceparent(&unrelated).unwrap()).unwrap();
            assert_ne!(unrelated.trace_id(), context.trace_id());
        });
    }

    #[test]
    fn without_an_opentelemetry_layer_nothing_is_traced() {
        let span = tracing::info_span!(target: TARGET, "request");
        assert_eq!(traceparent(&span), None);
        let span = continued(
            span,
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert_eq!(traceparent(&span), None);
        let followed = following(None, || tracing::info_span!(target: TARGET, "publish"));
        assert!(followed.is_none());
    }
}
