//! The uwsgi protocol, as nginx's `uwsgi_pass` speaks it: estates built on uWSGI keep their
//! nginx in front and point it at fibhost (`uwsgi-socket = "127.0.0.1:3031"` or a unix socket
//! path). Each connection carries one request: a 4-byte header (modifier1 = 0, the size of the
//! vars block, modifier2), the vars block (CGI-style variables: `REQUEST_METHOD`,
//! `REQUEST_URI`, `HTTP_*`…), then `CONTENT_LENGTH` bytes of body. It is routed and served
//! through the same pools, limits, metrics and access log as HTTP, and answered, as uWSGI
//! does, with a plain HTTP/1.1 response; the connection closes after it.
//!
//! A bad packet (short, an unknown modifier, a vars block whose entries overrun it, a size
//! over `max-header-size`) closes the connection: nothing else is disturbed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{Context as _, Result, bail};
use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Request, Version};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

pub use crate::config::UwsgiAddress as Address;
use crate::server::{self, Ctx};

/// A bound uwsgi socket.
pub enum Listener {
    /// TCP.
    Tcp(std::net::TcpListener),
    /// A unix socket.
    Unix(std::os::unix::net::UnixListener),
}

impl Listener {
    /// Binds `address` (a stale unix socket file left by a previous run is replaced).
    pub fn bind(address: &Address) -> Result<Listener> {
        let hint =
            || format!("cannot listen for uwsgi on `{address}`; pick another with --uwsgi-socket");
        match address {
            Address::Tcp(addr) => {
                let listener = server::bind(*addr, false, "uwsgi-socket")?;
                Ok(Listener::Tcp(listener.into_std()?))
            }
            Address::Unix(path) => {
                if std::fs::symlink_metadata(path)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                {
                    std::fs::remove_file(path).with_context(hint)?;
                }
                let listener = std::os::unix::net::UnixListener::bind(path).with_context(hint)?;
                // Connectable by nginx's workers whatever user they run as (uWSGI's
                // `chmod-socket = 666`): the same reach as a loopback TCP port; restrict it
                // with the permissions of the socket's directory.
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
                    .with_context(hint)?;
                listener.set_nonblocking(true)?;
                Ok(Listener::Unix(listener))
            }
        }
    }

    /// Where it listens, as the startup line prints it.
    pub fn local_addr(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Listener::Unix(l) => (l.local_addr().ok())
                .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
                .unwrap_or_default(),
        }
    }

    fn try_clone(&self) -> std::io::Result<Listener> {
        Ok(match self {
            Listener::Tcp(l) => Listener::Tcp(l.try_clone()?),
            Listener::Unix(l) => Listener::Unix(l.try_clone()?),
        })
    }
}

/// Accepts uwsgi connections on `listener`, one accept loop per event-loop thread, until
/// `stopped` turns true; then waits for the requests in progress. Connections count against
/// the same `max-connections` bound as HTTP's (`connections`).
pub async fn serve(
    ctx: Arc<Ctx>,
    listener: Listener,
    handles: &[tokio::runtime::Handle],
    connections: Arc<Semaphore>,
    stopped: watch::Receiver<bool>,
) -> Result<()> {
    let mut threads = JoinSet::new();
    for handle in handles {
        let listener = listener
            .try_clone()
            .context("cannot share the uwsgi socket")?;
        let (ctx, connections, stopped) = (ctx.clone(), connections.clone(), stopped.clone());
        threads.spawn_on(accept_loop(listener, ctx, connections, stopped), handle);
    }
    while threads.join_next().await.is_some() {}
    Ok(())
}

