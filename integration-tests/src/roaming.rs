//! Clients that roam between edges the way a well-behaved browser does:
//! ask ingress's `GET /v1/connect` for the least loaded edge, subscribe,
//! and when the edge closes with 1001 (it is draining) ask again and
//! resubscribe there. Used by the rolling-restart test to show that every
//! client ends up connected and subscribed again, and to count the pushes
//! each one missed while it moved.
//!
//! Each client is one task; what it saw is kept in a shared [`Seen`] so the
//! test can read it while the clients run.

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

/// Longest wait between failed connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What one roaming client has seen so far.
#[derive(Debug, Default)]
pub struct Seen {
    /// Connected to an edge and subscribed (the 20001 reply arrived).
    pub subscribed: AtomicBool,
    /// Sequence numbers of the pushes received on the topic.
    pub received: Mutex<BTreeSet<u64>>,
    /// Times the client was told 1001 by a draining edge.
    pub going_away: AtomicU64,
    /// Connections made (the first one included).
    pub connections: AtomicU64,
    /// Failed attempts (discovery, handshake or subscribe).
    pub failures: AtomicU64,
    /// The edge URL of the current (or last) connection.
    pub edge: Mutex<String>,
    /// The reason of the last 1001 close.
    pub close_reason: Mutex<String>,
}

impl Seen {
    /// Sequence numbers received so far.
    pub fn received(&self) -> BTreeSet<u64> {
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The current edge URL.
    pub fn edge(&self) -> String {
        self.edge
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A set of roaming clients, all subscribed to one topic; stopped on drop.
pub struct Fleet {
    /// One entry per client.
    pub clients: Vec<Arc<Seen>>,
    tasks: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl Fleet {
    /// Starts `n` clients subscribed to `topic`. Each connection asks
    /// `connect_url` (ingress's `/v1/connect`) where to go, except that
    /// client `i`'s first one goes to `first_urls[i % len]` when
    /// `first_urls` is not empty.
    pub fn start(n: usize, first_urls: &[String], connect_url: &str, topic: &str) -> Self {
        let stop = CancellationToken::new();
        let http = reqwest::Client::builder()
            .timeout(crate::TIMEOUT)
            .build()
            .expect("HTTP client");
        let mut clients = Vec::with_capacity(n);
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let seen = Arc::new(Seen::default());
            let roamer = Roamer {
                seen: seen.clone(),
                first_url: (!first_urls.is_empty())
                    .then(|| first_urls[i % first_urls.len()].clone()),
                connect_url: connect_url.to_owned(),
                topic: topic.to_owned(),
                http: http.clone(),
            };
            tasks.push(tokio::spawn(roamer.run(stop.clone())));
            clients.push(seen);
        }
        Self {
            clients,
            tasks,
            stop,
        }
    }

    /// How many clients are connected and subscribed right now.
    pub fn subscribed(&self) -> usize {
        self.clients
            .iter()
            .filter(|c| c.subscribed.load(Ordering::SeqCst))
            .count()
    }

    /// Waits until every client is connected and subscribed. Panics after
    /// `within`, saying how many are not.
    pub async fn wait_all_subscribed(&self, within: Duration, what: &str) {
        let all = self.clients.len();
        crate::wait_for(
            within,
            format!("{what}: all {all} clients subscribed"),
            || async {
                let subscribed = self.subscribed();
                if subscribed == all {
                    return Ok(());
                }
                let failures: u64 = self
                    .clients
                    .iter()
                    .map(|c| c.failures.load(Ordering::SeqCst))
                    .sum();
                Err(format!(
                    "{subscribed} subscribed ({failures} failed attempts so far)"
                ))
            },
        )
        .await
    }

    /// Waits until every client has received push `seq`. Panics after
    /// `within`, saying how many have not.
    pub async fn wait_all_received(&self, seq: u64, within: Duration) {
        let all = self.clients.len();
        crate::wait_for(
            within,
            format!("all {all} clients got push {seq}"),
            || async {
                let missing = self
                    .clients
                    .iter()
                    .filter(|c| !c.received().contains(&seq))
                    .count();
                if missing == 0 {
                    Ok(())
                } else {
                    Err(format!("{missing} missing it"))
                }
            },
        )
        .await
    }

    /// Number of clients per edge URL, sorted by URL.
    pub fn per_edge(&self) -> Vec<(String, usize)> {
        let mut counts = std::collections::BTreeMap::new();
        for client in &self.clients {
            *counts.entry(client.edge()).or_insert(0) += 1;
        }
        counts.into_iter().collect()
    }

    /// Stops every client and waits for their tasks.
    pub async fn stop(mut self) {
        self.stop.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Roamer {
    seen: Arc<Seen>,
    first_url: Option<String>,
    connect_url: String,
    topic: String,
    http: reqwest::Client,
}

/// How a connection ended.
enum Ended {
    /// The edge said 1001: reconnect at once, elsewhere.
    GoingAway,
    /// Anything else: reconnect after a backoff.
    Lost,
}

impl Roamer {
    async fn run(mut self, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let ended = tokio::select! {
                _ = stop.cancelled() => return,
                ended = self.session() => ended,
            };
            self.seen.subscribed.store(false, Ordering::SeqCst);
            match ended {
                Ended::GoingAway => {
                    self.seen.going_away.fetch_add(1, Ordering::SeqCst);
                    backoff = Duration::from_millis(50);
                    continue;
                }
                Ended::Lost => {
                    self.seen.failures.fetch_add(1, Ordering::SeqCst);
                }
            }
            // Jitter, so a thousand clients do not retry in step.
            let wait = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = sleep(wait) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Where to connect: the first URL once, then ingress's choice.
    async fn discover(&mut self) -> Option<String> {
        if let Some(url) = self.first_url.take() {
            return Some(url);
        }
        let answer: Value = self
            .http
            .get(&self.connect_url)
            .send()
            .await
            .ok()?
            .error_for_status()
            .ok()?
            .json()
            .await
            .ok()?;
        answer["url"].as_str().map(str::to_owned)
    }

    /// One connection: connect, subscribe, read pushes until it ends.
    async fn session(&mut self) -> Ended {
        let Some(url) = self.discover().await else {
            return Ended::Lost;
        };
        let Ok(Ok((mut ws, _))) =
            timeout(crate::TIMEOUT, tokio_tungstenite::connect_async(&url)).await
        else {
            return Ended::Lost;
        };
        self.seen.connections.fetch_add(1, Ordering::SeqCst);
        *self
            .seen
            .edge
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = url;
        let subscribe = serde_json::json!({"code": 1, "topic": self.topic, "id": 1});
        if ws.send(Message::text(subscribe.to_string())).await.is_err() {
            return Ended::Lost;
        }
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Text(text)) => {
                    let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    match frame["code"].as_u64() {
                        Some(20001) => self.seen.subscribed.store(true, Ordering::SeqCst),
                        Some(10001) => {
                            if let Some(seq) = frame["data"]["seq"].as_u64() {
                                self.seen
                                    .received
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .insert(seq);
                            }
                        }
                        _ => {}
                    }
                }
                Ok(Message::Close(Some(close))) if close.code == CloseCode::Away => {
                    self.seen.subscribed.store(false, Ordering::SeqCst);
                    *self
                        .seen
                        .close_reason
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = close.reason.to_string();
                    // Finish the closing handshake, then go elsewhere.
                    let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
                    return Ended::GoingAway;
                }
                Ok(Message::Close(_)) | Err(_) => return Ended::Lost,
                Ok(_) => {}
            }
        }
        Ended::Lost
    }
}
