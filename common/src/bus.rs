//! The publishing side of the bus.
//!
//! In a cluster, ingress publishes every push to NATS under the subject of
//! its route (see [`subject`](crate::subject)) and each edge subscribes to
//! exactly the subjects its clients need. In standalone mode there is one
//! process and no NATS: the push API hands pushes straight to the local edge
//! through [`LocalDelivery`], with the same routing and ordering.

use crate::config::split_list;
use crate::envelope;
use crate::push::Push;
use crate::subject::Subjects;
use async_nats::connection::State;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Default time a publish may take before the caller is told the bus is
/// unavailable.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// The in-process receiver of pushes in standalone mode: the local edge.
pub trait LocalDelivery: Send + Sync + 'static {
    /// Delivers one push to the matching local connections. Must not block.
    fn deliver(&self, push: &Push);
}

/// Where the push API sends pushes.
#[derive(Clone)]
pub enum Bus {
    /// A NATS connection.
    Nats(NatsBus),
    /// The edge in this same process, called by the publishing task itself.
    Local(Arc<dyn LocalDelivery>),
    /// The edge in this same process behind a bounded queue and one
    /// dispatcher task (standalone mode): the push API answers once the
    /// pushes are queued, as it does once NATS has them, and fan-out runs
    /// off the request path, in order.
    Queued(LocalQueue),
}

/// How often the NATS client pings its server. A third ping sent while
/// two are unanswered (a hung server, a silent partition: 10-15 s) makes it
/// drop the connection and fail over to another server of the cluster.
pub const NATS_PING_INTERVAL: Duration = Duration::from_secs(5);

/// Default bound of the standalone push queue, in publish calls.
pub const DEFAULT_LOCAL_QUEUE: usize = 1024;

/// The queue in front of a local edge; cheap to clone.
#[derive(Clone)]
pub struct LocalQueue {
    tx: mpsc::Sender<Vec<Push>>,
    timeout: Duration,
}

impl LocalQueue {
    /// Starts the dispatcher task feeding `delivery`. A publish waits for
    /// room in the queue (`capacity` calls) for at most `timeout`. Must be
    /// called inside a Tokio runtime; the task ends when every clone is
    /// dropped.
    pub fn start(delivery: Arc<dyn LocalDelivery>, capacity: usize, timeout: Duration) -> Self {
        let (tx, mut rx) = mpsc::channel::<Vec<Push>>(capacity.max(1));
        tokio::spawn(async move {
            while let Some(pushes) = rx.recv().await {
                for push in &pushes {
                    delivery.deliver(push);
                }
            }
        });
        Self { tx, timeout }
    }
}

/// A publishing connection to NATS; cheap to clone.
#[derive(Clone)]
pub struct NatsBus {
    inner: Arc<NatsInner>,
}

struct NatsInner {
    client: async_nats::Client,
    subjects: Subjects,
    timeout: Duration,
    flusher: Flusher,
}

/// Coalesces acknowledgements: a publisher takes a ticket after its
/// messages are queued, and one task confirms on behalf of every ticket
/// issued before its round began. A round flushes the client and then
/// makes a round trip through the server (see [`round_trip`]), so a ticket
/// is confirmed only once the NATS server has processed the messages, not
/// merely once they left our socket. Concurrent requests share a round
/// (one socket write and one round trip) instead of paying one each.
#[derive(Clone)]
struct Flusher {
    issued: Arc<AtomicU64>,
    kick: mpsc::Sender<()>,
    state: watch::Receiver<Flushed>,
}

/// Tickets up to `ok` were confirmed; tickets up to `failed` were not.
#[derive(Debug, Clone, Copy, Default)]
struct Flushed {
    ok: u64,
    failed: u64,
}

