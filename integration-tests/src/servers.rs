//! Ingress and edges running in-process on port-0 listeners.
//!
//! Each handle binds its listeners on 127.0.0.1:0 (so the addresses are
//! known before the server runs), spawns `run` on the current tokio runtime
//! and waits until the server answers. If `run` returns during start-up, the
//! test panics with its error instead of timing out later. Dropping a handle
//! cancels the server's shutdown token. An edge can be restarted on the
//! same addresses ([`EdgeHandle::restart`]), as a redeployed edge would be.
//!
//! A server configured with `tls_cert` / `tls_key` is probed over TLS
//! without checking its certificate (the probe only asks whether it
//! answers; tests check the certificate with their own clients), and its
//! URLs are `https://` and `wss://`.

use gpush_edge::EdgeConfig;
use gpush_ingress::IngressConfig;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;

/// How long an in-process server gets to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(10);

async fn bind_local() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address of listener");
    (listener, addr)
}

/// Binds `addr` again after its server stopped, retrying until
/// [`START_TIMEOUT`] in case the old socket is not quite gone.
async fn rebind(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) if Instant::now() >= deadline => {
                panic!("cannot bind {addr} again within {START_TIMEOUT:?}: {e}")
            }
            Err(_) => sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A running server task: its shutdown token and its result.
#[derive(Debug)]
struct ServerTask {
    what: String,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl ServerTask {
    fn spawn<F>(what: String, shutdown: CancellationToken, run: F) -> Self
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Self {
            what,
            shutdown,
            task: Some(tokio::spawn(run)),
        }
    }

    /// Polls `probe` until it succeeds; panics if the server task ends
    /// first or nothing answers within [`START_TIMEOUT`].
    async fn wait_ready<P, Fut>(&mut self, mut probe: P)
    where
        P: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + START_TIMEOUT;
        let Some(task) = self.task.as_mut() else {
            panic!("{} is not running", self.what);
        };
        loop {
            tokio::select! {
                result = &mut *task => {
                    panic!("{} stopped during start-up: {}", self.what, describe(result));
                }
                ready = probe() => if ready { return },
            }
            if Instant::now() >= deadline {
                panic!("{} did not answer within {START_TIMEOUT:?}", self.what);
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Cancels the server and waits (up to `within`) for `run` to return.
    async fn shutdown(mut self, within: Duration) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        match timeout(within, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(anyhow::anyhow!("{} panicked: {join}", self.what)),
            Err(_) => Err(anyhow::anyhow!(
                "{} did not stop within {within:?}",
                self.what
            )),
        }
    }
}

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn describe(result: Result<anyhow::Result<()>, tokio::task::JoinError>) -> String {
    match result {
        Ok(Ok(())) => "returned Ok(()) without being cancelled".to_owned(),
        Ok(Err(e)) => format!("error: {e:#}"),
        Err(e) => format!("task failed: {e}"),
    }
}

/// An in-process `gpush-ingress`.
#[derive(Debug)]
pub struct IngressHandle {
    http: SocketAddr,
    grpc: SocketAddr,
    /// `http` or `https`.
    scheme: &'static str,
    server: ServerTask,
}

impl IngressHandle {
    /// Binds HTTP and gRPC listeners on 127.0.0.1:0, runs ingress with
    /// `config` (its addresses are set to the bound ones) and waits until
    /// `GET /healthz` answers 200.
    pub async fn start(mut config: IngressConfig) -> Self {
        crate::init_tracing();
        let (http_listener, http) = bind_local().await;
        let (grpc_listener, grpc) = bind_local().await;
        config.addrs.http_addr = Some(http);
        config.addrs.grpc_addr = Some(grpc);
        let tls = config.tls.tls_cert.is_some();
        let shutdown = CancellationToken::new();
        let listeners = gpush_ingress::Listeners {
            http: http_listener,
            grpc: grpc_listener,
        };
        let mut server = ServerTask::spawn(
            format!("ingress (http {http}, grpc {grpc})"),
            shutdown.clone(),
            gpush_ingress::run(listeners, config, shutdown.child_token()),
        );
        let scheme = if tls { "https" } else { "http" };
        let client = probe_client();
        let healthz = format!("{scheme}://{http}/healthz");
        server.wait_ready(|| http_ok(&client, &healthz)).await;
        Self {
            http,
            grpc,
            scheme,
            server,
        }
    }

