//! A login lasts as long as its token: the login reply says when it
//! expires (`expires`, unix seconds), a login for the same uid before then
//! refreshes it (subscriptions kept), and at expiry plus
//! `auth.expiry_leeway` the edge ends it: push 10004, private
//! subscriptions dropped, no more private or user-wide pushes, the
//! connection open, the end counted in `gpush_edge_logins_expired_total`.
//! JWT `exp` and a webhook's `expires` (both answer shapes) set it; a
//! webhook answer without one never expires.

use gpush_integration_tests::auth::{self, JWT_SECRET, MockWebhook, WebhookMode};
use gpush_integration_tests::client::MSGPACK_PROTOCOL;
use gpush_integration_tests::frames::{self, MsgValue, code};
use gpush_integration_tests::{Cluster, Deployment, Standalone, TIMEOUT, WsClient};
use serde_json::{Value, json};
use std::time::Duration;

/// Lifetime of the short tokens these tests log in with, in seconds.
const LIFETIME: i64 = 2;
/// `auth.expiry_leeway` of these edges, in seconds.
const LEEWAY: i64 = 1;
/// A login ends within a keepalive sweep (at most 1 s) of expiry plus the
/// leeway; this is that bound with room to spare.
const ENDS_WITHIN: Duration =
    Duration::from_secs((LIFETIME + LEEWAY) as u64 + 1).saturating_add(TIMEOUT);

/// How long to listen for pushes that must not come.
const NOTHING_FOR: Duration = Duration::from_secs(1);

/// Edges of these tests: the short leeway.
fn short_leeway(c: &mut gpush_edge::EdgeConfig) {
    c.auth.expiry_leeway = Duration::from_secs(LEEWAY as u64);
}

/// Runs `scenario` against a two-edge cluster and a standalone edge.
macro_rules! on_both {
    ($scenario:ident) => {
        mod $scenario {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                let d = Cluster::start(2, short_leeway).await;
                super::$scenario(&d).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn standalone() {
                let d = Standalone::start(short_leeway).await;
                super::$scenario(&d).await;
            }
        }
    };
}

on_both!(expiry_ends_private_and_user_wide_delivery);
on_both!(refresh_before_expiry_keeps_the_login_and_its_subscriptions);

/// The 10004 push that ends `uid`'s login.
fn login_ended(uid: &str) -> Value {
    json!({"code": 10004, "uid": uid, "reason": "expired"})
}

/// Waits for the next frame that is neither a push nor a reply, which
/// must be 10004 for `uid`.
async fn expect_login_ended(c: &mut WsClient, uid: &str) {
    let text = c.next_text(ENDS_WITHIN).await;
    let got: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert_eq!(got, login_ended(uid), "{}: wrong end of login", c.label());
}

