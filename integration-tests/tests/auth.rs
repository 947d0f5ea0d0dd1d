//! Login: JWT (HS256 secret, RS256 and ES256 public keys) with `sub` as the
//! uid and `exp` enforced, and the HTTP auth webhook in both answer shapes.
//! A failed login answers 30003, logs nobody in and never costs the
//! connection, whatever the webhook does (down, slow, garbage).

use gpush_integration_tests::auth::{
    self, EC_OTHER_PRIVATE, EC_PRIVATE, EC_PUBLIC, JWT_SECRET, MockWebhook, RSA_OTHER_PRIVATE,
    RSA_PRIVATE, RSA_PUBLIC, WebhookMode,
};
use gpush_integration_tests::frames::{self, code};
use gpush_integration_tests::{Deployment, Standalone, TIMEOUT, WsClient};
use serde_json::{Value, json};
use std::time::Duration;

/// Webhook timeout configured on the edge in these tests.
const WEBHOOK_TIMEOUT: Duration = Duration::from_millis(300);

/// `token` logs in as `uid`, and a private push to `uid` reaches the
/// connection.
async fn assert_login_works(d: &Standalone, token: &str, uid: &str) {
    let mut c = d.connect(0, &format!("login as {uid}")).await;
    c.must_login(token, uid).await;
    c.must_sub_private("inbox").await;
    let data = json!({"for": uid}).to_string();
    d.push_grpc(uid, "inbox", data.as_bytes()).await;
    c.expect_push(&frames::private("inbox", data.as_bytes()))
        .await;
}

/// `token` is refused with 30003 on a fresh connection, which stays
/// logged out and usable.
async fn assert_login_fails(d: &Standalone, token: &str, what: &str) {
    let mut c = d.connect(0, what).await;
    assert_login_fails_on(d, &mut c, token, what).await;
}