    /// `http://127.0.0.1:<port>` (`https://` with TLS) of the HTTP push API.
    pub fn http_base(&self) -> String {
        format!("{}://{}", self.scheme, self.http)
    }

    /// `http://127.0.0.1:<port>` (`https://` with TLS) of the gRPC push API.
    pub fn grpc_url(&self) -> String {
        format!("{}://{}", self.scheme, self.grpc)
    }

    /// Cancels ingress and waits for `run` to return its result.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.server.shutdown(Duration::from_secs(10)).await
    }
}

/// An in-process `gpush-edge` (clustered or standalone).
#[derive(Debug)]
pub struct EdgeHandle {
    ws: SocketAddr,
    push: Option<(SocketAddr, SocketAddr)>,
    node_id: Option<String>,
    shutdown_grace: Duration,
    /// The config it runs with, its addresses filled in: what a restart
    /// runs again.
    config: EdgeConfig,
    server: ServerTask,
}

impl EdgeHandle {
    /// Binds the WebSocket listener (and, when `config.standalone`, the HTTP
    /// and gRPC push API listeners) on 127.0.0.1:0, sets the matching
    /// addresses in `config`, runs the edge and waits until a WebSocket
    /// handshake on `/ws` succeeds (with TLS: until `/healthz` answers).
    /// `public_url` defaults to [`Self::ws_url`].
    pub async fn start(mut config: EdgeConfig) -> Self {
        crate::init_tracing();
        let (ws_listener, ws) = bind_local().await;
        config.ws_addr = ws;
        if config.public_url.is_none() {
            let scheme = if config.tls() { "wss" } else { "ws" };
            config.public_url = Some(format!("{scheme}://{ws}/ws"));
        }
        let push_listeners = if config.standalone {
            let (http_listener, http) = bind_local().await;
            let (grpc_listener, grpc) = bind_local().await;
            config.push_addrs.http_addr = Some(http);
            config.push_addrs.grpc_addr = Some(grpc);
            Some(gpush_ingress::Listeners {
                http: http_listener,
                grpc: grpc_listener,
            })
        } else {
            None
        };
        Self::run(config, ws_listener, push_listeners).await
    }

    /// Stops the edge (as [`Self::shutdown`]: its clients get close 1001)
    /// and starts a new one with the same config on the same addresses, so
    /// clients can come back to the URLs they know. Panics when the old
    /// edge does not stop cleanly or the addresses cannot be bound again.
    pub async fn restart(self) -> Self {
        Self::start_again(self.stop().await).await
    }

    /// Stops the edge like [`Self::shutdown`], panicking unless it stops
    /// cleanly, and gives back the config it ran with (its addresses filled
    /// in) for [`Self::start_again`].
    pub async fn stop(self) -> EdgeConfig {
        let config = self.config.clone();
        let what = self.server.what.clone();
        if let Err(e) = self.shutdown().await {
            panic!("{what} did not stop cleanly: {e:#}");
        }
        config
    }

    /// Starts an edge on exactly the addresses `config` names (as
    /// [`Self::stop`] gives them back), waiting until they can be bound.
    pub async fn start_again(config: EdgeConfig) -> Self {
        let ws_listener = rebind(config.ws_addr).await;
        let push_listeners = match (
            config.standalone,
            config.push_addrs.http_addr,
            config.push_addrs.grpc_addr,
        ) {
            (true, Some(http), Some(grpc)) => Some(gpush_ingress::Listeners {
                http: rebind(http).await,
                grpc: rebind(grpc).await,
            }),
            _ => None,
        };
        Self::run(config, ws_listener, push_listeners).await
    }

