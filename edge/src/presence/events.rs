//! Where user online/offline events go: NATS (`<prefix>.events.online`,
//! kept by the JetStream stream `<PREFIX>_EVENTS` with history on) in a
//! cluster; standalone, a webhook that gets them in batches.
//!
//! The webhook's events wait in a queue bounded in bytes (their JSON,
//! `events.webhook_queue_bytes`). One task POSTs `{"events":[...]}` with up
//! to `events.webhook_batch` of them, oldest first, and takes them off the
//! queue once answered 2xx. Any other answer, or none within
//! `events.webhook_timeout`, is retried with backoff (200 ms doubling to
//! 10 s, jittered) for as long as it takes; except a 4xx other than 408
//! and 429, which says the batch will never be taken: it is dropped (and
//! counted, and logged). While the webhook is down the queue fills; when
//! full, the oldest waiting events are dropped to make room for new ones
//! (counted in `gpush_edge_online_events_dropped_total`): a backend that
//! comes back learns the latest state of the users that changed last.

use super::{OnlineEvent, PresenceStats};
use crate::config::EventsConfig;
use bytes::Bytes;
use gpush_common::Subjects;
use gpush_common::backoff::Backoff;
use gpush_common::history::HistoryConfig;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// Where this edge's online events go.
#[derive(Debug, Clone)]
pub(crate) enum Events {
    /// Published on NATS.
    Nats {
        /// The bus.
        client: async_nats::Client,
        /// `<prefix>.events.online`.
        subject: String,
    },
    /// Queued for the webhook.
    Webhook(Arc<WebhookQueue>),
}

impl Events {
    /// Sends `events` on their way.
    pub(crate) async fn send(&self, events: Vec<OnlineEvent>, stats: &PresenceStats) {
        if events.is_empty() {
            return;
        }
        stats
            .events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        match self {
            Events::Nats { client, subject } => {
                for event in &events {
                    // Plain data: encoding cannot fail.
                    let payload = serde_json::to_vec(event).unwrap_or_default();
                    if let Err(e) = client.publish(subject.clone(), payload.into()).await {
                        tracing::warn!(error = %e, "online event not published");
                    }
                }
            }
            Events::Webhook(queue) => {
                for event in &events {
                    queue.push(event, stats);
                }
            }
        }
    }
}

/// Events waiting for the webhook, bounded in bytes.
#[derive(Debug)]
pub(crate) struct WebhookQueue {
    state: Mutex<Queued>,
    max_bytes: usize,
    ready: Notify,
}

#[derive(Debug, Default)]
struct Queued {
    /// (number, JSON) of each waiting event, oldest first.
    events: VecDeque<(u64, Bytes)>,
    bytes: usize,
    next: u64,
}

impl WebhookQueue {
    fn new(max_bytes: usize) -> Self {
        Self {
            state: Mutex::default(),
            max_bytes,
            ready: Notify::new(),
        }
    }

    /// Queues `event`, dropping the oldest waiting ones while it does not
    /// fit.
    fn push(&self, event: &OnlineEvent, stats: &PresenceStats) {
        let json = Bytes::from(serde_json::to_vec(event).unwrap_or_default());
        let mut dropped = 0u64;
        {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            while state.bytes + json.len() > self.max_bytes {
                let Some((_, old)) = state.events.pop_front() else {
                    break;
                };
                state.bytes -= old.len();
                dropped += 1;
            }
            if json.len() <= self.max_bytes {
                state.bytes += json.len();
                let number = state.next;
                state.next += 1;
                state.events.push_back((number, json));
            } else {
                dropped += 1;
            }
        }
        if dropped > 0 {
            stats.events_dropped.fetch_add(dropped, Ordering::Relaxed);
            tracing::warn!(dropped, "events webhook queue full: oldest events dropped");
        }
        self.ready.notify_one();
    }

    /// The oldest `max` waiting events as one body, and the number of the
    /// last one; None when nothing waits.
    fn batch(&self, max: usize) -> Option<(Vec<u8>, u64)> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (last, _) = state.events.front()?;
        let mut last = *last;
        let mut body = b"{\"events\":[".to_vec();
        for (n, (number, json)) in state.events.iter().take(max).enumerate() {
            if n > 0 {
                body.push(b',');
            }
            body.extend_from_slice(json);
            last = *number;
        }
        body.extend_from_slice(b"]}");
        Some((body, last))
    }

    /// Takes the events up to number `last` off the queue (those still
    /// there: some may have been dropped meanwhile).
    fn done(&self, last: u64) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while state.events.front().is_some_and(|(n, _)| *n <= last) {
            if let Some((_, json)) = state.events.pop_front() {
                state.bytes -= json.len();
            }
        }
    }
}