/// `gpush_edge_logins_expired_total` on edge `i` of `d`, from its
/// `/metrics`.
async fn logins_expired(d: &impl Deployment, i: usize) -> f64 {
    const SERIES: &str = "gpush_edge_logins_expired_total";
    let ws = d.ws_url(i);
    let base = ws
        .strip_prefix("ws://")
        .and_then(|rest| rest.strip_suffix("/ws"))
        .unwrap_or_else(|| panic!("not a ws://<addr>/ws URL: {ws}"));
    let text = tokio::time::timeout(TIMEOUT, async {
        reqwest::get(format!("http://{base}/metrics"))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    })
    .await
    .expect("/metrics answers within the timeout");
    text.lines()
        .find_map(|line| line.strip_prefix(SERIES)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {SERIES} in /metrics:\n{text}"))
}

/// Logs in with `token` as `uid`; returns the reply.
async fn login(c: &mut WsClient, token: &str, uid: &str) -> Value {
    let reply = c.login(token).await;
    c.assert_code(&reply, code::LOGGED_IN, &format!("login as {uid}"));
    assert_eq!(reply["uid"], uid, "{reply}");
    reply
}

async fn expiry_ends_private_and_user_wide_delivery(d: &impl Deployment) {
    let mut c = d.connect(0, "ann, short token").await;
    let exp = auth::now() + LIFETIME;
    let reply = login(&mut c, &auth::hs256_with(JWT_SECRET, "ann", exp), "ann").await;
    assert_eq!(reply["expires"], exp, "the login reply says when: {reply}");
    c.must_sub_private("inbox").await;
    c.must_subscribe("news").await;
    d.push_http("ann", "inbox", b"1").await;
    c.expect_push(&frames::private("inbox", b"1")).await;
    let before = logins_expired(d, 0).await;

    expect_login_ended(&mut c, "ann").await;
    // Counted before the 10004 was queued.
    assert_eq!(
        logins_expired(d, 0).await,
        before + 1.0,
        "the end is counted"
    );
    d.push_http("ann", "inbox", b"2").await;
    d.push_http("ann", "", b"3").await;
    c.expect_no_push(NOTHING_FOR).await;

    // The connection stays open, logged out, its public topics kept.
    d.push_http("", "news", b"4").await;
    c.expect_push(&frames::public("news", b"4")).await;
    let reply = c.sub_private("inbox").await;
    c.assert_code(
        &reply,
        code::NOT_LOGGED_IN,
        "private subscribe after expiry",
    );

    // It may log in again; the old private subscription is gone.
    let fresh = auth::now() + 3600;
    login(&mut c, &auth::hs256_with(JWT_SECRET, "ann", fresh), "ann").await;
    d.push_http("ann", "inbox", b"5").await;
    d.push_http("ann", "", b"6").await;
    c.expect_push(&frames::user(b"6")).await;
    c.expect_no_push(NOTHING_FOR).await;
}

async fn refresh_before_expiry_keeps_the_login_and_its_subscriptions(d: &impl Deployment) {
    let mut c = d.connect(0, "ben, refreshed").await;
    let first = auth::now() + LIFETIME;
    login(&mut c, &auth::hs256_with(JWT_SECRET, "ben", first), "ben").await;
    c.must_sub_private("inbox").await;

    let second = auth::now() + 3600;
    let reply = login(&mut c, &auth::hs256_with(JWT_SECRET, "ben", second), "ben").await;
    assert_eq!(
        reply["expires"], second,
        "a refresh moves the expiry: {reply}"
    );

    // Past the first token's expiry plus the leeway and a sweep, nothing
    // ended the login (any frame, 10004 included, fails this).
    let past_first = (first + LEEWAY + 2 - auth::now()).max(0) as u64;
    c.expect_no_push(Duration::from_secs(past_first)).await;
    d.push_http("ben", "inbox", b"1").await;
    c.expect_push(&frames::private("inbox", b"1")).await;
    d.push_http("ben", "", b"2").await;
    c.expect_push(&frames::user(b"2")).await;
    assert_eq!(logins_expired(d, 0).await, 0.0, "a refresh is no end");
}

/// The webhook's `expires` in both answer shapes ends the login like a
/// JWT's `exp`; an answer without it never expires, and one already past
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_expiry_in_both_answer_shapes() {
    let webhook = MockWebhook::start(WebhookMode::Good).await;
    let url = webhook.url();
    let d = Standalone::start(|c| {
        short_leeway(c);
        c.auth.jwt_secret = None;
        c.auth.webhook_url = Some(url);
    })
    .await;
    let exp = auth::now() + LIFETIME + 1;
    let mut plain = d.connect(0, "wes, plain answer").await;
    webhook.set_mode(WebhookMode::GoodUntil(exp));
    let reply = login(&mut plain, "tok-wes", "wes").await;
    assert_eq!(reply["expires"], exp, "{reply}");
    let mut original = d.connect(0, "ola, original answer").await;
    webhook.set_mode(WebhookMode::OriginalUntil(exp));
    let reply = login(&mut original, "tok-ola", "ola").await;
    assert_eq!(reply["expires"], exp, "{reply}");
    let mut forever = d.connect(0, "nia, no expiry").await;
    webhook.set_mode(WebhookMode::Good);
    let reply = login(&mut forever, "tok-nia", "nia").await;
    assert_eq!(reply.get("expires"), None, "{reply}");

    plain.must_sub_private("inbox").await;
    original.must_sub_private("inbox").await;
    for (c, uid) in [(&mut plain, "wes"), (&mut original, "ola")] {
        expect_login_ended(c, uid).await;
        d.push_http(uid, "inbox", b"late").await;
        c.expect_no_push(NOTHING_FOR).await;
    }
    d.push_http("nia", "", b"still").await;
    forever.expect_push(&frames::user(b"still")).await;

    webhook.set_mode(WebhookMode::GoodUntil(auth::an_hour_ago()));
    let mut late = d.connect(0, "an expired webhook answer").await;
    let reply = late.login("tok-zed").await;
    late.assert_code(&reply, code::AUTH_FAILED, "webhook answer already expired");
}

/// MessagePack connections get the same `expires` and the same 10004 map.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_login_expires_and_ends() {
    let d = Standalone::start(short_leeway).await;
    let mut c = WsClient::connect_with_protocol(&d.ws_url(0), MSGPACK_PROTOCOL)
        .await
        .with_label("mia (msgpack)");
    let exp = auth::now() + LIFETIME;
    let reply = login(&mut c, &auth::hs256_with(JWT_SECRET, "mia", exp), "mia").await;
    assert_eq!(reply["expires"], exp, "{reply}");
    c.must_sub_private("inbox").await;
    let ended = c.next_msgpack(ENDS_WITHIN).await;
    let expected = MsgValue::map([
        ("code", MsgValue::from(10004u64)),
        ("uid", MsgValue::from("mia")),
        ("reason", MsgValue::from("expired")),
    ]);
    assert_eq!(ended, expected);
    d.push_http("mia", "inbox", b"late").await;
    d.push_http("mia", "", b"late").await;
    c.expect_no_push(NOTHING_FOR).await;
}
