//! Child processes: `nats-server`, `etcd` and the `gpush-edge` binary.
//!
//! Each runs on free loopback ports with its stderr/stdout captured to a
//! log file in a scratch directory; a process that fails to come up makes
//! the test panic with the tail of that log. Every process is killed (and
//! reaped) on `Drop`.

use anyhow::{Context as _, anyhow, bail};
use gpush_common::registry::{EdgeRecord, edge_key};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::{Instant, sleep, timeout};

/// How long a child process gets to start serving.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Poll interval while waiting for a process.
pub const POLL: Duration = Duration::from_millis(25);

/// A TCP port on 127.0.0.1 that was free a moment ago. Only for processes
/// that must be told a port; in-process servers bind port 0 instead.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0 to find a free port")
}

/// A fresh, empty directory under the system temp dir, unique per process
/// and call.
pub fn scratch_dir(label: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("gpush-it-{}-{n}-{label}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create scratch dir {}: {e}", dir.display()));
    dir
}

/// Finds an executable on `PATH` (and in the sbin directories Debian puts
/// servers in), or panics saying how to install it.
pub fn find_program(name: &str, install_hint: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"];
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` not found on PATH or in /usr/sbin: the integration tests need it. \
                 Install it with: {install_hint}"
            )
        })
}

/// The directory cargo put the running executable's build in
/// (`<target>/<profile>/`): binaries run from it directly, test
/// executables from its `deps/` subdirectory.
pub fn build_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("path of the running executable")?;
    let dir = exe
        .parent()
        .with_context(|| format!("{} has no directory", exe.display()))?;
    let dir = match dir.parent() {
        Some(profile) if dir.ends_with("deps") => profile,
        _ => dir,
    };
    Ok(dir.to_owned())
}

/// Path of the workspace binary `name` built alongside the running
/// executable, in [`build_dir`]. Whether it exists is for the caller to
/// check.
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    Ok(build_dir()?.join(format!("{name}{}", std::env::consts::EXE_SUFFIX)))
}

/// A child process whose stdout and stderr go to a log file, killed (and
/// reaped) on `Drop`.
///
/// Each operation that can fail comes twice: a `try_`/`check_` form that
/// returns the error (for the benchmark program) and a panicking form (for
/// tests). Failures carry the tail of the log.
#[derive(Debug)]
pub struct LoggedChild {
    what: String,
    child: Child,
    log: PathBuf,
}

impl LoggedChild {
    /// Spawns `command` (named `what` in messages) with stdin closed and
    /// stdout and stderr in a new file `log`.
    pub fn try_spawn(what: &str, mut command: Command, log: PathBuf) -> anyhow::Result<Self> {
        let out = File::create(&log)
            .map_err(|e| anyhow!("cannot create log file {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| anyhow!("cannot clone log file handle: {e}"))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = command
            .spawn()
            .map_err(|e| anyhow!("cannot spawn {what} ({command:?}): {e}"))?;
        Ok(Self {
            what: what.to_owned(),
            child,
            log,
        })
    }

    /// [`LoggedChild::try_spawn`], panicking on failure.
    pub fn spawn(what: &str, command: Command, log: PathBuf) -> Self {
        Self::try_spawn(what, command, log).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name given at spawn, for messages.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 40)
    }

    /// An error (with the log tail) when the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!(
                "{} exited unexpectedly ({status}); log {}:\n{}",
                self.what,
                self.log.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// [`LoggedChild::check_running`], panicking when the process has
    /// exited.
    pub fn assert_running(&mut self) {
        self.check_running().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Kills the process and reaps it; does nothing when it has exited.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for `addr` to accept TCP connections while the process lives;
    /// an error when it exits or [`START_TIMEOUT`] passes.
    pub async fn try_wait_for_port(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.check_running()?;
            if let Ok(Ok(_)) = timeout(POLL * 4, tokio::net::TcpStream::connect(addr)).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not accept connections on {addr} within {START_TIMEOUT:?}; log {}:\n{}",
                    self.what,
                    self.log.display(),
                    self.log_tail()
                );
            }
            sleep(POLL).await;
        }
    }

    /// [`LoggedChild::try_wait_for_port`], panicking on failure.
    pub async fn wait_for_port(&mut self, addr: SocketAddr) {
        self.try_wait_for_port(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for LoggedChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A server process that tests stop and start again: its scratch
/// directory, how often it was started (each start logs to its own file,
/// `<dir>/<name>-<n>.log`) and the running process, if any. On `Drop` the
/// process is killed and the directory removed.
#[derive(Debug)]
struct Restartable {
    name: &'static str,
    dir: PathBuf,
    starts: u32,
    proc: Option<LoggedChild>,
}

impl Restartable {
    /// Nothing running yet, in a fresh scratch directory labelled `name`.
    fn new(name: &'static str) -> Self {
        Self {
            name,
            dir: scratch_dir(name),
            starts: 0,
            proc: None,
        }
    }

    /// Stops the process if it runs, then spawns `command` (named `what`
    /// in messages) as the next start and returns it, for the caller to
    /// wait until it serves.
    fn spawn(&mut self, what: &str, command: Command) -> &mut LoggedChild {
        self.stop();
        self.starts += 1;
        let log = self.dir.join(format!("{}-{}.log", self.name, self.starts));
        self.proc.insert(LoggedChild::spawn(what, command, log))
    }

    fn is_running(&self) -> bool {
        self.proc.is_some()
    }

    fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
        }
    }
}

impl Drop for Restartable {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `nats-server` on a free loopback port.
///
/// [`NatsServer::stop`] and [`NatsServer::restart`] keep the port, so a test
/// can take the bus away and bring it back under the same URL that ingress
/// and edges are configured with.
#[derive(Debug)]
pub struct NatsServer {
    port: u16,
    monitor_port: u16,
    server: Restartable,
}

impl NatsServer {
    /// Starts `nats-server` and waits until it accepts connections.
    pub async fn start() -> Self {
        let mut nats = Self {
            port: free_port(),
            monitor_port: free_port(),
            server: Restartable::new("nats"),
        };
        nats.spawn().await;
        nats
    }

    async fn spawn(&mut self) {
        let program = find_program("nats-server", "apt-get install nats-server");
        let mut command = Command::new(program);
        command.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        command.args(["-m", &self.monitor_port.to_string()]);
        let addr = self.addr();
        self.server
            .spawn("nats-server", command)
            .wait_for_port(addr)
            .await;
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The client address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Every subscription subject of every client connection, sorted, from
    /// the monitoring endpoint (`/connz?subs=1`).
    pub async fn subscriptions(&self) -> Vec<String> {
        let url = format!("http://127.0.0.1:{}/connz?subs=1", self.monitor_port);
        let body: serde_json::Value = reqwest::get(&url)
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let mut subjects: Vec<String> = body["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| {
                c["subscriptions_list"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect();
        subjects.sort();
        subjects
    }

    /// Waits until `ok(subscriptions)` holds; panics after `within` with
    /// the last list seen.
    pub async fn wait_subscriptions(
        &self,
        within: Duration,
        what: &str,
        ok: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let subjects = self.subscriptions().await;
            if ok(&subjects) {
                return subjects;
            }
            if Instant::now() >= deadline {
                panic!("NATS subscriptions never showed {what} within {within:?}: {subjects:?}");
            }
            sleep(POLL * 2).await;
        }
    }

    /// Whether the server process is currently running.
    pub fn is_running(&self) -> bool {
        self.server.is_running()
    }

    /// Kills the server; connected clients see the bus go away.
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Stops the server if it runs, then starts it again on the same port.
    pub async fn restart(&mut self) {
        self.spawn().await;
    }
}

/// A single-member `etcd` cluster with its data in a scratch directory.
///
/// [`Etcd::stop`] and [`Etcd::restart`] keep the ports and the data, so a
/// test can take etcd away and bring it back, with its keys, under the URL
/// that ingress and edges are configured with.
pub struct Etcd {
    client_port: u16,
    peer_port: u16,
    server: Restartable,
    client: etcd_client::Client,
}

impl Etcd {
    /// Starts etcd and waits until a KV read succeeds.
    pub async fn start() -> Self {
        let (client_port, peer_port) = (free_port(), free_port());
        let mut server = Restartable::new("etcd");
        let client = Self::spawn(&mut server, client_port, peer_port).await;
        Self {
            client_port,
            peer_port,
            server,
            client,
        }
    }

    /// Runs etcd as the next start of `server` and returns a client once a
    /// KV read succeeds.
    async fn spawn(
        server: &mut Restartable,
        client_port: u16,
        peer_port: u16,
    ) -> etcd_client::Client {
        let program = find_program("etcd", "apt-get install etcd-server");
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut command = Command::new(program);
        // The initial-cluster flags only matter on the first start; later
        // starts find the member in the data directory.
        command
            .arg("--name")
            .arg("default")
            .arg("--data-dir")
            .arg(server.dir.join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .args(["--initial-cluster-state", "new"]);
        let proc = server.spawn("etcd", command);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            proc.assert_running();
            if let Some(client) = try_etcd(&client_url).await {
                return client;
            }
            if Instant::now() >= deadline {
                panic!(
                    "etcd did not serve KV requests on {client_url} within {START_TIMEOUT:?}; log {}:\n{}",
                    proc.log.display(),
                    proc.log_tail()
                );
            }
            sleep(POLL * 2).await;
        }
    }

    /// Whether the etcd process is currently running.
    pub fn is_running(&self) -> bool {
        self.server.is_running()
    }

    /// Kills etcd; watchers and lease keep-alives see it go away. Reads
    /// through the harness ([`Etcd::get`] and friends) fail until
    /// [`Etcd::restart`].
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Stops etcd if it runs, then starts it again on the same ports and
    /// data, and replaces the harness's client once KV requests succeed.
    pub async fn restart(&mut self) {
        self.client = Self::spawn(&mut self.server, self.client_port, self.peer_port).await;
    }

    /// `http://127.0.0.1:<client port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// A connected client (cheap clone of the harness's own).
    pub fn client(&self) -> etcd_client::Client {
        self.client.clone()
    }

    /// The value of `key`, if present.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let mut client = self.client();
        let response = timeout(crate::TIMEOUT, client.get(key, None))
            .await
            .unwrap_or_else(|_| panic!("etcd get {key:?} timed out"))
            .unwrap_or_else(|e| panic!("etcd get {key:?}: {e}"));
        response.kvs().first().map(|kv| kv.value().to_vec())
    }

    /// Every key under `prefix`.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let mut client = self.client();
        let options = etcd_client::GetOptions::new()
            .with_prefix()
            .with_keys_only();
        let response = timeout(crate::TIMEOUT, client.get(prefix, Some(options)))
            .await
            .unwrap_or_else(|_| panic!("etcd get prefix {prefix:?} timed out"))
            .unwrap_or_else(|e| panic!("etcd get prefix {prefix:?}: {e}"));
        response
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect()
    }

    /// The record edge `node_id` registered, if present. Panics when the
    /// value is not a valid [`EdgeRecord`].
    pub async fn edge_record(&self, node_id: &str) -> Option<EdgeRecord> {
        let key = edge_key(node_id);
        self.get(&key).await.map(|value| {
            serde_json::from_slice(&value).unwrap_or_else(|e| {
                panic!(
                    "value of {key} is not an EdgeRecord ({e}): {}",
                    String::from_utf8_lossy(&value)
                )
            })
        })
    }

    /// Waits until edge `node_id` has a record for which `ok` holds, and
    /// returns it. Panics after `within`, showing the last record seen.
    pub async fn wait_edge_record(
        &self,
        node_id: &str,
        within: Duration,
        what: &str,
        ok: impl Fn(&EdgeRecord) -> bool,
    ) -> EdgeRecord {
        let deadline = Instant::now() + within;
        loop {
            let record = self.edge_record(node_id).await;
            match record {
                Some(record) if ok(&record) => return record,
                _ if Instant::now() >= deadline => {
                    panic!(
                        "edge {node_id}: no record with {what} within {within:?}; last: {record:?}"
                    )
                }
                _ => sleep(POLL * 4).await,
            }
        }
    }

    /// Waits until edge `node_id` has no record. Panics after `within`.
    pub async fn wait_edge_gone(&self, node_id: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let record = self.edge_record(node_id).await;
            match record {
                None => return,
                Some(record) if Instant::now() >= deadline => {
                    panic!("edge {node_id}: record still present after {within:?}: {record:?}")
                }
                Some(_) => sleep(POLL * 4).await,
            }
        }
    }
}

