//! Defects found by a security review and by real clients (issue "Trust"),
//! each reproduced here against the real servers: a JWT without the
//! configured `aud` / `iss` or before its `nbf`, an auth webhook that
//! redirects or answers without end or is reached through a proxy named
//! in the environment, a push body with a misspelled key
//! that used to broadcast to everyone, and configs that must not start.

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use gpush_integration_tests::auth::{self, JWT_SECRET, MockWebhook, WebhookMode};
use gpush_integration_tests::frames::code;
use gpush_integration_tests::{Deployment, EdgeProcess, QUIET, Standalone, TIMEOUT, WsClient};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// An HS256 token signed with [`JWT_SECRET`] carrying exactly `claims`.
fn token(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("sign test token")
}

async fn login_code(d: &Standalone, token: &str, what: &str) -> Value {
    let mut c = d.connect(0, what).await;
    let reply = c.login(token).await;
    reply["code"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_audience_and_issuer_are_required_and_nbf_is_checked() {
    let d = Standalone::start(|c| {
        c.auth.jwt_secret = Some(JWT_SECRET.to_owned());
        c.auth.jwt_audience = Some("gpush".into());
        c.auth.jwt_issuer = Some("https://id.example".into());
    })
    .await;
    let exp = auth::in_one_hour();
    let good = json!({"sub": "alice", "exp": exp, "aud": "gpush", "iss": "https://id.example"});
    assert_eq!(
        login_code(&d, &token(good.clone()), "all claims").await,
        code::LOGGED_IN
    );
    let cases = [
        (
            "no aud",
            json!({"sub": "alice", "exp": exp, "iss": "https://id.example"}),
        ),
        (
            "no iss",
            json!({"sub": "alice", "exp": exp, "aud": "gpush"}),
        ),
        (
            "other aud",
            json!({"sub": "alice", "exp": exp, "aud": "other", "iss": "https://id.example"}),
        ),
        (
            "nbf in an hour",
            json!({"sub": "alice", "exp": exp + 3600, "nbf": exp,
                   "aud": "gpush", "iss": "https://id.example"}),
        ),
    ];
    for (what, claims) in cases {
        assert_eq!(
            login_code(&d, &token(claims), what).await,
            code::AUTH_FAILED,
            "{what} must be refused"
        );
    }
}

/// A small HTTP server on loopback answering every POST with `answer`,
/// counting the requests.
async fn serve_fixed(
    answer: impl Fn() -> axum::response::Response + Clone + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let router = Router::new().route(
        "/auth",
        post(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            async move { answer() }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (addr, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_webhook_never_follows_redirects() {
    // The redirect target would vouch for the token it is sent.
    let target = MockWebhook::start(WebhookMode::Good).await;
    let location = target.url();
    let (redirector, hits) = serve_fixed(move || {
        (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, location.clone())],
        )
            .into_response()
    })
    .await;
    let d =
        Standalone::start(|c| c.auth.webhook_url = Some(format!("http://{redirector}/auth"))).await;
    let mut c = d.connect(0, "redirected login").await;
    let reply = c.login("tok-alice").await;
    assert_eq!(reply["code"], code::AUTH_FAILED, "{reply}");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the webhook was asked once");
    assert!(
        target.requests().is_empty(),
        "the user's token was re-sent to the redirect target: {:?}",
        target.requests()
    );
}

/// A "proxy" on loopback: a listener that counts the connections made to
/// it and closes each at once (a call sent through it fails).
async fn counting_listener() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (addr, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_webhook_ignores_proxies_in_the_environment() {
    let webhook = MockWebhook::start(WebhookMode::Good).await;
    let (proxy, proxied) = counting_listener().await;
    let proxy_url = format!("http://{proxy}");
    // Every variable an HTTP client reads a proxy from, and an empty
    // NO_PROXY: nothing, loopback included, is exempt from the proxy
    // unless the client itself ignores the environment.
    let mut env = Vec::new();
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        env.push((name.to_owned(), proxy_url.clone()));
        env.push((name.to_lowercase(), proxy_url.clone()));
    }
    env.push(("NO_PROXY".into(), String::new()));
    env.push(("no_proxy".into(), String::new()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let addr = || format!("127.0.0.1:{}", gpush_integration_tests::free_port());
    let (ws, http, grpc) = (addr(), addr(), addr());
    let args: Vec<String> = [
        "--standalone",
        "--ws-addr",
        &ws,
        "--http-addr",
        &http,
        "--grpc-addr",
        &grpc,
        "--auth-webhook",
        &webhook.url(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let edge = EdgeProcess::spawn_with_env(&args, &env).await;
    let mut c = WsClient::connect(&edge.ws_url())
        .await
        .with_label("login with proxies in the edge's environment");
    let reply = c.login("tok-alice").await;
    assert_eq!(
        proxied.load(Ordering::SeqCst),
        0,
        "the webhook call went to the proxy named in the environment: {reply}"
    );
    c.assert_code(&reply, code::LOGGED_IN, "login through the webhook");
    assert_eq!(reply["uid"], "alice", "{reply}");
    assert_eq!(webhook.requests().len(), 1, "the webhook was asked once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_webhook_answer_is_refused() {
    // A valid answer padded to 4 MiB: more than any uid needs.
    let padded = json!({"uid": "alice", "pad": "x".repeat(4 << 20)}).to_string();
    let (webhook, _) = serve_fixed(move || {
        ([(header::CONTENT_TYPE, "application/json")], padded.clone()).into_response()
    })
    .await;
    let d =
        Standalone::start(|c| c.auth.webhook_url = Some(format!("http://{webhook}/auth"))).await;
    let mut c = d.connect(0, "huge webhook answer").await;
    let reply = c.login("tok-alice").await;
    assert_eq!(reply["code"], code::AUTH_FAILED, "{reply}");
    c.send_text("ping").await;
    assert_eq!(c.next_text(TIMEOUT).await, "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_webhook_calls_are_capped() {
    let webhook = MockWebhook::start(WebhookMode::Slow(std::time::Duration::from_secs(2))).await;
    let d = Standalone::start(|c| {
        c.auth.webhook_url = Some(webhook.url());
        c.auth.webhook_timeout = std::time::Duration::from_secs(5);
        c.auth.webhook_max_concurrent = 2;
    })
    .await;
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(d.connect(0, &format!("login {i}")).await);
    }
    let replies = futures_util::future::join_all(
        clients
            .iter_mut()
            .enumerate()
            .map(|(i, c)| async move { c.login(&format!("tok-user{i}")).await }),
    )
    .await;
    let busy: Vec<&Value> = replies
        .iter()
        .filter(|r| r["code"] == code::AUTH_FAILED)
        .collect();
    let ok = replies
        .iter()
        .filter(|r| r["code"] == code::LOGGED_IN)
        .count();
    assert_eq!(ok, 2, "two webhook calls at a time: {replies:?}");
    assert_eq!(busy.len(), 3, "{replies:?}");
    for reply in busy {
        let detail = reply["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("busy"), "a clear detail: {reply}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelled_push_field_is_refused_not_broadcast() {
    let d = Standalone::start(|_| {}).await;
    // Subscribed to nothing: only a push to everyone would reach it.
    let mut bystander = d.connect(0, "bystander").await;
    let api = d.api();
    let cases = [
        (
            "/v1/pushData",
            json!({"Topic": "room", "Uid": "alice", "data": "c2VjcmV0"}),
            "unknown field `Topic`",
        ),
        (
            "/v1/pushData",
            json!({"topic": "room", "dta": "c2VjcmV0"}),
            "unknown field `dta`",
        ),
        (
            "/v1/pushBatch",
            json!({"messages": [{"topic": "room", "data": ""}, {"Uid": "bob", "data": "c2VjcmV0"}]}),
            "messages[1].Uid: unknown field",
        ),
        (
            "/v1/pushBatch",
            json!({"messages": [], "extra": 1}),
            "unknown field `extra`",
        ),
    ];
    for (path, body, field) in cases {
        let reply = api.post(path, &body.to_string(), None).await;
        assert_eq!(reply.status, 400, "{path} {body}: {}", reply.body);
        let message = reply.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            message.contains(field),
            "{path} {body}: the error must name {field:?}: {}",
            reply.body
        );
    }
    bystander.expect_no_push(QUIET).await;
}

/// Runs the real `gpush-edge` with `args` (and a config file holding
/// `toml`, when given) and expects it to refuse to start.
async fn assert_edge_refuses(args: &[&str], toml: Option<&str>, expected: &[&str]) {
    let ws_addr = format!("127.0.0.1:{}", gpush_integration_tests::free_port());
    let path = gpush_integration_tests::procs::scratch_dir("refused-config").join("edge.toml");
    let path = path.display().to_string();
    let mut all = vec!["--ws-addr", &ws_addr];
    all.extend_from_slice(args);
    if let Some(toml) = toml {
        std::fs::write(&path, toml).expect("write config");
        all.extend(["--config", &path]);
    }
    gpush_integration_tests::procs::assert_refuses(
        &gpush_integration_tests::EdgeProcess::binary(),
        &all,
        expected,
    )
    .await;
}

#[tokio::test]
async fn a_short_jwt_secret_and_insecure_logins_beside_real_ones_are_refused() {
    assert_edge_refuses(
        &["--standalone", "--jwt-secret", "change-me"],
        None,
        &["auth.jwt_secret must be at least 32 bytes"],
    )
    .await;
    assert_edge_refuses(
        &["--standalone"],
        Some(&format!(
            "[auth]\njwt_secret = \"{JWT_SECRET}\"\ninsecure_token_is_uid = true\n"
        )),
        &["auth.insecure_token_is_uid cannot be combined"],
    )
    .await;
}
