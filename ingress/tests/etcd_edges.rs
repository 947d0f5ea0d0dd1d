//! The edge list against a real `etcd`: records appear, change and vanish
//! through the watch, and the list goes stale while etcd is down and fresh
//! again after it returns. A missing `etcd` binary fails the test: install
//! it with `apt-get install etcd-server` (`.ci/run` does).

use etcd_client::Client;
use gpush_common::registry::{EdgeRecord, edge_key};
use gpush_ingress::{EdgeList, EtcdEdges};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

/// An etcd process on free ports, killed on drop.
struct Etcd {
    child: Child,
    client_port: u16,
    peer_port: u16,
    dir: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl Etcd {
    fn start() -> Option<Etcd> {
        let dir = std::env::temp_dir().join(format!("gpush-ingress-etcd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (client_port, peer_port) = (free_port(), free_port());
        let child = spawn(client_port, peer_port, &dir)?;
        Some(Etcd {
            child,
            client_port,
            peer_port,
            dir,
        })
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Starts the process again on the same ports and data.
    fn restart(&mut self) {
        self.kill();
        self.child = spawn(self.client_port, self.peer_port, &self.dir).expect("etcd restarts");
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(client_port: u16, peer_port: u16, dir: &Path) -> Option<Child> {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    Command::new("etcd")
        .arg("--name=gpush-test")
        .arg(format!("--data-dir={}", dir.display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=gpush-test={peer}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn client(endpoint: &str) -> Client {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(mut c) = gpush_common::registry::connect_etcd(&[endpoint.to_owned()]).await
                && c.status().await.is_ok()
            {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("etcd answers")
}

fn record(node_id: &str, connections: u64) -> String {
    serde_json::to_string(&EdgeRecord {
        node_id: node_id.into(),
        url: format!("ws://{node_id}:9992/ws"),
        connections,
        started_at: 1,
        updated_at: 2,
    })
    .expect("json")
}

/// Waits until the list satisfies `ok`.
async fn until(edges: &EtcdEdges, what: &str, ok: impl Fn(&EdgeList) -> bool) {
    let reached = tokio::time::timeout(WAIT, async {
        while !ok(&edges.list()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "never reached: {what}; list: {:?}",
        edges.list()
    );
}

fn ids(list: &EdgeList) -> Vec<&str> {
    list.edges.iter().map(|e| e.node_id.as_str()).collect()
}

#[tokio::test]
async fn watches_puts_deletes_and_outages() {
    let Some(mut etcd) = Etcd::start() else {
        panic!("etcd not found on PATH: install it with `apt-get install etcd-server`");
    };
    let mut kv = client(&etcd.endpoint()).await;
    // Present before the watcher starts: found by the initial list.
    kv.put(edge_key("a"), record("a", 5), None)
        .await
        .expect("put");

    let shutdown = CancellationToken::new();
    let edges = EtcdEdges::start(vec![etcd.endpoint()], shutdown.clone());
    until(&edges, "initial list", |l| !l.stale && ids(l) == ["a"]).await;

    // Arrive through the watch; least loaded first.
    kv.put(edge_key("b"), record("b", 1), None)
        .await
        .expect("put");
    until(&edges, "b first", |l| ids(l) == ["b", "a"]).await;
    kv.put(edge_key("b"), record("b", 9), None)
        .await
        .expect("put");
    until(&edges, "b updated", |l| ids(l) == ["a", "b"]).await;
    kv.put("/unrelated/key", "x", None).await.expect("put");
    kv.delete(edge_key("a"), None).await.expect("delete");
    until(&edges, "a deleted", |l| ids(l) == ["b"]).await;

    // Down: stale, last known list kept.
    etcd.kill();
    until(&edges, "stale", |l| l.stale && ids(l) == ["b"]).await;
    etcd.restart();
    let mut kv = client(&etcd.endpoint()).await;
    kv.put(edge_key("c"), record("c", 0), None)
        .await
        .expect("put");
    until(&edges, "fresh after restart", |l| {
        !l.stale && ids(l) == ["c", "b"]
    })
    .await;

    shutdown.cancel();
}
