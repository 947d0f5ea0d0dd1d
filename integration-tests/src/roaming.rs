//! Clients that roam between edges the way a well-behaved browser does:
//! ask ingress's `GET /v1/connect` for the least loaded edge, subscribe,
//! and when the connection ends (the edge drains with 1001, dies, or is
//! refused) ask again, avoiding the edge they just lost, and resubscribe
//! there with `since`: the last offset and epoch they received, as
//! `gpush.js` does, so the edge sends what they missed meanwhile. Used by
//! the rolling-restart, edge-crash and NATS-failover tests to show that
//! every client ends up connected and subscribed again, and to count per
//! client the pushes it missed, got twice, or was told it lost.
//!
//! Each client is one task; what it saw is kept in a shared [`Seen`] so the
//! test can read it while the clients run.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::fmt;
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
    /// Failed attempts (discovery, handshake or subscribe), and
    /// connections that ended without 1001.
    pub failures: AtomicU64,
    /// The edge URL of the current (or last) connection.
    pub edge: Mutex<String>,
    /// The reason of the last 1001 close.
    pub close_reason: Mutex<String>,
    /// The topic's last offset received and its epoch (from the last
    /// subscribe reply): what the next subscribe sends as `since`.
    pub position: Mutex<Option<(u64, String)>>,
    /// Subscribes with `since` answered `recovered: true`.
    pub recoveries: AtomicU64,
    /// Subscribes with `since` answered `recovered: false` (or without
    /// `recovered`): the client was told it lost pushes.
    pub not_recovered: AtomicU64,
    /// Pushes 10007 for the topic: the edge told the client it lost pushes.
    pub gap_notices: AtomicU64,
    /// Pushes that arrived as part of a recovery (offset up to the
    /// position in the `recovered: true` reply).
    pub recovered_pushes: AtomicU64,
    /// Pushes whose sequence number had already been received.
    pub duplicates: AtomicU64,
    /// Pushes whose offset was not above the last one received.
    pub out_of_order: AtomicU64,
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

    /// The last offset received and its epoch.
    pub fn position(&self) -> Option<(u64, String)> {
        self.position
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Times this client was told it lost pushes (`recovered: false`, or
    /// push 10007).
    pub fn told_lost(&self) -> u64 {
        self.not_recovered.load(Ordering::SeqCst) + self.gap_notices.load(Ordering::SeqCst)
    }

    fn set_position(&self, position: Option<(u64, String)>) {
        *self.position.lock().unwrap_or_else(PoisonError::into_inner) = position;
    }

    /// Records a push of the topic: its sequence number and offset.
    fn push(&self, seq: Option<u64>, offset: Option<u64>, recovering_until: &mut Option<u64>) {
        if let Some(offset) = offset {
            let mut position = self.position.lock().unwrap_or_else(PoisonError::into_inner);
            match position.as_mut() {
                Some((last, _)) if offset <= *last => {
                    self.out_of_order.fetch_add(1, Ordering::SeqCst);
                }
                Some((last, _)) => *last = offset,
                None => {}
            }
            match *recovering_until {
                Some(until) if offset <= until => {
                    self.recovered_pushes.fetch_add(1, Ordering::SeqCst);
                }
                Some(_) => *recovering_until = None,
                None => {}
            }
        }
        if let Some(seq) = seq {
            let fresh = self
                .received
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(seq);
            if !fresh {
                self.duplicates.fetch_add(1, Ordering::SeqCst);
            }
        }
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
        let edges_url = connect_url
            .strip_suffix("/connect")
            .map(|base| format!("{base}/edges"));
        let mut clients = Vec::with_capacity(n);
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let seen = Arc::new(Seen::default());
            let roamer = Roamer {
                seen: seen.clone(),
                first_url: (!first_urls.is_empty())
                    .then(|| first_urls[i % first_urls.len()].clone()),
                connect_url: connect_url.to_owned(),
                edges_url: edges_url.clone(),
                avoid: None,
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

    /// What each client got of the pushes `acked` (sequence numbers
    /// ingress acknowledged).
    pub fn report(&self, acked: &[u64]) -> Delivery {
        let clients = self
            .clients
            .iter()
            .map(|c| {
                let got = c.received();
                ClientDelivery {
                    missed: acked.iter().filter(|s| !got.contains(s)).count() as u64,
                    duplicates: c.duplicates.load(Ordering::SeqCst),
                    out_of_order: c.out_of_order.load(Ordering::SeqCst),
                    told_lost: c.told_lost(),
                    recoveries: c.recoveries.load(Ordering::SeqCst),
                    recovered_pushes: c.recovered_pushes.load(Ordering::SeqCst),
                }
            })
            .collect();
        Delivery {
            pushes: acked.len(),
            clients,
        }
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

/// What one client got of a run's acknowledged pushes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientDelivery {
    /// Acknowledged pushes it never received.
    pub missed: u64,
    /// Pushes received more than once.
    pub duplicates: u64,
    /// Pushes whose offset was not above the previous one's.
    pub out_of_order: u64,
    /// Times it was told it lost pushes (`recovered: false`, 10007).
    pub told_lost: u64,
    /// Subscribes with `since` answered `recovered: true`.
    pub recoveries: u64,
    /// Pushes it received through a recovery.
    pub recovered_pushes: u64,
}

/// Per-client delivery of a run's acknowledged pushes
/// ([`Fleet::report`]); `Display` gives the figures.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Acknowledged pushes counted.
    pub pushes: usize,
    /// One entry per client, in fleet order.
    pub clients: Vec<ClientDelivery>,
}

impl Delivery {
    fn total(&self, field: impl Fn(&ClientDelivery) -> u64) -> u64 {
        self.clients.iter().map(field).sum()
    }

    fn max(&self, field: impl Fn(&ClientDelivery) -> u64) -> u64 {
        self.clients.iter().map(field).max().unwrap_or(0)
    }

    fn min(&self, field: impl Fn(&ClientDelivery) -> u64) -> u64 {
        self.clients.iter().map(field).min().unwrap_or(0)
    }

    /// Clients that missed a push without being told.
    pub fn silently_missed(&self) -> Vec<usize> {
        (0..self.clients.len())
            .filter(|&i| self.clients[i].missed > 0 && self.clients[i].told_lost == 0)
            .collect()
    }

    /// Panics unless every client got every push exactly once, in offset
    /// order, and was never told it lost one.
    pub fn assert_none_lost(&self, what: &str) {
        for (i, c) in self.clients.iter().enumerate() {
            assert!(
                c.missed == 0 && c.duplicates == 0 && c.out_of_order == 0 && c.told_lost == 0,
                "{what}: client {i} of {}: {c:?} ({self})",
                self.clients.len()
            );
        }
    }
}

impl fmt::Display for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.clients.len();
        let deliveries = self.pushes * n;
        let missed = self.total(|c| c.missed);
        let affected = self.clients.iter().filter(|c| c.missed > 0).count();
        write!(
            f,
            "{} acknowledged pushes x {n} clients: {missed} of {deliveries} deliveries missed \
             ({:.3} %; {affected} clients missed any, at most {} each; {} silently), \
             {} duplicates, {} out of order, told lost {} times; {} recoveries brought \
             {} pushes (per client {}-{})",
            self.pushes,
            100.0 * missed as f64 / deliveries.max(1) as f64,
            self.max(|c| c.missed),
            self.silently_missed().len(),
            self.total(|c| c.duplicates),
            self.total(|c| c.out_of_order),
            self.total(|c| c.told_lost),
            self.total(|c| c.recoveries),
            self.total(|c| c.recovered_pushes),
            self.min(|c| c.recovered_pushes),
            self.max(|c| c.recovered_pushes),
        )
    }
}

struct Roamer {
    seen: Arc<Seen>,
    first_url: Option<String>,
    connect_url: String,
    /// `GET /v1/edges`, to find another edge than `avoid`.
    edges_url: Option<String>,
    /// The edge the last connection (or attempt) was lost on: the next
    /// one goes elsewhere when another edge is registered (a killed edge
    /// stays registered until its lease expires).
    avoid: Option<String>,
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

    async fn get(&self, url: &str) -> Option<Value> {
        self.http
            .get(url)
            .send()
            .await
            .ok()?
            .error_for_status()
            .ok()?
            .json()
            .await
            .ok()
    }

    /// Where to connect: the first URL once, then ingress's choice, or
    /// another registered edge when that is the one to avoid.
    async fn discover(&mut self) -> Option<String> {
        if let Some(url) = self.first_url.take() {
            return Some(url);
        }
        let best = self.get(&self.connect_url).await?["url"]
            .as_str()?
            .to_owned();
        if self.avoid.as_ref() != Some(&best) {
            return Some(best);
        }
        let Some(edges_url) = &self.edges_url else {
            return Some(best);
        };
        let list = self.get(edges_url).await?;
        let other = list["edges"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["url"].as_str())
            .find(|url| Some(*url) != self.avoid.as_deref())
            .map(str::to_owned);
        Some(other.unwrap_or(best))
    }

    /// One connection: connect, subscribe (with `since` once a position is
    /// known), read pushes until it ends.
    async fn session(&mut self) -> Ended {
        let Some(url) = self.discover().await else {
            return Ended::Lost;
        };
        let Ok(Ok((mut ws, _))) =
            timeout(crate::TIMEOUT, tokio_tungstenite::connect_async(&url)).await
        else {
            self.avoid = Some(url);
            return Ended::Lost;
        };
        self.avoid = Some(url.clone());
        self.seen.connections.fetch_add(1, Ordering::SeqCst);
        *self
            .seen
            .edge
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = url;
        let since = self.seen.position();
        let mut subscribe = json!({"code": 1, "topic": self.topic, "id": 1});
        if let Some((offset, epoch)) = &since {
            subscribe["since"] = json!({"offset": offset, "epoch": epoch});
        }
        if ws.send(Message::text(subscribe.to_string())).await.is_err() {
            return Ended::Lost;
        }
        // The reply's offset while the pushes a recovery sends arrive.
        let mut recovering_until = None;
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Text(text)) => {
                    let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    match frame["code"].as_u64() {
                        Some(20001) => {
                            self.joined(&frame, since.is_some(), &mut recovering_until);
                        }
                        Some(10001) if frame["topic"] == self.topic.as_str() => {
                            self.seen.push(
                                frame["data"]["seq"].as_u64(),
                                frame["offset"].as_u64(),
                                &mut recovering_until,
                            );
                        }
                        Some(10007) if frame["topic"] == self.topic.as_str() => {
                            self.seen.gap_notices.fetch_add(1, Ordering::SeqCst);
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

    /// The subscribe reply: where the stream stands, and after a `since`
    /// whether the missed pushes follow.
    fn joined(&mut self, reply: &Value, asked_since: bool, recovering_until: &mut Option<u64>) {
        let position = match (reply["offset"].as_u64(), reply["epoch"].as_str()) {
            (Some(offset), Some(epoch)) => Some((offset, epoch.to_owned())),
            _ => None,
        };
        let recovered = reply["recovered"] == true;
        if asked_since && recovered {
            // The missed pushes follow and move the position.
            self.seen.recoveries.fetch_add(1, Ordering::SeqCst);
            *recovering_until = position.as_ref().map(|p| p.0);
            if let Some((_, epoch)) = &position {
                let mut at = self
                    .seen
                    .position
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if let Some(at) = at.as_mut() {
                    at.1.clone_from(epoch);
                }
            }
        } else {
            if asked_since {
                self.seen.not_recovered.fetch_add(1, Ordering::SeqCst);
            }
            self.seen.set_position(position);
        }
        self.seen.subscribed.store(true, Ordering::SeqCst);
    }
}

/// Pushes `{"seq":n}` to one topic with increasing `n` through ingress's
/// HTTP API, and keeps which of them ingress acknowledged (200) and which
/// it refused.
#[derive(Clone)]
pub struct Pusher {
    api: crate::PushApi,
    topic: String,
    acked: Arc<Mutex<Vec<u64>>>,
    refused: Arc<Mutex<Vec<u64>>>,
}

impl Pusher {
    /// A pusher to `topic` through `api`.
    pub fn new(api: crate::PushApi, topic: &str) -> Self {
        Self {
            api,
            topic: topic.to_owned(),
            acked: Arc::default(),
            refused: Arc::default(),
        }
    }

    /// Pushes `{"seq":seq}` once.
    pub async fn push(&self, seq: u64) {
        let body = crate::PushApi::push_data_body(&crate::PushMsg::public(
            &self.topic,
            format!("{{\"seq\":{seq}}}"),
        ));
        let reply = self.api.post("/v1/pushData", body, None).await;
        let list = if reply.status == 200 {
            &self.acked
        } else {
            &self.refused
        };
        list.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(seq);
    }

    /// Pushes `from..` one after the other, waiting `every` after each
    /// answer, until `stop`; returns the last sequence number used.
    pub async fn run(self, from: u64, every: Duration, stop: Arc<AtomicBool>) -> u64 {
        let mut seq = from;
        while !stop.load(Ordering::SeqCst) {
            self.push(seq).await;
            seq += 1;
            sleep(every).await;
        }
        seq - 1
    }

    /// Waits until ingress has acknowledged `n` more pushes than so far.
    pub async fn wait_acked(&self, n: usize, what: &str) {
        self.wait_acked_within(n, crate::TIMEOUT, what).await;
    }

    /// [`Pusher::wait_acked`], panicking after `within`.
    pub async fn wait_acked_within(&self, n: usize, within: Duration, what: &str) {
        let before = self.acked().len();
        crate::wait_until(within, what, || async { self.acked().len() >= before + n }).await;
    }

    /// The sequence numbers acknowledged so far.
    pub fn acked(&self) -> BTreeSet<u64> {
        self.acked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }

    /// The sequence numbers acknowledged within `range`, in order.
    pub fn acked_in(&self, range: std::ops::RangeInclusive<u64>) -> Vec<u64> {
        self.acked()
            .into_iter()
            .filter(|s| range.contains(s))
            .collect()
    }

    /// The sequence numbers refused so far.
    pub fn refused(&self) -> Vec<u64> {
        self.refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
