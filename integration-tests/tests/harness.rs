//! Self-tests of the harness: the external processes start, serve and stop,
//! the test keys sign verifiable tokens, and the mock webhook answers as
//! documented. These pass without any gpush code running.

use gpush_integration_tests::auth::{self, MockWebhook, WebhookMode};
use gpush_integration_tests::{Etcd, NatsServer, TIMEOUT, free_port};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Speaks just enough of the NATS protocol to prove a server is there:
/// reads its `INFO`, sends `CONNECT` + `PING`, expects `PONG`.
async fn nats_ping(addr: std::net::SocketAddr) -> std::io::Result<()> {
    let stream = TcpStream::connect(addr).await?;
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    assert!(line.starts_with("INFO "), "expected INFO, got {line:?}");
    stream
        .get_mut()
        .write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
        .await?;
    line.clear();
    stream.read_line(&mut line).await?;
    assert_eq!(line, "PONG\r\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_starts_answers_and_restarts_on_the_same_port() {
    let mut nats = NatsServer::start().await;
    assert!(nats.url().starts_with("nats://127.0.0.1:"));
    timeout(TIMEOUT, nats_ping(nats.addr()))
        .await
        .expect("NATS PING timed out")
        .expect("NATS PING");

    assert_eq!(nats.subscriptions().await, Vec::<String>::new());

    nats.stop();
    assert!(!nats.is_running());
    assert!(
        TcpStream::connect(nats.addr()).await.is_err(),
        "a stopped nats-server still accepts connections"
    );

    let port = nats.port();
    nats.restart().await;
    assert_eq!(nats.port(), port, "restart must keep the port");
    timeout(TIMEOUT, nats_ping(nats.addr()))
        .await
        .expect("NATS PING after restart timed out")
        .expect("NATS PING after restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_starts_and_serves_kv() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client();
    client
        .put("/gpush-it/self-test", "hello", None)
        .await
        .expect("etcd put");
    assert_eq!(
        etcd.get("/gpush-it/self-test").await.as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(etcd.keys("/gpush-it/").await, vec!["/gpush-it/self-test"]);
    assert_eq!(etcd.edge_record("nobody").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_ports_are_bindable() {
    let port = free_port();
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("free_port returned a busy port");
}

fn verify(
    token: &str,
    algorithm: Algorithm,
    key: &DecodingKey,
) -> jsonwebtoken::errors::Result<Value> {
    jsonwebtoken::decode::<Value>(token, key, &Validation::new(algorithm)).map(|t| t.claims)
}

#[test]
fn test_keys_sign_tokens_their_public_keys_verify() {
    let rsa_public = std::fs::read(auth::fixture(auth::RSA_PUBLIC)).expect("read RSA public key");
    let rsa = DecodingKey::from_rsa_pem(&rsa_public).expect("RSA public key");
    let good = auth::rs256(auth::RSA_PRIVATE, "alice", auth::in_one_hour());
    assert_eq!(
        verify(&good, Algorithm::RS256, &rsa).expect("RS256")["sub"],
        "alice"
    );
    let other = auth::rs256(auth::RSA_OTHER_PRIVATE, "alice", auth::in_one_hour());
    assert!(verify(&other, Algorithm::RS256, &rsa).is_err());
    let expired = auth::rs256(auth::RSA_PRIVATE, "alice", auth::an_hour_ago());
    assert!(verify(&expired, Algorithm::RS256, &rsa).is_err());

    let ec_public = std::fs::read(auth::fixture(auth::EC_PUBLIC)).expect("read EC public key");
    let ec = DecodingKey::from_ec_pem(&ec_public).expect("EC public key");
    let good = auth::es256(auth::EC_PRIVATE, "bob", auth::in_one_hour());
    assert_eq!(
        verify(&good, Algorithm::ES256, &ec).expect("ES256")["sub"],
        "bob"
    );
    let other = auth::es256(auth::EC_OTHER_PRIVATE, "bob", auth::in_one_hour());
    assert!(verify(&other, Algorithm::ES256, &ec).is_err());

    let secret = DecodingKey::from_secret(auth::JWT_SECRET.as_bytes());
    assert_eq!(
        verify(&auth::hs256("carol"), Algorithm::HS256, &secret).expect("HS256")["sub"],
        "carol"
    );
    let wrong = auth::hs256_with("another-secret", "carol", auth::in_one_hour());
    assert!(verify(&wrong, Algorithm::HS256, &secret).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_webhook_answers_in_every_mode() {
    let webhook = MockWebhook::start(WebhookMode::Good).await;
    let http = reqwest::Client::new();
    let call = |token: &'static str| {
        let request = http.post(webhook.url()).json(&json!({"token": token}));
        async move {
            let response = timeout(TIMEOUT, request.send())
                .await
                .expect("webhook call timed out")
                .expect("webhook call");
            let status = response.status().as_u16();
            (status, response.text().await.expect("webhook body"))
        }
    };
    let json = |body: &str| serde_json::from_str::<Value>(body).expect("JSON body");

    let (status, body) = call("tok-alice").await;
    assert_eq!((status, json(&body)), (200, json!({"uid": "alice"})));
    assert_eq!(call("nope").await.0, 401);

    webhook.set_mode(WebhookMode::Original);
    let (status, body) = call("tok-bob").await;
    assert_eq!(
        (status, json(&body)),
        (
            200,
            json!({"code": 0, "data": {"user_info": {"uid": "bob"}}})
        )
    );
    assert_eq!(json(&call("nope").await.1)["code"], 1);

    webhook.set_mode(WebhookMode::Garbage);
    assert_eq!(call("tok-x").await, (200, "not json".to_owned()));

    webhook.set_mode(WebhookMode::Slow(Duration::from_secs(3)));
    let slow = http
        .post(webhook.url())
        .json(&json!({"token": "tok-x"}))
        .send();
    assert!(
        timeout(Duration::from_millis(300), slow).await.is_err(),
        "the slow webhook answered within 300 ms"
    );

    assert_eq!(webhook.requests().len(), 6);
    assert_eq!(json(&webhook.requests()[0]), json!({"token": "tok-alice"}));

    let down = auth::down_webhook_url();
    assert!(http.post(&down).send().await.is_err(), "{down} answered");
}
