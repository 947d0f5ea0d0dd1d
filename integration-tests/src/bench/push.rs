//! Pushing: payloads that carry their send time, and the HTTP calls of the
//! push APIs (gpush's `/v1/pushData` and `/v1/pushBatch`, the baseline's
//! `/push`), over one keep-alive client.

use crate::bench::client::unix_micros;
use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, interval};

/// Longest a push call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A push payload: `{"t":<unix micros now>,"i":<seq>}`, plus `"u":<uid>`
/// for a private push so the receiver can tell a misdelivery.
pub fn stamp(seq: u64, uid: Option<&str>) -> String {
    match uid {
        Some(uid) => format!(r#"{{"t":{},"i":{seq},"u":"{uid}"}}"#, unix_micros()),
        None => format!(r#"{{"t":{},"i":{seq}}}"#, unix_micros()),
    }
}

/// xorshift64*: a small, good-enough PRNG for picking users and topics.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from the clock.
    pub fn seeded() -> Self {
        Self(unix_micros() | 1)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// Batch calls in flight at once, at most, in [`push_batches_for`].
const CALLS_IN_FLIGHT: usize = 16;

/// Sends `/v1/pushBatch` calls of `batch` messages at `rate` messages/s
/// for `run_for`, numbering them from `first`; `message(seq)` gives each
/// message's (uid, topic, payload). Calls overlap (at most 16), so one slow
/// call does not lower the rate. Returns how many messages were accepted.
pub async fn push_batches_for(
    pusher: &Pusher,
    rate: u32,
    batch: u32,
    run_for: Duration,
    first: u64,
    mut message: impl FnMut(u64) -> (String, String, String),
) -> anyhow::Result<u64> {
    let calls_per_sec = (rate / batch.max(1)).max(1);
    let mut tick = interval(Duration::from_secs(1) / calls_per_sec);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let permits = Arc::new(Semaphore::new(CALLS_IN_FLIGHT));
    let mut calls = JoinSet::new();
    let end = Instant::now() + run_for;
    let mut seq = first;
    loop {
        tick.tick().await;
        if Instant::now() >= end {
            break;
        }
        let permit = permits.clone().acquire_owned().await?;
        let messages: Vec<(String, String, String)> =
            (0..u64::from(batch)).map(|i| message(seq + i)).collect();
        seq += u64::from(batch);
        let body = batch_json(
            messages
                .iter()
                .map(|(uid, topic, payload)| (uid.as_str(), topic.as_str(), payload.as_bytes())),
        );
        let pusher = pusher.clone();
        calls.spawn(async move {
            let result = pusher.push_batch(body).await;
            drop(permit);
            result
        });
    }
    let mut accepted = 0;
    while let Some(result) = calls.join_next().await {
        result.context("batch call task")??;
        accepted += u64::from(batch);
    }
    Ok(accepted)
}

/// An HTTP client for push calls: keep-alive, no Nagle, bounded calls.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(CALL_TIMEOUT)
        .pool_max_idle_per_host(64)
        .build()
        .expect("build HTTP client")
}

/// `GET url` with a fresh [`http_client`]: the JSON answer of a 2xx.
pub async fn get_json(url: &str) -> anyhow::Result<serde_json::Value> {
    Ok(http_client()
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?
        .error_for_status()?
        .json()
        .await?)
}

/// The JSON of one push-API message (`data` in base64).
pub fn message_json(out: &mut String, uid: &str, topic: &str, payload: &[u8]) {
    let _ = write!(
        out,
        r#"{{"uid":"{uid}","topic":"{topic}","data":"{}"}}"#,
        BASE64.encode(payload)
    );
}

/// The body of `/v1/pushBatch` for `messages` (uid, topic, payload).
pub fn batch_json<'a>(messages: impl IntoIterator<Item = (&'a str, &'a str, &'a [u8])>) -> String {
    let mut out = String::from(r#"{"messages":["#);
    for (i, (uid, topic, payload)) in messages.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        message_json(&mut out, uid, topic, payload);
    }
    out.push_str("]}");
    out
}

/// `POST url` with a JSON body; an error unless the answer is 2xx.
pub async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
) -> anyhow::Result<()> {
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        bail!("POST {url}: {status}: {text}");
    }
    // Read the (small) body so the connection goes back to the pool.
    let _ = response.bytes().await;
    Ok(())
}

/// Which push API a [`Pusher`] calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    /// gpush: `/v1/pushData` with base64 data.
    Gpush,
    /// The baseline: `/push` with the raw payload as body.
    Baseline,
}

/// Pushes public messages to one system.
#[derive(Debug, Clone)]
pub struct Pusher {
    http: reqwest::Client,
    base: String,
    api: Api,
}

impl Pusher {
    /// Pushes through gpush's HTTP API at `http_base` (ingress or a
    /// standalone edge).
    pub fn gpush(http_base: &str) -> Self {
        Self {
            http: http_client(),
            base: http_base.to_owned(),
            api: Api::Gpush,
        }
    }

    /// Pushes to the baseline server at `http_base`.
    pub fn baseline(http_base: &str) -> Self {
        Self {
            http: http_client(),
            base: http_base.to_owned(),
            api: Api::Baseline,
        }
    }

    /// Pushes `payload` (JSON) to public `topic` (the baseline ignores the
    /// topic: it has one).
    pub async fn push(&self, topic: &str, payload: &str) -> anyhow::Result<()> {
        match self.api {
            Api::Gpush => {
                let mut body = String::with_capacity(payload.len() * 2 + 48);
                message_json(&mut body, "", topic, payload.as_bytes());
                post_json(&self.http, &format!("{}/v1/pushData", self.base), body).await
            }
            Api::Baseline => {
                post_json(
                    &self.http,
                    &format!("{}/push", self.base),
                    payload.to_owned(),
                )
                .await
            }
        }
    }

    /// Pushes a batch of private messages (gpush only).
    pub async fn push_batch(&self, body: String) -> anyhow::Result<()> {
        post_json(&self.http, &format!("{}/v1/pushBatch", self.base), body).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_json() {
        let payload = stamp(7, Some("u3"));
        let value: serde_json::Value = serde_json::from_str(&payload).expect("json");
        assert_eq!(value["i"], 7);
        assert_eq!(value["u"], "u3");
        let body = batch_json([("u1", "p", &b"x"[..]), ("u2", "p", &b"y"[..])]);
        let value: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(value["messages"][1]["uid"], "u2");
        assert_eq!(value["messages"][0]["data"], "eA==");
    }
}