async fn accept_loop(
    listener: Listener,
    ctx: Arc<Ctx>,
    connections: Arc<Semaphore>,
    mut stopped: watch::Receiver<bool>,
) {
    enum Bound {
        Tcp(TcpListener),
        Unix(UnixListener),
    }
    let bound = match listener {
        Listener::Tcp(l) => TcpListener::from_std(l).map(Bound::Tcp),
        Listener::Unix(l) => UnixListener::from_std(l).map(Bound::Unix),
    };
    let Ok(bound) = bound else {
        tracing::error!("an event-loop thread cannot watch the uwsgi socket");
        return;
    };
    let mut tasks = JoinSet::new();
    let mut errors = 0u32;
    loop {
        let permit = tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => break,
            permit = connections.clone().acquire_owned() => {
                permit.expect("the connection semaphore is never closed")
            }
        };
        let accepted = tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => break,
            accepted = async {
                match &bound {
                    Bound::Tcp(l) => l.accept().await.map(|(s, peer)| {
                        let _ = s.set_nodelay(true);
                        (Box::new(s) as Box<dyn Stream>, Some(peer))
                    }),
                    Bound::Unix(l) => l.accept().await.map(|(s, _)| (Box::new(s) as Box<dyn Stream>, None)),
                }
            } => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                errors = 0;
                accepted
            }
            Err(e) => {
                errors = (errors + 1).min(10);
                tracing::warn!(error = %e, "uwsgi accept failed; backing off");
                tokio::time::sleep(std::time::Duration::from_millis(5 << errors)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        tasks.spawn(async move {
            if let Err(e) = serve_one(stream, peer, &ctx).await {
                tracing::debug!(error = format!("{e:#}"), "uwsgi connection closed");
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// A connection's byte stream (TCP or unix).
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// Reads one uwsgi request from `stream`, serves it and writes the HTTP response.
async fn serve_one(
    mut stream: Box<dyn Stream>,
    peer: Option<SocketAddr>,
    ctx: &Arc<Ctx>,
) -> Result<()> {
    let limits = ctx.limits();
    let mut header = [0u8; 4];
    tokio::time::timeout(limits.header_read_timeout, stream.read_exact(&mut header))
        .await
        .context("no uwsgi packet within the header-read timeout")??;
    let (modifier1, size) = (
        header[0],
        usize::from(u16::from_le_bytes([header[1], header[2]])),
    );
    if modifier1 != 0 {
        bail!("uwsgi modifier1 {modifier1} is not 0 (a WSGI request)");
    }
    if size > limits.max_header_bytes {
        bail!("uwsgi vars block of {size} bytes exceeds max-header-size");
    }
    let mut block = vec![0u8; size];
    tokio::time::timeout(limits.header_read_timeout, stream.read_exact(&mut block))
        .await
        .context("the uwsgi vars block did not arrive within the header-read timeout")??;
    let vars = parse_vars(&block)?;
    let packet = Packet::from_vars(&vars)?;
    let peer = peer
        .or(packet.remote)
        .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0));
    let (mut reader, writer) = tokio::io::split(stream);
    let body_len = packet.content_length;
    // The body: exactly CONTENT_LENGTH bytes, streamed to the guest as they arrive.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let reading = async move {
        let mut left = body_len;
        while left > 0 {
            let mut chunk = BytesMut::with_capacity(left.min(64 * 1024) as usize);
            let read = (&mut reader).take(left).read_buf(&mut chunk).await;
            let result = match read {
                Ok(0) => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the uwsgi body is shorter than CONTENT_LENGTH",
                )),
                Ok(n) => {
                    left -= n as u64;
                    Ok(chunk.freeze())
                }
                Err(e) => Err(e),
            };
            let failed = result.is_err();
            if tx.send(result).await.is_err() || failed {
                break;
            }
        }
        reader
    };
    let request = packet
        .request
        .body(Streamed { rx, left: body_len })
        .context("the uwsgi vars do not make a valid request")?;
    let scheme = packet.scheme;
    let activity = server::untracked();
    let answer = async move {
        let response = server::handle(ctx.clone(), request, peer, scheme, activity).await;
        write_response(writer, response).await
    };
    let (_, written) = tokio::join!(reading, answer);
    written
}

/// Writes `response` as HTTP/1.1 (uWSGI's answer to nginx), then closes the stream.
async fn write_response<W: AsyncWrite + Unpin>(
    mut writer: W,
    response: http::Response<server::ServerBody>,
) -> Result<()> {
    let (parts, mut body) = response.into_parts();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    writer.write_all(&head).await?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(data) = frame.data_ref() {
            writer.write_all(data).await?;
        }
    }
    writer.shutdown().await?;
    Ok(())
}

/// A request body read from the uwsgi stream.
struct Streamed {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    left: u64,
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(data))) => {
                self.left = self.left.saturating_sub(data.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the uwsgi body ended early",
            )))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// The variables of a vars block, in order: `(u16 LE length, key, u16 LE length, value)*`.
fn parse_vars(mut block: &[u8]) -> Result<Vec<(&[u8], &[u8])>> {
    fn take<'a>(block: &mut &'a [u8]) -> Result<&'a [u8]> {
        if block.len() < 2 {
            bail!("a uwsgi var is cut short");
        }
        let len = usize::from(u16::from_le_bytes([block[0], block[1]]));
        if block.len() < 2 + len {
            bail!("a uwsgi var of {len} bytes overruns its block");
        }
        let (item, rest) = block[2..].split_at(len);
        *block = rest;
        Ok(item)
    }
    let mut vars = Vec::new();
    while !block.is_empty() {
        let key = take(&mut block)?;
        let value = take(&mut block)?;
        vars.push((key, value));
    }
    Ok(vars)
}

/// What a vars block says: the request (without its body), its scheme, body length and the
/// client's address.
struct Packet {
    request: http::request::Builder,
    scheme: Scheme,
    content_length: u64,
    remote: Option<SocketAddr>,
}

