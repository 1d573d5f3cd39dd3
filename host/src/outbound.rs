//! Outgoing HTTP from guests, by grant: the `wasi:http/outgoing-handler` requests of one
//! route's instances go through one shared client (a connection pool per destination, a cap
//! on connections per destination, connect and first-byte timeouts, TLS verified against the
//! host's trust store). Anything not granted is answered `HTTP-request-denied`, logged once per
//! destination and counted. Redirects are never followed by the host: a guest that follows one
//! sends a new request, which is checked against the grants like any other.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioExecutor;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use crate::config::OutboundConfig;
use crate::lock;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

type Connector = Capped<hyper_rustls::HttpsConnector<HttpConnector>>;

/// A future the guest's `future-incoming-response` resolves from.
pub type Sent = Result<(http::Response<WasiBody>, IoFuture), Error>;
/// Reports a response-processing error (none here: errors surface in the body).
pub type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;

/// One route's outbound client.
pub struct Outbound {
    config: OutboundConfig,
    /// One semaphore per destination, shared with the connector: a connection holds a permit
    /// for as long as it is open, so at most `outbound-max-connections` are ever open there.
    slots: Slots,
    /// Built on the first granted request: a route that sends nothing never reads the trust
    /// store (a host without CA certificates still serves it).
    client: std::sync::OnceLock<Result<Client<Connector, WasiBody>, String>>,
    /// Destinations already logged as denied (each is logged once).
    denied: Mutex<HashSet<String>>,
    route: Arc<str>,
    metrics: OutboundMetrics,
}

impl Outbound {
    /// The client of `route`'s guests.
    pub fn new(route: &str, config: &OutboundConfig, metrics: OutboundMetrics) -> Outbound {
        Outbound {
            config: config.clone(),
            client: std::sync::OnceLock::new(),
            slots: Slots {
                max: config.max_connections,
                by_destination: Arc::new(Mutex::new(HashMap::new())),
            },
            denied: Mutex::new(HashSet::new()),
            route: Arc::from(route),
            metrics,
        }
    }

    fn client(&self) -> Result<&Client<Connector, WasiBody>, Error> {
        let built = self.client.get_or_init(|| {
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            http.set_connect_timeout(Some(self.config.connect_timeout));
            http.set_nodelay(true);
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_native_roots()
                .map_err(|e| format!("cannot read the host's TLS trust store: {e}"))?
                .https_or_http()
                .enable_http1()
                .wrap_connector(http);
            let connector = Capped {
                inner: connector,
                slots: self.slots.clone(),
            };
            Ok(Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(self.config.max_connections)
                .pool_idle_timeout(Duration::from_secs(60))
                .build(connector))
        });
        built.as_ref().map_err(|e| {
            tracing::error!(route = &*self.route, error = %e, "outbound HTTP unavailable");
            Error::DestinationUnavailable
        })
    }

    /// The granted destination of `uri` (`scheme://host:port`), or why it is refused.
    fn destination(&self, uri: &http::Uri) -> Result<String, Error> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(Error::HttpProtocolError),
        };
        let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let destination = format!("{}://{host}:{port}", if https { "https" } else { "http" });
        if self
            .config
            .grants
            .iter()
            .any(|g| g.allows(https, host, port))
        {
            Ok(destination)
        } else {
            let first = lock(&self.denied).insert(destination.clone());
            if first {
                tracing::warn!(
                    route = &*self.route,
                    destination,
                    "outbound request denied: not in `allow-outbound` (logged once per destination)"
                );
            }
            self.metrics.error(&self.route, "denied");
            Err(Error::HttpRequestDenied)
        }
    }

    /// Sends `request` if its destination is granted, and waits for the response head (within
    /// the first-byte timeout, which includes waiting for a free connection).
    pub async fn send(
        self: Arc<Self>,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Sent {
        let destination = self.destination(request.uri())?;
        let first_byte = options
            .and_then(|o| o.first_byte_timeout)
            .map_or(self.config.first_byte_timeout, |t| {
                t.min(self.config.first_byte_timeout)
            });
        let sent = tokio::time::timeout(first_byte, self.client()?.request(request)).await;
        let response = match sent {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                let error = classify(&e);
                self.metrics.error(&self.route, error.1);
                return Err(error.0);
            }
            Err(_) => {
                self.metrics.error(&self.route, "timeout");
                return Err(Error::ConnectionReadTimeout);
            }
        };
        self.metrics
            .response(&self.route, &destination, response.status().as_u16());
        let response = response.map(|body| body.map_err(Error::from).boxed_unsync());
        Ok((response, Box::new(async { Ok(()) })))
    }
}