/// Starts the webhook's sender task (None without `events.webhook_url`);
/// events queued on the returned [`Events`] reach the webhook until
/// `shutdown`, then what is still queued gets one last try within the
/// webhook timeout (the task ends then).
pub(crate) fn webhook(
    config: &EventsConfig,
    presence: Arc<super::Presence>,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<(Events, tokio::task::JoinHandle<()>)>> {
    let Some(url) = config.webhook_url.clone() else {
        return Ok(None);
    };
    let client = crate::auth::webhook_client(config.webhook_timeout)?;
    let queue = Arc::new(WebhookQueue::new(config.webhook_queue_bytes));
    let sender = Sender {
        client,
        url,
        queue: queue.clone(),
        batch: config.webhook_batch,
        timeout: config.webhook_timeout,
        presence,
    };
    let task = tokio::spawn(sender.run(shutdown).in_current_span());
    Ok(Some((Events::Webhook(queue), task)))
}

/// How a webhook call ended.
enum Sent {
    /// Answered 2xx.
    Taken,
    /// Down, slow, or an answer that may change: try again.
    Retry(String),
    /// A 4xx other than 408 and 429: this batch will never be taken.
    Refused(u16),
}

struct Sender {
    client: reqwest::Client,
    url: String,
    queue: Arc<WebhookQueue>,
    batch: usize,
    timeout: Duration,
    presence: Arc<super::Presence>,
}

impl Sender {
    async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let Some((body, last)) = self.queue.batch(self.batch) else {
                tokio::select! {
                    () = shutdown.cancelled() => if self.queue.batch(1).is_none() {
                        return;
                    },
                    () = self.queue.ready.notified() => {}
                }
                continue;
            };
            if shutdown.is_cancelled() {
                // Stopping: what is queued gets one try, within the
                // timeout (the last window's events among it).
                let _ = tokio::time::timeout(self.timeout, self.drain()).await;
                return;
            }
            match self.send(body).await {
                Sent::Taken => {
                    self.queue.done(last);
                    backoff.reset();
                }
                Sent::Refused(status) => {
                    let before = self.queue.state.lock().map(|s| s.events.len()).unwrap_or(0);
                    self.queue.done(last);
                    let after = self.queue.state.lock().map(|s| s.events.len()).unwrap_or(0);
                    self.presence
                        .stats
                        .events_dropped
                        .fetch_add(before.saturating_sub(after) as u64, Ordering::Relaxed);
                    tracing::warn!(status, "events webhook refused a batch: dropped");
                }
                Sent::Retry(why) => {
                    tracing::warn!(error = %why, "events webhook failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = tokio::time::sleep(backoff.next_wait()) => {}
                    }
                }
            }
        }
    }

    /// Sends what is queued, each batch once, until the queue is empty or
    /// a call fails.
    async fn drain(&self) {
        while let Some((body, last)) = self.queue.batch(self.batch) {
            match self.send(body).await {
                Sent::Taken | Sent::Refused(_) => self.queue.done(last),
                Sent::Retry(why) => {
                    tracing::warn!(error = %why, "events webhook failed at shutdown");
                    return;
                }
            }
        }
    }

    async fn send(&self, body: Vec<u8>) -> Sent {
        let call = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send();
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(answer)) => {
                let status = answer.status();
                if status.is_success() {
                    Sent::Taken
                } else if status.is_client_error()
                    && status != reqwest::StatusCode::REQUEST_TIMEOUT
                    && status != reqwest::StatusCode::TOO_MANY_REQUESTS
                {
                    Sent::Refused(status.as_u16())
                } else {
                    Sent::Retry(format!("answered {status}"))
                }
            }
            Ok(Err(e)) => Sent::Retry(e.to_string()),
            Err(_) => Sent::Retry(format!("no answer within {:?}", self.timeout)),
        }
    }
}

/// Makes the events stream exist (cluster, history on), retrying while
/// JetStream does not answer, until `shutdown`.
pub(crate) async fn keep_stream(
    client: async_nats::Client,
    subjects: Subjects,
    history: HistoryConfig,
    max_age: Duration,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match gpush_common::history::jetstream::ensure_events_stream(
            client.clone(),
            &subjects,
            &history,
            max_age,
            Duration::from_secs(2),
        )
        .await
        {
            Ok(_) => {
                tracing::info!("events stream ready");
                return;
            }
            Err(e) => tracing::error!(error = %e, "events stream unavailable; retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff.next_wait()) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(uid: &str) -> OnlineEvent {
        OnlineEvent {
            uid: uid.into(),
            online: true,
            at: 1,
        }
    }

    #[test]
    fn a_full_queue_drops_its_oldest_events() {
        let stats = PresenceStats::default();
        let one = serde_json::to_vec(&event("u0")).expect("json").len();
        let queue = WebhookQueue::new(3 * one);
        for n in 0..5 {
            queue.push(&event(&format!("u{n}")), &stats);
        }
        assert_eq!(stats.events_dropped.load(Ordering::Relaxed), 2);
        let (body, last) = queue.batch(2).expect("waiting");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(body["events"][0]["uid"], "u2", "u0 and u1 were dropped");
        assert_eq!(body["events"].as_array().map(Vec::len), Some(2));
        queue.done(last);
        let (body, last) = queue.batch(10).expect("one left");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            body,
            serde_json::json!({"events": [{"uid": "u4", "online": true, "at": 1}]})
        );
        queue.done(last);
        assert!(queue.batch(10).is_none());
    }
}
