//! What Herald tells about itself as it runs: log lines on stderr and, with
//! `HERALD_OTLP_ENDPOINT`, traces exported over OTLP/HTTP.
//!
//! A trace follows one request through the pipeline: the request, its
//! command and the commit, the relay's publish of each event, every
//! projection applying it, the process manager acting on it (and the
//! commands it issues, which go on in the same trace), and the live hub
//! pushing it. Those spans have the target [`herald_nats::trace::TARGET`];
//! only they, and warnings and errors inside them, are exported. Without an
//! endpoint they are disabled, and nothing is recorded or sent.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use axum::http::{Request, Response};
use bytes::Bytes;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::cli::{BoxError, LogWriter};
use crate::config::TracingArgs;

/// Longest an export may take before the batch is dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// What must be flushed before the process ends.
#[must_use = "spans not yet exported are lost unless it is shut down"]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

/// Sets the process's one subscriber: logs to stderr as JSON lines (one
/// object per event, with the request and correlation ids of the spans it
/// happened in) unless stderr is a terminal or `HERALD_LOG_FORMAT=text`,
/// filtered by `RUST_LOG`; and, with an OTLP endpoint, the pipeline's spans
/// exported to it in batches.
pub fn init(args: &TracingArgs) -> Result<Telemetry, BoxError> {
    use std::io::IsTerminal;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let json = match std::env::var("HERALD_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let logs = tracing_subscriber::fmt::layer().with_writer(|| LogWriter);
    let logs = if json {
        logs.json()
            .with_current_span(true)
            .with_span_list(true)
            .with_filter(filter)
            .boxed()
    } else {
        logs.with_filter(filter).boxed()
    };
    let traces = args.otlp_endpoint.as_ref().map(exporter).transpose()?;
    let exported = traces.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("herald"))
            .with_filter(
                Targets::new()
                    .with_target(herald_nats::trace::TARGET, Level::DEBUG)
                    .with_default(Level::WARN),
            )
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(exported)
        .try_init()?;
    Ok(Telemetry { traces })
}

impl Telemetry {
    /// Exports the spans still waiting, then stops exporting.
    pub async fn shutdown(self) {
        let Some(traces) = self.traces else {
            return;
        };
        // The batch's last export runs on this runtime while the call blocks.
        let flushed = tokio::task::spawn_blocking(move || traces.shutdown())
            .await
            .map_err(BoxError::from)
            .and_then(|flushed| flushed.map_err(BoxError::from));
        if let Err(err) = flushed {
            eprintln!("herald: exporting the last spans: {err}");
        }
    }
}

/// The spans' provider, exporting to the OTLP/HTTP collector at `endpoint`
/// (`/v1/traces` under it) with JSON bodies.
fn exporter(endpoint: &url::Url) -> Result<SdkTracerProvider, BoxError> {
    let client = ExportClient {
        http: reqwest::Client::builder().timeout(EXPORT_TIMEOUT).build()?,
        runtime: tokio::runtime::Handle::current(),
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(format!(
            "{}/v1/traces",
            endpoint.as_str().trim_end_matches('/')
        ))
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(client)
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("herald").build())
        .build())
}

/// Sends the exporter's requests with Herald's own HTTP client (rustls, as
/// every other outgoing call) on the Tokio runtime: the batch processor's
/// thread runs no runtime of its own.
#[derive(Debug)]
struct ExportClient {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl HttpClient for ExportClient {
    fn send_bytes<'life0, 'async_trait>(
        &'life0 self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let http = self.http.clone();
        let sent = self.runtime.spawn(async move {
            let response = http.execute(reqwest::Request::try_from(request)?).await?;
            let mut answer = Response::new(Bytes::new());
            *answer.status_mut() = response.status();
            *answer.headers_mut() = response.headers().clone();
            *answer.body_mut() = response.bytes().await?;
            Ok::<_, HttpError>(answer)
        });
        Box::pin(async move { sent.await? })
    }
}