/// The wasi-http error a client error maps to, and its metric label.
fn classify(e: &hyper_util::client::legacy::Error) -> (Error, &'static str) {
    use std::error::Error as _;
    if e.is_connect() {
        let refused = (e.source())
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
        let text = format!("{e:?}");
        return if refused || text.contains("ConnectionRefused") {
            (Error::ConnectionRefused, "refused")
        } else if text.contains("timed out") || text.contains("TimedOut") {
            (Error::ConnectionTimeout, "connect_timeout")
        } else if text.contains("certificate") || text.contains("tls") || text.contains("Tls") {
            (Error::TlsCertificateError, "tls")
        } else if text.contains("dns") || text.contains("failed to lookup") {
            (Error::DestinationNotFound, "dns")
        } else {
            (Error::DestinationUnavailable, "connect")
        };
    }
    (Error::HttpProtocolError, "protocol")
}

/// The connection slots of every destination.
#[derive(Clone)]
struct Slots {
    max: usize,
    by_destination: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl Slots {
    fn of(&self, uri: &http::Uri) -> Arc<Semaphore> {
        let key = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or("http"),
            uri.authority().map_or("", |a| a.as_str())
        );
        let mut all = lock(&self.by_destination);
        (all.entry(key))
            .or_insert_with(|| Arc::new(Semaphore::new(self.max)))
            .clone()
    }
}

/// A connector that opens a connection only with a slot of its destination, and keeps the
/// slot in the connection until it closes.
#[derive(Clone)]
struct Capped<C> {
    inner: C,
    slots: Slots,
}

impl<C> tower_service::Service<http::Uri> for Capped<C>
where
    C: tower_service::Service<http::Uri> + Clone + Send + 'static,
    C::Future: Send + 'static,
    C::Response: hyper::rt::Read + hyper::rt::Write + Connection + Unpin + Send + 'static,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Slotted<C::Response>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let slots = self.slots.of(&uri);
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let permit = slots.acquire_owned().await?;
            let io = inner.call(uri).await.map_err(Into::into)?;
            Ok(Slotted {
                io,
                _permit: permit,
            })
        })
    }
}

/// A connection holding its destination's slot.
struct Slotted<T> {
    io: T,
    _permit: OwnedSemaphorePermit,
}

impl<T: Connection> Connection for Slotted<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Slotted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Slotted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// Outbound requests by route, destination and status class, and errors by kind.
///
/// Defined here, not in `metrics`, so that this low room imports nothing above it; the
/// registry registers both families.
#[derive(Clone, Default)]
pub struct OutboundMetrics {
    /// Responses by route, destination and status class.
    pub responses: Family<Vec<(&'static str, String)>, Counter>,
    /// Failures by route and kind.
    pub errors: Family<Vec<(&'static str, String)>, Counter>,
}

impl OutboundMetrics {
    /// Counts a response from `destination` with `status`.
    pub fn response(&self, route: &str, destination: &str, status: u16) {
        let class =
            ["1xx", "2xx", "3xx", "4xx", "5xx"][usize::from((status / 100).clamp(1, 5)) - 1];
        let labels = vec![
            ("route", route.to_string()),
            ("destination", destination.to_string()),
            ("class", class.to_string()),
        ];
        self.responses.get_or_create(&labels).inc();
    }

    /// Counts an outbound request that failed with `kind` (denied, refused, timeout…).
    pub fn error(&self, route: &str, kind: &'static str) {
        let labels = vec![("route", route.to_string()), ("kind", kind.to_string())];
        self.errors.get_or_create(&labels).inc();
    }
}