async fn assert_login_fails_on(d: &Standalone, c: &mut WsClient, token: &str, what: &str) {
    let reply = c.login(token).await;
    assert_eq!(reply["code"], code::AUTH_FAILED, "{what}: {reply}");
    let reply = c.sub_private("inbox").await;
    assert_eq!(
        reply["code"],
        code::NOT_LOGGED_IN,
        "{what}: a failed login must not log in: {reply}"
    );
    c.send_text("ping").await;
    assert_eq!(c.next_text(TIMEOUT).await, "pong", "{what}");
    let topic = format!("usable after {what}");
    c.must_subscribe(&topic).await;
    d.push_http("", &topic, b"{}").await;
    c.expect_push(&frames::public(&topic, b"{}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_hs256_good_expired_wrong_secret() {
    let d = Standalone::start(|c| c.auth.jwt_secret = Some(JWT_SECRET.to_owned())).await;
    assert_login_works(&d, &auth::hs256("alice"), "alice").await;
    assert_login_fails(
        &d,
        &auth::hs256_with(JWT_SECRET, "alice", auth::an_hour_ago()),
        "expired HS256",
    )
    .await;
    assert_login_fails(
        &d,
        &auth::hs256_with("not-the-secret", "alice", auth::in_one_hour()),
        "HS256 with the wrong secret",
    )
    .await;
    assert_login_fails(
        &d,
        &auth::rs256(RSA_PRIVATE, "alice", auth::in_one_hour()),
        "RS256 token on an HS256 edge",
    )
    .await;
    assert_login_fails(&d, "not-a-jwt", "garbage token").await;
    assert_login_fails(&d, "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.", "alg none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_rs256_good_expired_wrong_key() {
    let d = Standalone::start(|c| {
        c.auth.jwt_secret = None;
        c.auth.jwt_public_key = Some(auth::fixture(RSA_PUBLIC));
    })
    .await;
    assert_login_works(
        &d,
        &auth::rs256(RSA_PRIVATE, "rob", auth::in_one_hour()),
        "rob",
    )
    .await;
    assert_login_fails(
        &d,
        &auth::rs256(RSA_PRIVATE, "rob", auth::an_hour_ago()),
        "expired RS256",
    )
    .await;
    assert_login_fails(
        &d,
        &auth::rs256(RSA_OTHER_PRIVATE, "rob", auth::in_one_hour()),
        "RS256 signed with another key",
    )
    .await;
    assert_login_fails(
        &d,
        &auth::hs256_keyed_with_fixture(RSA_PUBLIC, "rob"),
        "HS256 keyed with the RSA public key",
    )
    .await;
    assert_login_fails(&d, &auth::hs256("rob"), "HS256 on an RS256 edge").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_es256_good_expired_wrong_key() {
    let d = Standalone::start(|c| {
        c.auth.jwt_secret = None;
        c.auth.jwt_public_key = Some(auth::fixture(EC_PUBLIC));
    })
    .await;
    assert_login_works(
        &d,
        &auth::es256(EC_PRIVATE, "eve", auth::in_one_hour()),
        "eve",
    )
    .await;
    assert_login_fails(
        &d,
        &auth::es256(EC_PRIVATE, "eve", auth::an_hour_ago()),
        "expired ES256",
    )
    .await;
    assert_login_fails(
        &d,
        &auth::es256(EC_OTHER_PRIVATE, "eve", auth::in_one_hour()),
        "ES256 signed with another key",
    )
    .await;
    assert_login_fails(
        &d,
        &auth::hs256_keyed_with_fixture(EC_PUBLIC, "eve"),
        "HS256 keyed with the EC public key",
    )
    .await;
}

fn webhook_edge(url: String) -> impl FnOnce(&mut gpush_edge::EdgeConfig) {
    move |c| {
        c.auth.jwt_secret = None;
        c.auth.webhook_url = Some(url);
        c.auth.webhook_timeout = WEBHOOK_TIMEOUT;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_answers_in_both_shapes() {
    let webhook = MockWebhook::start(WebhookMode::Good).await;
    let d = Standalone::start(webhook_edge(webhook.url())).await;

    assert_login_works(&d, "tok-bob", "bob").await;
    let first: Value = serde_json::from_str(&webhook.requests()[0]).expect("webhook got JSON");
    assert_eq!(
        first,
        json!({"token": "tok-bob"}),
        "what the webhook receives"
    );
    assert_login_fails(&d, "bad-token", "webhook 401").await;

    webhook.set_mode(WebhookMode::Original);
    assert_login_works(&d, "tok-carl", "carl").await;
    assert_login_fails(&d, "bad-token", "original shape, code 1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_down_slow_or_garbage_gives_30003() {
    let webhook = MockWebhook::start(WebhookMode::Slow(WEBHOOK_TIMEOUT * 10)).await;
    let d = Standalone::start(webhook_edge(webhook.url())).await;
    let mut c = d.connect(0, "webhook victim").await;
    assert_login_fails_on(&d, &mut c, "tok-slow", "slow webhook").await;

    webhook.set_mode(WebhookMode::Garbage);
    assert_login_fails_on(&d, &mut c, "tok-garbage", "garbage webhook").await;

    // The same connection logs in once the webhook behaves.
    webhook.set_mode(WebhookMode::Good);
    c.must_login("tok-dan", "dan").await;

    let down = Standalone::start(webhook_edge(auth::down_webhook_url())).await;
    assert_login_fails(&down, "tok-x", "webhook down").await;
}

/// A refused login leaves an existing login as it was: the connection is
/// still alice, with her private subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_login_keeps_the_current_login() {
    let d = Standalone::start(|c| c.auth.jwt_secret = Some(JWT_SECRET.to_owned())).await;
    let mut c = d.connect(0, "alice, then a bad token").await;
    c.must_login(&auth::hs256("alice"), "alice").await;
    c.must_sub_private("inbox").await;
    let reply = c
        .login(&auth::hs256_with(
            JWT_SECRET,
            "mallory",
            auth::an_hour_ago(),
        ))
        .await;
    assert_eq!(reply["code"], code::AUTH_FAILED, "{reply}");
    let data = br#"{"still":"alice"}"#;
    d.push_http("alice", "inbox", data).await;
    c.expect_push(&frames::private("inbox", data)).await;
}