async fn try_etcd(url: &str) -> Option<etcd_client::Client> {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(Duration::from_secs(1));
    let mut client = timeout(
        Duration::from_secs(2),
        etcd_client::Client::connect([url], Some(options)),
    )
    .await
    .ok()?
    .ok()?;
    timeout(Duration::from_secs(2), client.get("/gpush-it/probe", None))
        .await
        .ok()?
        .ok()?;
    Some(client)
}

/// The real `gpush-edge` binary as a child process, for tests that send it
/// signals (SIGTERM, SIGKILL).
#[derive(Debug)]
pub struct EdgeProcess {
    proc: LoggedChild,
    dir: PathBuf,
    ws_addr: SocketAddr,
    exited: Option<ExitStatus>,
}

impl EdgeProcess {
    /// Path of the `gpush-edge` binary built alongside this test executable
    /// (see [`sibling_binary`]). Panics when it has not been built.
    pub fn binary() -> PathBuf {
        let binary = sibling_binary("gpush-edge").unwrap_or_else(|e| panic!("{e:#}"));
        if !binary.is_file() {
            panic!(
                "{} does not exist: build it first with `cargo build --workspace` \
                 (`cargo test --workspace` builds it too; `cargo test -p gpush-integration-tests` does not)",
                binary.display()
            );
        }
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let exe = std::env::current_exe().ok();
        if let (Some(bin), Some(test)) = (modified(&binary), exe.as_deref().and_then(modified))
            && bin < test
        {
            eprintln!(
                "note: {} is older than this test executable; if the edge changed, \
                 rebuild it with `cargo build -p gpush-edge`",
                binary.display()
            );
        }
        binary
    }