    /// Runs the edge on bound listeners whose addresses `config` names, and
    /// waits until it answers.
    async fn run(
        config: EdgeConfig,
        ws_listener: TcpListener,
        push_listeners: Option<gpush_ingress::Listeners>,
    ) -> Self {
        let ws = config.ws_addr;
        let push = push_listeners
            .as_ref()
            .and(config.push_addrs.http_addr.zip(config.push_addrs.grpc_addr));
        let node_id = config.node_id.clone();
        let shutdown_grace = config.shutdown_grace;
        let shutdown = CancellationToken::new();
        let listeners = gpush_edge::Listeners {
            ws: ws_listener,
            push: push_listeners,
        };
        let what = format!(
            "edge {} (ws {ws}{})",
            node_id.as_deref().unwrap_or("?"),
            if push.is_some() { ", standalone" } else { "" }
        );
        let mut server = ServerTask::spawn(
            what,
            shutdown.clone(),
            gpush_edge::run(listeners, config.clone(), shutdown.child_token()),
        );
        if config.tls() {
            let client = probe_client();
            let healthz = format!("https://{ws}/healthz");
            server.wait_ready(|| http_ok(&client, &healthz)).await;
        } else {
            let url = format!("ws://{ws}/ws");
            server.wait_ready(|| ws_handshake_ok(&url)).await;
        }
        Self {
            ws,
            push,
            node_id,
            shutdown_grace,
            config,
            server,
        }
    }

    /// `http://127.0.0.1:<port>/` (`https://` with TLS): the demo page
    /// (and, under it, `/gpush.js`).
    pub fn page_url(&self) -> String {
        format!("{}://{}/", self.http_scheme(), self.ws)
    }

    /// `ws://127.0.0.1:<port>/ws` (`wss://` with TLS).
    pub fn ws_url(&self) -> String {
        let scheme = if self.config.tls() { "wss" } else { "ws" };
        format!("{scheme}://{}/ws", self.ws)
    }

    /// `http`, or `https` when the edge serves TLS.
    fn http_scheme(&self) -> &'static str {
        if self.config.tls() { "https" } else { "http" }
    }

    /// The WebSocket listener's address.
    pub fn ws_addr(&self) -> SocketAddr {
        self.ws
    }

    /// The configured node id, if one was set.
    pub fn node_id(&self) -> Option<&str> {
        self.node_id.as_deref()
    }

    /// `http://127.0.0.1:<port>` (`https://` with TLS) of the standalone
    /// HTTP push API. Panics for a clustered edge.
    pub fn http_base(&self) -> String {
        let (http, _) = self.push.expect("http_base: this edge is not standalone");
        format!("{}://{http}", self.http_scheme())
    }

    /// `http://127.0.0.1:<port>` (`https://` with TLS) of the standalone
    /// gRPC push API. Panics for a clustered edge.
    pub fn grpc_url(&self) -> String {
        let (_, grpc) = self.push.expect("grpc_url: this edge is not standalone");
        format!("{}://{grpc}", self.http_scheme())
    }

    /// Cancels the edge (as SIGTERM would) and waits for `run` to return,
    /// allowing the configured shutdown grace plus a few seconds.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let within = self.shutdown_grace + Duration::from_secs(5);
        self.server.shutdown(within).await
    }
}

/// The client of the readiness probes. It accepts any server certificate:
/// it asks whether a server answers, not who it is.
fn probe_client() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("probe HTTP client")
}

async fn http_ok(client: &reqwest::Client, url: &str) -> bool {
    matches!(
        timeout(Duration::from_secs(1), client.get(url).send()).await,
        Ok(Ok(response)) if response.status().is_success()
    )
}

async fn ws_handshake_ok(url: &str) -> bool {
    match timeout(
        Duration::from_secs(1),
        tokio_tungstenite::connect_async(url),
    )
    .await
    {
        Ok(Ok((mut ws, _))) => {
            let _ = timeout(Duration::from_millis(500), ws.close(None)).await;
            true
        }
        _ => false,
    }
}
