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

    /// Sends `signal` (a name `kill` understands: `STOP`, `CONT`, `TERM`)
    /// to the process; panics when `kill` fails.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap_or_else(|e| panic!("run `kill -{signal} {pid}`: {e}"));
        assert!(
            status.success(),
            "kill -{signal} {pid} ({}) failed: {status}",
            self.what
        );
    }

    /// Freezes the process (SIGSTOP): its sockets stay open but nothing is
    /// read or answered, like a hung server or a silent network partition.
    /// Returns once every thread of the process is stopped; panics when
    /// that takes longer than [`crate::TIMEOUT`]. A frozen process is
    /// still killed by [`Self::kill`] and on `Drop` (SIGKILL ends a stopped
    /// process too).
    pub fn freeze(&self) {
        self.signal("STOP");
        let tasks = format!("/proc/{}/task", self.pid());
        let stopped = || {
            std::fs::read_dir(&tasks).is_ok_and(|dir| {
                dir.filter_map(Result::ok).all(|task| {
                    std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                        // The state follows the ")" that closes the name.
                        stat.rsplit_once(')')
                            .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
                    })
                })
            })
        };
        let deadline = std::time::Instant::now() + crate::TIMEOUT;
        while !stopped() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} ({}) did not stop after SIGSTOP",
                self.what,
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Resumes a frozen process (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
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

/// A copy of `command`'s program and arguments (std's `Command` is not
/// `Clone`).
fn clone_command(command: &Command) -> Command {
    let mut copy = Command::new(command.get_program());
    copy.args(command.get_args());
    copy
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

/// A `nats-server` on a free loopback port, alone or as one node of a
/// cluster ([`NatsServer::cluster`]).
///
/// [`NatsServer::stop`] and [`NatsServer::restart`] keep the ports (and a
/// cluster node's routes), so a test can take the bus away and bring it
/// back under the same URL that ingress and edges are configured with.
#[derive(Debug)]
pub struct NatsServer {
    port: u16,
    monitor_port: u16,
    /// This node's route port and the route URLs of every node, when
    /// clustered.
    cluster: Option<(u16, Vec<String>)>,
    /// Run with JetStream (`-js`), storing under the scratch directory
    /// (kept across restarts).
    jetstream: bool,
    server: Restartable,
}

/// Name of the NATS cluster [`NatsServer::cluster`] forms.
const NATS_CLUSTER: &str = "gpush-it";

impl NatsServer {
    /// Starts `nats-server` and waits until it accepts connections.
    pub async fn start() -> Self {
        let mut nats = Self::unstarted(None);
        nats.spawn().await;
        nats
    }

    /// Starts `nats-server` with JetStream (`-js`, file store in its
    /// scratch directory, kept across [`NatsServer::restart`]) and waits
    /// until it accepts connections: what [`NatsServer::start`] does.
    pub async fn start_jetstream() -> Self {
        Self::start().await
    }

    /// Starts `nats-server` without JetStream.
    pub async fn start_plain() -> Self {
        let mut nats = Self::unstarted(None);
        nats.jetstream = false;
        nats.spawn().await;
        nats
    }

    /// The running server's process id, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.proc.as_ref().map(LoggedChild::pid)
    }

    /// Turns JetStream on or off for the next (re)start.
    pub fn set_jetstream(&mut self, on: bool) {
        self.jetstream = on;
    }

    /// Starts `n` `nats-server` nodes routed to each other (a full mesh on
    /// loopback) and waits until every node has a route to every other.
    pub async fn cluster(n: usize) -> Vec<Self> {
        let route_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes: Vec<String> = route_ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        let mut nodes: Vec<Self> = route_ports
            .iter()
            .map(|&p| Self::unstarted(Some((p, routes.clone()))))
            .collect();
        futures_util::future::join_all(nodes.iter_mut().map(Self::spawn)).await;
        for node in &nodes {
            node.wait_routes(n - 1, START_TIMEOUT).await;
        }
        nodes
    }

    /// Starts `n` `nats-server` nodes routed to each other with JetStream
    /// clustered over them (each node named `nats-<route port>`, its file
    /// store in its scratch directory, kept across restarts), and waits
    /// until every node has its routes and JetStream has a meta leader.
    pub async fn cluster_jetstream(n: usize) -> Vec<Self> {
        let route_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes: Vec<String> = route_ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        let mut nodes: Vec<Self> = route_ports
            .iter()
            .map(|&p| {
                let mut node = Self::unstarted(Some((p, routes.clone())));
                node.jetstream = true;
                node
            })
            .collect();
        futures_util::future::join_all(nodes.iter_mut().map(Self::spawn)).await;
        for node in &nodes {
            node.wait_routes(n - 1, START_TIMEOUT).await;
        }
        for node in &nodes {
            node.wait_meta_leader(START_TIMEOUT).await;
        }
        nodes
    }

    /// This node's name in a JetStream cluster.
    pub fn server_name(&self) -> Option<String> {
        self.cluster
            .as_ref()
            .map(|(route_port, _)| format!("nats-{route_port}"))
    }

    /// The JetStream meta leader this node knows of (from `/jsz`).
    pub async fn meta_leader(&self) -> Option<String> {
        let jsz = self.monitor("/jsz").await;
        jsz["meta_cluster"]["leader"]
            .as_str()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
    }

    /// Waits until this node knows a JetStream meta leader. Panics after
    /// `within`.
    pub async fn wait_meta_leader(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.meta_leader().await.is_none() {
            if Instant::now() >= deadline {
                panic!(
                    "nats-server {} has no JetStream meta leader after {within:?}",
                    self.url()
                );
            }
            sleep(POLL * 4).await;
        }
    }

    /// The leader of each JetStream stream this node knows, by stream
    /// name (from `/jsz?streams=1`, which lists the streams this node
    /// holds a replica of).
    pub async fn stream_leaders(&self) -> Vec<(String, String)> {
        let jsz = self.monitor("/jsz?streams=1").await;
        jsz["account_details"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
            .filter_map(|s| {
                Some((
                    s["name"].as_str()?.to_owned(),
                    s["cluster"]["leader"].as_str()?.to_owned(),
                ))
            })
            .collect()
    }

    fn unstarted(cluster: Option<(u16, Vec<String>)>) -> Self {
        Self {
            port: free_port(),
            monitor_port: free_port(),
            // JetStream by default for a single node, as gpush's history
            // needs it; a routed cluster runs without (its tests turn
            // history off).
            jetstream: cluster.is_none(),
            cluster,
            server: Restartable::new("nats"),
        }
    }

    async fn spawn(&mut self) {
        let program = find_program("nats-server", "apt-get install nats-server");
        let mut command = Command::new(program);
        command.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        command.args(["-m", &self.monitor_port.to_string()]);
        if self.jetstream {
            let store = self.server.dir.join("jetstream");
            command.arg("-js").arg("-sd").arg(store);
        }
        if let (true, Some(name)) = (self.jetstream, self.server_name()) {
            command.args(["--server_name", &name]);
        }
        if let Some((route_port, routes)) = &self.cluster {
            let own = format!("nats-route://127.0.0.1:{route_port}");
            let others: Vec<&str> = routes
                .iter()
                .filter(|r| **r != own)
                .map(String::as_str)
                .collect();
            command
                .args(["--cluster_name", NATS_CLUSTER])
                .args(["--cluster", &format!("nats://127.0.0.1:{route_port}")])
                .args(["--routes", &others.join(",")]);
        }
        let addr = self.addr();
        // A restart can race the old process's sockets out of the kernel
        // (the server exits at once on a port it cannot bind): try again
        // a few times before failing with the log.
        for attempt in 1..=5 {
            let proc = self.server.spawn("nats-server", clone_command(&command));
            match proc.try_wait_for_port(addr).await {
                Ok(()) => return,
                Err(e) if attempt == 5 => panic!("{e}"),
                Err(_) => sleep(POLL * 8).await,
            }
        }
    }

    async fn monitor(&self, path: &str) -> serde_json::Value {
        let url = format!("http://127.0.0.1:{}{path}", self.monitor_port);
        reqwest::get(&url)
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// Waits until this node has `n` routes to other nodes. Panics after
    /// `within`.
    pub async fn wait_routes(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let routes = self.monitor("/routez").await["num_routes"]
                .as_u64()
                .unwrap_or(0);
            if routes as usize >= n {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "nats-server {} has {routes} routes, not {n}, after {within:?}",
                    self.url()
                );
            }
            sleep(POLL * 4).await;
        }
    }

    /// The index of the node of `nodes` that the connection named `name`
    /// is on, if any.
    pub async fn node_of(nodes: &[Self], name: &str) -> Option<usize> {
        for (i, node) in nodes.iter().enumerate() {
            if node.is_running() && node.client_names().await.iter().any(|n| n == name) {
                return Some(i);
            }
        }
        None
    }

    /// The names of the client connections on this node (from `/connz`).
    pub async fn client_names(&self) -> Vec<String> {
        self.monitor("/connz").await["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    }

    /// Freezes the server (SIGSTOP, see [`LoggedChild::freeze`]): its
    /// sockets stay open but nothing is read or answered, like a hung
    /// server or a silent network partition. Returns once every thread of
    /// the process is stopped.
    pub fn freeze(&self) {
        self.running().freeze();
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&self) {
        self.running().thaw();
    }

    fn running(&self) -> &LoggedChild {
        self.server
            .proc
            .as_ref()
            .unwrap_or_else(|| panic!("nats-server {} is not running", self.url()))
    }

    /// The server's general figures (`/varz`: memory, subscriptions,
    /// messages in and out).
    pub async fn varz(&self) -> serde_json::Value {
        self.monitor("/varz").await
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
        self.subscriptions_of(None).await
    }

    /// Like [`Self::subscriptions`], of the connections named `name` only
    /// (the name a client gave NATS; edges call themselves
    /// `gpush-edge <node id>`).
    pub async fn subscriptions_of(&self, name: Option<&str>) -> Vec<String> {
        let body = self.monitor("/connz?subs=1").await;
        let mut subjects: Vec<String> = body["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| name.is_none_or(|name| c["name"].as_str() == Some(name)))
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

/// One member of an [`Etcd`] cluster: its ports and process.
#[derive(Debug)]
struct EtcdMember {
    name: String,
    client_port: u16,
    peer_port: u16,
    server: Restartable,
}

impl EtcdMember {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// Runs etcd as the next start of this member. `initial_cluster` only
    /// matters on the first start; later starts find the membership in the
    /// data directory.
    fn spawn(&mut self, initial_cluster: &str) {
        let program = find_program("etcd", "apt-get install etcd-server");
        let (client_url, peer_url) = (self.client_url(), self.peer_url());
        let mut command = Command::new(program);
        command
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.server.dir.join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-token", "gpush-it"])
            .args(["--initial-cluster-state", "new"]);
        self.server.spawn("etcd", command);
    }
}

/// An `etcd` cluster (one member by default, or [`Etcd::cluster`]) with its
/// data in scratch directories.
///
/// [`Etcd::stop`] and [`Etcd::restart`] (and the per-member forms) keep
/// the ports and the data, so a test can take etcd away and bring it back,
/// with its keys, under the URLs that ingress and edges are configured
/// with.
pub struct Etcd {
    members: Vec<EtcdMember>,
    client: etcd_client::Client,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

impl Etcd {
    /// Starts a single-member etcd and waits until a KV read succeeds.
    pub async fn start() -> Self {
        Self::cluster(1).await
    }

    /// Starts an `n`-member etcd cluster and waits until a KV read through
    /// every member's endpoint succeeds.
    pub async fn cluster(n: usize) -> Self {
        let mut members: Vec<EtcdMember> = (0..n)
            .map(|i| EtcdMember {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                server: Restartable::new("etcd"),
            })
            .collect();
        let initial = Self::initial_cluster(&members);
        for member in &mut members {
            member.spawn(&initial);
        }
        let mut etcd = Self {
            client: Self::wait_serving(&mut members).await,
            members,
        };
        for i in 0..n {
            etcd.wait_member_serving(i).await;
        }
        etcd
    }

    fn initial_cluster(members: &[EtcdMember]) -> String {
        members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until a KV read through all running members' endpoints
    /// succeeds, and returns that client. Panics (with the logs) after
    /// [`START_TIMEOUT`] or when a member exits.
    async fn wait_serving(members: &mut [EtcdMember]) -> etcd_client::Client {
        let urls: Vec<String> = members
            .iter()
            .filter(|m| m.server.is_running())
            .map(EtcdMember::client_url)
            .collect();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            for member in members.iter_mut() {
                if let Some(proc) = member.server.proc.as_mut() {
                    proc.assert_running();
                }
            }
            if let Some(client) = try_etcd(&urls).await {
                return client;
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = members
                    .iter()
                    .filter_map(|m| m.server.proc.as_ref())
                    .map(|p| format!("{}:\n{}", p.log.display(), p.log_tail()))
                    .collect();
                panic!(
                    "etcd did not serve KV requests on {urls:?} within {START_TIMEOUT:?}; logs:\n{}",
                    logs.join("\n")
                );
            }
            sleep(POLL * 2).await;
        }
    }

    /// Waits until member `i` alone serves a KV read.
    async fn wait_member_serving(&mut self, i: usize) {
        Self::wait_serving(std::slice::from_mut(&mut self.members[i])).await;
    }

    /// Whether every member's process is running.
    pub fn is_running(&self) -> bool {
        self.members.iter().all(|m| m.server.is_running())
    }

    /// Kills every member; watchers and lease keep-alives see etcd go
    /// away. Reads through the harness ([`Etcd::get`] and friends) fail
    /// until [`Etcd::restart`].
    pub fn stop(&mut self) {
        for member in &mut self.members {
            member.server.stop();
        }
    }

    /// Starts every member again (stopping any still running) on the same
    /// ports and data, and replaces the harness's client once KV requests
    /// succeed.
    pub async fn restart(&mut self) {
        let initial = Self::initial_cluster(&self.members);
        for member in &mut self.members {
            member.spawn(&initial);
        }
        self.client = Self::wait_serving(&mut self.members).await;
    }

    /// Kills member `i` only; the others keep a quorum when there are
    /// three or more.
    pub fn stop_member(&mut self, i: usize) {
        self.members[i].server.stop();
    }

    /// Starts member `i` again on its ports and data and waits until it
    /// serves.
    pub async fn restart_member(&mut self, i: usize) {
        let initial = Self::initial_cluster(&self.members);
        self.members[i].spawn(&initial);
        self.wait_member_serving(i).await;
    }

    /// The member currently leading the cluster, as an index into the
    /// members. Retries (a member may be restarting or an election under
    /// way) for up to [`START_TIMEOUT`].
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.try_leader().await {
                Ok(name) => {
                    return self
                        .members
                        .iter()
                        .position(|m| m.name == name)
                        .unwrap_or_else(|| panic!("etcd leader {name} is not one of ours"));
                }
                Err(e) if Instant::now() >= deadline => {
                    panic!("no etcd leader within {START_TIMEOUT:?}: {e}")
                }
                Err(_) => sleep(POLL * 4).await,
            }
        }
    }

    async fn try_leader(&self) -> anyhow::Result<String> {
        let mut client = self.client();
        let status = timeout(crate::TIMEOUT, client.status()).await??;
        let list = timeout(crate::TIMEOUT, client.member_list()).await??;
        list.members()
            .iter()
            .find(|m| m.id() == status.leader())
            .map(|m| m.name().to_owned())
            .with_context(|| format!("no member is the leader {}", status.leader()))
    }

    /// The client URL of every member, comma-separated: what edges and
    /// ingress take as `etcd_endpoints`.
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    /// The client URL of each member.
    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(EtcdMember::client_url).collect()
    }

    /// A connected client (cheap clone of the harness's own).
    pub fn client(&self) -> etcd_client::Client {
        self.client.clone()
    }

    /// The value of `key`, if present.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.get_kv(key).await.map(|(value, _)| value)
    }

    /// The value and lease of `key`. Retries for up to [`crate::TIMEOUT`]:
    /// with a member down, the client may first pick its endpoint.
    async fn get_kv(&self, key: &str) -> Option<(Vec<u8>, i64)> {
        let deadline = Instant::now() + crate::TIMEOUT;
        loop {
            let mut client = self.client();
            match timeout(crate::TIMEOUT, client.get(key, None)).await {
                Ok(Ok(response)) => {
                    return response
                        .kvs()
                        .first()
                        .map(|kv| (kv.value().to_vec(), kv.lease()));
                }
                Ok(Err(e)) if Instant::now() >= deadline => panic!("etcd get {key:?}: {e}"),
                Err(_) => panic!("etcd get {key:?} timed out"),
                Ok(Err(_)) => sleep(POLL * 4).await,
            }
        }
    }

    /// The lease `key` is attached to (0: none), if the key exists.
    pub async fn lease_of(&self, key: &str) -> Option<i64> {
        self.get_kv(key).await.map(|(_, lease)| lease)
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

async fn try_etcd(urls: &[String]) -> Option<etcd_client::Client> {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(Duration::from_secs(1));
    let mut client = timeout(
        Duration::from_secs(2),
        etcd_client::Client::connect(urls, Some(options)),
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
        Self::spawn_with_env(args, &[]).await
    }

    /// [`EdgeProcess::spawn`] with `env` added to (or replacing in) the
    /// environment the process inherits.
    pub async fn spawn_with_env(args: &[String], env: &[(&str, &str)]) -> Self {
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
        command.envs(env.iter().copied());
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
        Self::clustered_with(nats, etcd, node_id, "3s", &[]).await
    }

    /// Like [`Self::clustered`], with a lease of `lease_ttl` (a duration
    /// such as `"30s"`: an edge frozen for longer drops out of etcd) and
    /// `extra` flags added (`--jwt-secret`, ...).
    pub async fn clustered_with(
        nats: &NatsServer,
        etcd: &Etcd,
        node_id: &str,
        lease_ttl: &str,
        extra: &[&str],
    ) -> Self {
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
            lease_ttl,
            "--shutdown-grace",
            "2s",
        ]
        .iter()
        .chain(extra)
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

    /// Freezes the process (SIGSTOP, see [`LoggedChild::freeze`]); it is
    /// still killed on `Drop`, frozen or not.
    pub fn freeze(&self) {
        self.proc.freeze();
    }

    /// Resumes a frozen process (SIGCONT).
    pub fn thaw(&self) {
        self.proc.thaw();
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

    /// Sends `signal` (a `kill -<signal>` name, such as `STOP` or `CONT`).
    pub fn signal(&self, signal: &str) {
        self.proc.signal(signal);
    }

    /// Sends SIGKILL: the process dies without any clean-up.
    pub fn sigkill(&mut self) {
        self.proc
            .child
            .kill()
            .unwrap_or_else(|e| panic!("SIGKILL gpush-edge: {e}"));
    }

    /// Whether [`EdgeProcess::wait_exit`] saw the process exit.
    pub fn has_exited(&self) -> bool {
        self.exited.is_some()
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

/// Runs `binary` with `args` and expects it to refuse to start: exit code
/// 2 within [`crate::TIMEOUT`], with each of `expected` on stderr. A
/// binary that starts instead is killed and the test fails.
pub async fn assert_refuses(binary: &Path, args: &[&str], expected: &[&str]) {
    let mut command = tokio::process::Command::new(binary);
    let run = command.args(args).kill_on_drop(true).output();
    let Ok(output) = timeout(crate::TIMEOUT, run).await else {
        panic!("{} {args:?} started instead of refusing", binary.display());
    };
    let output = output.expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    for text in expected {
        assert!(
            stderr.contains(text),
            "{args:?}: stderr should say {text:?}: {stderr}"
        );
    }
}