impl Flusher {
    /// Starts the confirming task; a round that takes longer than
    /// `timeout` fails its tickets.
    fn start(client: async_nats::Client, timeout: Duration) -> Self {
        let issued = Arc::new(AtomicU64::new(0));
        let (kick, mut kicks) = mpsc::channel(1);
        let (done, state) = watch::channel(Flushed::default());
        let task_issued = issued.clone();
        // Ends when every NatsBus clone (every kick sender) is gone.
        tokio::spawn(async move {
            let mut echo = Echo::new(client).await;
            while kicks.recv().await.is_some() {
                let target = task_issued.load(Ordering::SeqCst);
                let confirmed = tokio::time::timeout(timeout, echo.round_trip())
                    .await
                    .is_ok_and(|r| r.is_ok());
                done.send_modify(|state| {
                    if confirmed {
                        state.ok = state.ok.max(target);
                    } else {
                        state.failed = state.failed.max(target);
                    }
                });
            }
        });
        Self {
            issued,
            kick,
            state,
        }
    }

    /// Waits until everything published before this call is flushed.
    async fn flushed(&self) -> Result<(), BusError> {
        let ticket = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        // Full means a flush is already due; it will see our ticket.
        let _ = self.kick.try_send(());
        let mut state = self.state.clone();
        let outcome = state
            .wait_for(|s| s.ok >= ticket || s.failed >= ticket)
            .await
            .map_err(|_| BusError::Publish("flusher stopped".into()))?;
        if outcome.ok >= ticket {
            Ok(())
        } else {
            Err(BusError::Publish("the server did not confirm".into()))
        }
    }
}

/// Round trips through the NATS server on a private inbox subject.
struct Echo {
    client: async_nats::Client,
    inbox: async_nats::Subject,
    /// None when the subscription could not be made (the client is
    /// closed): every round trip then fails.
    echoes: Option<async_nats::Subscriber>,
    probe: u64,
}

impl Echo {
    async fn new(client: async_nats::Client) -> Self {
        let inbox = async_nats::Subject::from(client.new_inbox());
        let echoes = client
            .subscribe(inbox.clone())
            .await
            .inspect_err(|e| tracing::error!(error = %e, "bus acknowledgement subscription failed"))
            .ok();
        Self {
            client,
            inbox,
            echoes,
            probe: 0,
        }
    }

    /// Sends a probe behind everything already queued and waits until the
    /// server sends it back. A NATS server handles each connection's
    /// messages in order, so the echo proves it has every earlier one.
    /// Late echoes of abandoned rounds are skipped.
    async fn round_trip(&mut self) -> Result<(), BusError> {
        let failed = |e: &dyn std::fmt::Display| BusError::Publish(e.to_string());
        let echoes = self.echoes.as_mut().ok_or(BusError::NotConnected)?;
        self.probe += 1;
        let probe = self.probe.to_be_bytes();
        self.client
            .publish(self.inbox.clone(), bytes::Bytes::copy_from_slice(&probe))
            .await
            .map_err(|e| failed(&e))?;
        self.client.flush().await.map_err(|e| failed(&e))?;
        while let Some(echo) = futures_util::StreamExt::next(echoes).await {
            if echo.payload[..] == probe {
                return Ok(());
            }
        }
        Err(BusError::NotConnected)
    }
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Not connected to NATS at the moment; nothing was published.
    #[error("bus not connected")]
    NotConnected,
    /// NATS did not take the messages within the publish timeout.
    #[error("bus did not accept the message within {0:?}")]
    Timeout(Duration),
    /// The NATS client refused the messages.
    #[error("bus publish failed: {0}")]
    Publish(String),
}

impl NatsBus {
    /// Wraps a connected client. `timeout` bounds each [`Bus::publish`]
    /// (and each acknowledgement round trip).
    /// Must be called inside a Tokio runtime (it starts the flusher task).
    pub fn new(client: async_nats::Client, subjects: Subjects, timeout: Duration) -> Self {
        Self {
            inner: Arc::new(NatsInner {
                flusher: Flusher::start(client.clone(), timeout),
                client,
                subjects,
                timeout,
            }),
        }
    }

    /// The underlying client.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    async fn publish_all(&self, pushes: &[Push]) -> Result<(), BusError> {
        for push in pushes {
            let subject = self.inner.subjects.for_route(push.route());
            self.inner
                .client
                .publish(subject, envelope::encode(push))
                .await
                .map_err(|e| BusError::Publish(e.to_string()))?;
        }
        self.inner.flusher.flushed().await
    }
}