impl Packet {
    fn from_vars(vars: &[(&[u8], &[u8])]) -> Result<Packet> {
        let get = |key: &str| {
            vars.iter()
                .find(|(k, _)| *k == key.as_bytes())
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let method = get("REQUEST_METHOD").context("the uwsgi vars have no REQUEST_METHOD")?;
        let target = match get("REQUEST_URI").filter(|u| !u.is_empty()) {
            Some(uri) => uri,
            None => {
                let path = get("PATH_INFO")
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "/".into());
                match get("QUERY_STRING").filter(|q| !q.is_empty()) {
                    Some(query) => format!("{path}?{query}"),
                    None => path,
                }
            }
        };
        let https = get("HTTPS").is_some_and(|v| v.eq_ignore_ascii_case("on"))
            || get("REQUEST_SCHEME").is_some_and(|v| v.eq_ignore_ascii_case("https"))
            || get("UWSGI_SCHEME").is_some_and(|v| v.eq_ignore_ascii_case("https"));
        let content_length = match get("CONTENT_LENGTH").filter(|v| !v.is_empty()) {
            Some(v) => v
                .parse()
                .context("the uwsgi CONTENT_LENGTH is not a number")?,
            None => 0,
        };
        let mut request = Request::builder()
            .method(method.as_str())
            .uri(target)
            .version(Version::HTTP_11);
        let mut has_host = false;
        for (key, value) in vars {
            let name = match *key {
                b"CONTENT_TYPE" => HeaderName::from_static("content-type"),
                b"CONTENT_LENGTH" => HeaderName::from_static("content-length"),
                _ => match key.strip_prefix(b"HTTP_") {
                    Some(rest) => {
                        let name: Vec<u8> = (rest.iter())
                            .map(|b| {
                                if *b == b'_' {
                                    b'-'
                                } else {
                                    b.to_ascii_lowercase()
                                }
                            })
                            .collect();
                        HeaderName::from_bytes(&name)
                            .context("a uwsgi HTTP_ var is not a header name")?
                    }
                    None => continue,
                },
            };
            if value.is_empty() && name != http::header::HOST {
                continue;
            }
            has_host |= name == http::header::HOST;
            let value =
                HeaderValue::from_bytes(value).context("a uwsgi header value is invalid")?;
            request = request.header(name, value);
        }
        if !has_host && let Some(server) = get("SERVER_NAME") {
            let host = match get("SERVER_PORT") {
                Some(port) if !port.is_empty() => format!("{server}:{port}"),
                _ => server,
            };
            request = request.header(http::header::HOST, host);
        }
        let remote = get("REMOTE_ADDR").and_then(|addr| {
            let ip: IpAddr = addr.parse().ok()?;
            let port = get("REMOTE_PORT").and_then(|p| p.parse().ok()).unwrap_or(0);
            Some(SocketAddr::new(ip, port))
        });
        Ok(Packet {
            request,
            scheme: if https { Scheme::Https } else { Scheme::Http },
            content_length,
            remote,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(vars: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in vars {
            for item in [k, v] {
                out.extend_from_slice(&(item.len() as u16).to_le_bytes());
                out.extend_from_slice(item.as_bytes());
            }
        }
        out
    }

    #[test]
    fn vars_become_a_request() {
        let bytes = block(&[
            ("REQUEST_METHOD", "POST"),
            ("REQUEST_URI", "/5?x=1"),
            ("CONTENT_LENGTH", "3"),
            ("CONTENT_TYPE", "text/plain"),
            ("HTTP_HOST", "example.com"),
            ("HTTP_X_TRACE_ID", "abc"),
            ("REMOTE_ADDR", "10.0.0.7"),
            ("REMOTE_PORT", "5555"),
            ("HTTPS", "on"),
        ]);
        let vars = parse_vars(&bytes).unwrap();
        let packet = Packet::from_vars(&vars).unwrap();
        assert_eq!(packet.content_length, 3);
        assert_eq!(packet.remote.unwrap().to_string(), "10.0.0.7:5555");
        assert!(matches!(packet.scheme, Scheme::Https));
        let request = packet.request.body(()).unwrap();
        assert_eq!(request.method(), "POST");
        assert_eq!(request.uri(), "/5?x=1");
        assert_eq!(request.headers()["host"], "example.com");
        assert_eq!(request.headers()["x-trace-id"], "abc");
        assert_eq!(request.headers()["content-type"], "text/plain");
    }

    #[test]
    fn path_info_and_query_when_there_is_no_request_uri() {
        let bytes = block(&[
            ("REQUEST_METHOD", "GET"),
            ("PATH_INFO", "/9000"),
            ("QUERY_STRING", "a=b"),
            ("SERVER_NAME", "fib"),
            ("SERVER_PORT", "80"),
        ]);
        let packet = Packet::from_vars(&parse_vars(&bytes).unwrap()).unwrap();
        let request = packet.request.body(()).unwrap();
        assert_eq!(request.uri(), "/9000?a=b");
        assert_eq!(request.headers()["host"], "fib:80");
    }

    #[test]
    fn bad_blocks_are_refused() {
        assert!(
            parse_vars(&[5, 0, b'a']).is_err(),
            "a key overrunning the block"
        );
        assert!(parse_vars(&[1]).is_err(), "a cut length");
        let no_method = block(&[("REQUEST_URI", "/")]);
        assert!(Packet::from_vars(&parse_vars(&no_method).unwrap()).is_err());
        let lying = block(&[("REQUEST_METHOD", "GET"), ("CONTENT_LENGTH", "x")]);
        assert!(Packet::from_vars(&parse_vars(&lying).unwrap()).is_err());
    }
}