    /// Runs `gpush-edge` with `args`, which must include `--ws-addr
    /// 127.0.0.1:<port>`, and waits until that port accepts connections.
    /// `RUST_LOG` defaults to `info` so the log file tells what happened.
    pub async fn spawn(args: &[String]) -> Self {
        let ws_addr: SocketAddr = args
            .iter()
            .position(|a| a == "--ws-addr")
            .and_then(|i| args.get(i + 1))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("EdgeProcess::spawn needs `--ws-addr <ip:port>`: {args:?}"));
        let mut command = Command::new(Self::binary());
        command.args(args);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        let dir = scratch_dir("edge-process");
        let mut proc = LoggedChild::spawn("gpush-edge", command, dir.join("gpush-edge.log"));
        proc.wait_for_port(ws_addr).await;
        Self {
            proc,
            dir,
            ws_addr,
            exited: None,
        }
    }

    /// Runs an edge registered in `etcd` as `node_id`, on NATS `nats`, with
    /// a 3 s lease and a 2 s shutdown grace period.
    pub async fn clustered(nats: &NatsServer, etcd: &Etcd, node_id: &str) -> Self {
        let ws_addr = format!("127.0.0.1:{}", free_port());
        let public_url = format!("ws://{ws_addr}/ws");
        let args: Vec<String> = [
            "--ws-addr",
            &ws_addr,
            "--nats-url",
            &nats.url(),
            "--etcd-endpoints",
            &etcd.url(),
            "--node-id",
            node_id,
            "--public-url",
            &public_url,
            "--lease-ttl",
            "3s",
            "--shutdown-grace",
            "2s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Self::spawn(&args).await
    }

    /// `ws://127.0.0.1:<port>/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.ws_addr)
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// The tail of the process's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.proc.log_tail()
    }

    /// Sends SIGTERM (via `kill -TERM`), starting a graceful shutdown.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run `kill -TERM`");
        assert!(
            status.success(),
            "kill -TERM {} failed: {status}",
            self.pid()
        );
    }

    /// Sends SIGKILL: the process dies without any clean-up.
    pub fn sigkill(&mut self) {
        self.proc
            .child
            .kill()
            .unwrap_or_else(|e| panic!("SIGKILL gpush-edge: {e}"));
    }

    /// Waits for the process to exit and returns its status. Panics (with
    /// the log tail) after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        if let Some(status) = self.exited {
            return status;
        }
        let deadline = Instant::now() + within;
        loop {
            match self.proc.child.try_wait() {
                Ok(Some(status)) => {
                    self.exited = Some(status);
                    return status;
                }
                Ok(None) if Instant::now() < deadline => sleep(POLL).await,
                Ok(None) => panic!(
                    "gpush-edge did not exit within {within:?}; log:\n{}",
                    self.log_tail()
                ),
                Err(e) => panic!("waiting for gpush-edge: {e}"),
            }
        }
    }
}

impl Drop for EdgeProcess {
    /// Kills the process. Its log is deleted, unless the test is failing:
    /// then the log stays and its tail is printed.
    fn drop(&mut self) {
        self.proc.kill();
        if std::thread::panicking() {
            eprintln!(
                "gpush-edge log ({}), last lines:\n{}",
                self.proc.log.display(),
                self.proc.log_tail()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