impl Bus {
    /// Publishes `pushes` in order. Pushes on the same route are delivered
    /// in this order; delivery is at-most-once. On NATS, Ok means the
    /// server has processed the messages (handed them to its subscribers
    /// and routes); an error means some may not have been published.
    pub async fn publish(&self, pushes: &[Push]) -> Result<(), BusError> {
        match self {
            Bus::Local(local) => {
                for push in pushes {
                    local.deliver(push);
                }
                Ok(())
            }
            Bus::Queued(queue) => {
                match tokio::time::timeout(queue.timeout, queue.tx.send(pushes.to_vec())).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(BusError::NotConnected),
                    Err(_) => Err(BusError::Timeout(queue.timeout)),
                }
            }
            Bus::Nats(nats) => {
                if nats.inner.client.connection_state() != State::Connected {
                    return Err(BusError::NotConnected);
                }
                let timeout = nats.inner.timeout;
                tokio::time::timeout(timeout, nats.publish_all(pushes))
                    .await
                    .map_err(|_| BusError::Timeout(timeout))?
            }
        }
    }

    /// Whether pushes can be published now.
    pub fn is_ready(&self) -> bool {
        match self {
            Bus::Local(_) => true,
            Bus::Queued(queue) => !queue.tx.is_closed(),
            Bus::Nats(nats) => nats.inner.client.connection_state() == State::Connected,
        }
    }
}

/// Connects to NATS at `urls` (comma-separated list or several entries),
/// retrying in the background forever if the servers are not up yet, so a
/// process can start before NATS. `name` identifies the connection in NATS
/// monitoring.
pub async fn connect_nats(urls: &[String], name: &str) -> Result<async_nats::Client, BusError> {
    let addrs = split_list(urls);
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .ping_interval(NATS_PING_INTERVAL)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("bus connected"),
                async_nats::Event::Disconnected => tracing::warn!("bus disconnected"),
                other => tracing::info!(event = %other, "bus event"),
            }
        })
        .connect(addrs)
        .await
        .map_err(|e| BusError::Publish(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::Mutex;

    /// Records topics; blocks while the test holds `gate`.
    struct Recorder {
        entered: AtomicU64,
        gate: Mutex<()>,
        seen: Mutex<Vec<String>>,
    }

    impl LocalDelivery for Recorder {
        fn deliver(&self, push: &Push) {
            self.entered.fetch_add(1, Ordering::SeqCst);
            let _gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
            self.seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(push.topic.clone());
        }
    }

    fn push(topic: &str) -> Push {
        Push::new("", topic, Bytes::new())
    }

    // The held guard blocks the dispatcher's thread, which is the point.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_bus_keeps_order_and_bounds_its_queue() {
        let recorder = Arc::new(Recorder {
            entered: AtomicU64::new(0),
            gate: Mutex::new(()),
            seen: Mutex::new(Vec::new()),
        });
        let bus = Bus::Queued(LocalQueue::start(
            recorder.clone(),
            1,
            Duration::from_millis(100),
        ));
        {
            let _held = recorder.gate.lock().expect("gate");
            // One call is taken by the blocked dispatcher, one fills the
            // queue; the next cannot get in and times out.
            bus.publish(&[push("a"), push("b")]).await.expect("first");
            let blocked = tokio::time::timeout(Duration::from_secs(5), async {
                while recorder.entered.load(Ordering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
            .await;
            assert!(blocked.is_ok(), "dispatcher never took the first call");
            bus.publish(&[push("c")]).await.expect("second");
            let third = bus.publish(&[push("lost")]).await;
            assert!(matches!(third, Err(BusError::Timeout(_))), "{third:?}");
        }
        bus.publish(&[push("d")]).await.expect("after");
        let done = tokio::time::timeout(Duration::from_secs(5), async {
            while recorder.seen.lock().expect("seen").len() < 4 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(done.is_ok(), "dispatcher stalled");
        assert_eq!(*recorder.seen.lock().expect("seen"), ["a", "b", "c", "d"]);
    }
}
