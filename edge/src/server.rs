//! The edge's HTTP side: the accept loop, the WebSocket upgrade at `/ws`,
//! the health endpoints, `GET /metrics`, and the browser client
//! (`/gpush.js`) with its demo page (`/`, only where `demo_page` is on),
//! both compiled into the binary from `edge/assets/`. Under the test-only
//! `conformance_echo`, `/` is a WebSocket upgrade instead of the demo page.
//!
//! We run hyper ourselves rather than `axum::serve` so that an upgraded
//! connection can be turned back into its `TcpStream`: the connection task
//! then waits for readiness on the bare socket and owns its write path.
//! With TLS configured, every connection's TLS handshake runs in its own
//! task before HTTP, and an upgraded TLS connection reaches the connection
//! task through [`tls`](crate::tls).

use crate::conn;
use crate::metrics::Handshake;
use crate::protocol::WireFormat;
use crate::state::EdgeState;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// A client connection before its upgrade: plain TCP or TLS over TCP. Only
/// the HTTP exchange runs on it; the connection task gets the bare
/// `TcpStream` back, or a [`TlsSocket`](crate::tls::TlsSocket).
pub(crate) type ClientStream = Either<TcpStream, TlsStream<TcpStream>>;

/// The browser client, served at `/gpush.js`.
pub(crate) const CLIENT_JS: &str = include_str!("../assets/gpush.js");
/// The demo page, served at `/` with [`PUSH_PORT_PLACEHOLDER`] filled in.
pub(crate) const DEMO_PAGE: &str = include_str!("../assets/index.html");
/// Where the demo page takes the standalone push API's HTTP port (empty on
/// a clustered edge, whose push API is ingress).
pub(crate) const PUSH_PORT_PLACEHOLDER: &str = "%GPUSH_PUSH_PORT%";
/// Browsers may reuse the client for a few minutes, so a new release
/// reaches them soon after the edges are upgraded.
pub(crate) const CLIENT_JS_CACHE: &str = "public, max-age=300";
/// Browsers revalidate the demo page every time.
pub(crate) const DEMO_PAGE_CACHE: &str = "no-cache";

/// The edge's routes.
pub(crate) fn router(shared: Arc<EdgeState>) -> Router {
    let push_port = shared
        .config
        .standalone
        .then(|| shared.config.http_addr().port().to_string());
    let page = Bytes::from(DEMO_PAGE.replace(
        PUSH_PORT_PLACEHOLDER,
        push_port.as_deref().unwrap_or_default(),
    ));
    let demo_page = shared.config.demo_page();
    let router = if shared.config.conformance_echo {
        // Test only: Autobahn's cases open their WebSocket at `/`.
        Router::new().route("/", get(upgrade))
    } else {
        Router::new().route(
            "/",
            get(move || async move {
                if demo_page {
                    asset(page, "text/html; charset=utf-8", DEMO_PAGE_CACHE)
                } else {
                    refuse(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        "the demo page is off on this edge (demo_page)",
                    )
                }
            }),
        )
    };
    router
        .route(
            "/gpush.js",
            get(|| async {
                asset(
                    Bytes::from_static(CLIENT_JS.as_bytes()),
                    "text/javascript; charset=utf-8",
                    CLIENT_JS_CACHE,
                )
            }),
        )
        .route("/ws", get(upgrade))
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// Accepts connections until `stop` is cancelled.
///
/// At most `max_handshakes` accepted connections may be in their handshake
/// (not yet upgraded) at once: beyond that the loop stops accepting until
/// one finishes, and new connections wait in the listen backlog. Each
/// handshake, HTTP request included, must be done within
/// `handshake_timeout`, or the socket is closed (plain HTTP connections
/// too, keep-alive or not). A slowloris client therefore holds a slot for
/// at most `handshake_timeout`, and upgraded connections never count.
/// With `tls`, the TLS handshake is part of it (same deadline).
pub(crate) async fn accept(
    listener: TcpListener,
    router: Router,
    shared: Arc<EdgeState>,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) {
    let handshakes = Arc::new(Semaphore::new(shared.config.max_handshakes));
    let handshake_timeout = shared.config.handshake_timeout;
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            permit = handshakes.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and similar: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        let tls = tls.clone();
        let connection = async move {
            // Held until the connection is upgraded or closed.
            let _permit = permit;
            let deadline = tokio::time::Instant::now() + handshake_timeout;
            let stream: ClientStream = match &tls {
                None => Either::Left(stream),
                Some(acceptor) => {
                    match crate::tls::handshake(acceptor, stream, deadline, &stop).await {
                        Some(stream) => Either::Right(stream),
                        None => return,
                    }
                }
            };
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(handshake_timeout);
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                // Dropping the connection closes the socket.
                () = tokio::time::sleep_until(deadline) => {
                    tracing::debug!("handshake timed out");
                }
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    // A response a client stops reading must not hold up
                    // the drain past the handshake deadline.
                    let _ = tokio::time::timeout_at(deadline, connection).await;
                }
            }
        };
        shared.tracker.spawn(connection.in_current_span());
    }
}

/// A static asset with its type and caching headers.
fn asset(body: Bytes, content_type: &'static str, cache: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, cache),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// `GET /metrics`: the edge's metrics in the Prometheus text format.
async fn metrics(State(shared): State<Arc<EdgeState>>) -> Response {
    match shared.metrics.render() {
        Ok(text) => (
            [(header::CONTENT_TYPE, gpush_common::metrics::CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn ready(State(shared): State<Arc<EdgeState>>) -> Response {
    if shared.is_ready() {
        axum::Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "bus not connected"})),
        )
            .into_response()
    }
}

fn bad_upgrade(status: StatusCode, message: &str) -> Response {
    refuse(status, "bad_upgrade", message)
}

/// An upgrade refused before it happened: `status` and a JSON body
/// `{"code","message"}`.
fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"code": code, "message": message})),
    )
        .into_response()
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Picks the first subprotocol the client offers that we speak.
fn choose_protocol(headers: &HeaderMap) -> Option<(&'static str, WireFormat)> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|offered| {
            WireFormat::SUBPROTOCOLS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(offered.trim()))
                .copied()
        })
}

/// Validates a WebSocket upgrade, answers 101, and hands the socket to a
/// connection task.
async fn upgrade(State(shared): State<Arc<EdgeState>>, mut request: Request) -> Response {
    let headers = request.headers();
    if !header_has_token(headers, header::UPGRADE, "websocket")
        || !header_has_token(headers, header::CONNECTION, "upgrade")
    {
        shared.metrics.handshake(Handshake::BadRequest);
        return bad_upgrade(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade (Connection: upgrade, Upgrade: websocket)",
        );
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13")) {
        shared.metrics.handshake(Handshake::BadVersion);
        let mut response = bad_upgrade(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported Sec-WebSocket-Version (13 required)",
        );
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return response;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        shared.metrics.handshake(Handshake::BadRequest);
        return bad_upgrade(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let origin = headers.get(header::ORIGIN).map(HeaderValue::as_bytes);
    if !shared.config.origin_allowed(origin) {
        shared.metrics.handshake(Handshake::Forbidden);
        return refuse(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this web origin may not connect (allowed_origins)",
        );
    }
    if shared.shutdown.is_cancelled() {
        shared.metrics.handshake(Handshake::ShuttingDown);
        return bad_upgrade(StatusCode::SERVICE_UNAVAILABLE, "edge is shutting down");
    }
    // Counted from here until the connection task registers it (or the
    // upgrade fails), so concurrent upgrades cannot overshoot the limit.
    let Some(admission) = shared.hub.admit(shared.config.max_connections) else {
        shared.metrics.handshake(Handshake::Full);
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "this edge holds max_connections connections; try another edge",
        );
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let protocol = choose_protocol(headers);
    let on_upgrade = hyper::upgrade::on(&mut request);

    let task_shared = shared.clone();
    let take_over = async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                task_shared.metrics.handshake(Handshake::Failed);
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let Ok(parts) = upgraded.downcast::<TokioIo<ClientStream>>() else {
            task_shared.metrics.handshake(Handshake::Failed);
            tracing::error!("upgraded connection is not a client stream");
            return;
        };
        let socket = match parts.io.into_inner() {
            Either::Left(stream) => Either::Left(stream),
            Either::Right(stream) => match crate::tls::pump(stream, &task_shared.tracker) {
                Ok(socket) => Either::Right(socket),
                Err(e) => {
                    task_shared.metrics.handshake(Handshake::Failed);
                    tracing::warn!(error = %e, "cannot create the socket pair of a TLS connection");
                    return;
                }
            },
        };
        task_shared.metrics.handshake(Handshake::Ok);
        let format = protocol.map(|(_, format)| format).unwrap_or_default();
        let conn = admission.connect(format);
        // Copy early bytes out: the slice would keep hyper's whole read
        // buffer alive for the life of the connection.
        let early = Bytes::copy_from_slice(&parts.read_buf);
        drop(parts.read_buf);
        // A task of its own, so the long-lived task holds exactly the
        // connection's state and nothing of the upgrade.
        match socket {
            Either::Left(stream) => conn::spawn(stream, early, conn, task_shared),
            Either::Right(socket) => conn::spawn(socket, early, conn, task_shared),
        }
    };
    shared.tracker.spawn(take_over.in_current_span());

    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some((name, _)) = protocol {
        response = response.header(header::SEC_WEBSOCKET_PROTOCOL, name);
    }
    response
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subprotocol_choice_follows_client_order_among_ours() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat, gpush.raw, gpush.json"),
        );
        assert_eq!(
            choose_protocol(&headers),
            Some(("gpush.raw", WireFormat::Raw))
        );
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("GPUSH.MSGPACK, gpush.json"),
        );
        assert_eq!(
            choose_protocol(&headers),
            Some(("gpush.msgpack", WireFormat::Msgpack))
        );
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat"),
        );
        assert_eq!(choose_protocol(&headers), None);
    }

    #[test]
    fn demo_page_has_the_placeholder_and_loads_the_client() {
        assert_eq!(DEMO_PAGE.matches(PUSH_PORT_PLACEHOLDER).count(), 1);
        assert!(DEMO_PAGE.contains(r#"<script src="gpush.js"></script>"#));
        assert!(CLIENT_JS.contains("class GPush"));
    }

    #[test]
    fn connection_header_tokens() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(header_has_token(&headers, header::CONNECTION, "upgrade"));
        assert!(!header_has_token(&headers, header::CONNECTION, "close"));
    }
}
