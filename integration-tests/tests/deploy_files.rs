//! Static checks of the deployment files (`deploy/`, the root `Makefile` and
//! `.dockerignore`). No Docker engine or cluster runs here, so these tests
//! read the files and fail when they drift from the workspace: env vars that
//! no binary reads, ports nothing listens on, probes on routes that do not
//! exist, start orders naming unknown services, images missing a binary, and
//! stop timeouts shorter than the edge's drain.
//!
//! Each check is a function returning the problems it found; the `caught_*`
//! tests feed it a broken copy of the real file to show that it can fail.

use clap::CommandFactory as _;
use gpush_edge::config::{DEFAULT_SHUTDOWN_GRACE, DEFAULT_WS_PORT};
use serde_norway::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Ports of the push API when an address is given only as a default.
const DEFAULT_HTTP_PORT: u16 = 10068;
const DEFAULT_GRPC_PORT: u16 = 10067;
/// Probe paths a deployment may use: process up, and ready to serve.
const PROBE_PATHS: [&str; 2] = ["/healthz", "/readyz"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `text` with `from` replaced by `to`; panics when `from` is absent so a
/// negative test cannot silently test the unbroken file.
fn broken(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not in the file");
    text.replace(from, to)
}

fn assert_clean(what: &str, problems: Vec<String>) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

fn assert_caught(problems: Vec<String>, needle: &str) {
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "expected a problem mentioning {needle:?}, got {problems:?}"
    );
}

// ---------------------------------------------------------------------------
// What the workspace says, read from its sources.

/// A gpush binary, as far as deployments are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Binary {
    Edge,
    Ingress,
}

/// Facts from the workspace sources the deployment files must agree with.
struct Workspace {
    edge_env: BTreeSet<String>,
    ingress_env: BTreeSet<String>,
    edge_routes: BTreeSet<String>,
    ingress_routes: BTreeSet<String>,
    edge_bins: Vec<String>,
    ingress_bins: Vec<String>,
    edge_package: String,
    ingress_package: String,
}

impl Workspace {
    fn load() -> Self {
        let edge_toml = read("edge/Cargo.toml");
        let ingress_toml = read("ingress/Cargo.toml");
        let ws = Workspace {
            edge_env: cli_env_names(&gpush_edge::cli::Cli::command()),
            ingress_env: cli_env_names(&gpush_ingress::cli::Cli::command()),
            edge_routes: route_paths(&read("edge/src/server.rs")),
            ingress_routes: route_paths(&read("ingress/src/http.rs")),
            edge_bins: bin_names(&edge_toml),
            ingress_bins: bin_names(&ingress_toml),
            edge_package: package_name(&edge_toml),
            ingress_package: package_name(&ingress_toml),
        };
        // Guard the sources read: an empty result would make every
        // check below vacuous.
        assert!(ws.edge_env.contains("GPUSH_WS_ADDR"), "{:?}", ws.edge_env);
        assert!(ws.ingress_env.contains("GPUSH_HTTP_ADDR"));
        assert!(ws.edge_routes.contains("/ws"), "{:?}", ws.edge_routes);
        assert!(ws.ingress_routes.contains("/v1/pushData"));
        assert_eq!(ws.edge_bins, ["gpush-edge"]);
        assert_eq!(ws.ingress_bins, ["gpush-ingress"]);
        ws
    }

    fn binary(&self, name: &str) -> Option<Binary> {
        let name = name.rsplit('/').next().unwrap_or(name);
        if self.edge_bins.iter().any(|b| b == name) {
            Some(Binary::Edge)
        } else if self.ingress_bins.iter().any(|b| b == name) {
            Some(Binary::Ingress)
        } else {
            None
        }
    }

    fn env(&self, binary: Binary) -> &BTreeSet<String> {
        match binary {
            Binary::Edge => &self.edge_env,
            Binary::Ingress => &self.ingress_env,
        }
    }

    fn routes(&self, binary: Binary) -> &BTreeSet<String> {
        match binary {
            Binary::Edge => &self.edge_routes,
            Binary::Ingress => &self.ingress_routes,
        }
    }

    fn all_bins(&self) -> BTreeSet<String> {
        self.edge_bins
            .iter()
            .chain(&self.ingress_bins)
            .cloned()
            .collect()
    }
}

/// The env var of every flag of a binary, from clap's own metadata (the
/// same `Command` that parses the binary's arguments).
fn cli_env_names(command: &clap::Command) -> BTreeSet<String> {
    command
        .get_arguments()
        .filter_map(clap::Arg::get_env)
        .filter_map(|name| name.to_str())
        .map(str::to_owned)
        .collect()
}

/// The first string literal of every `.route(` call in an axum source file.
fn route_paths(src: &str) -> BTreeSet<String> {
    src.split(".route(")
        .skip(1)
        .filter_map(|rest| rest.trim_start().strip_prefix('"'))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect()
}

/// The `name` of every `[[bin]]` table of a Cargo.toml.
fn bin_names(cargo_toml: &str) -> Vec<String> {
    table_names(cargo_toml, "[[bin]]")
}

/// The `name` of the `[package]` table of a Cargo.toml.
fn package_name(cargo_toml: &str) -> String {
    table_names(cargo_toml, "[package]")
        .into_iter()
        .next()
        .expect("package name")
}

fn table_names(cargo_toml: &str, header: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut inside = false;
    for line in cargo_toml.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == header;
        } else if inside && let Some(value) = line.strip_prefix("name") {
            let value = value.trim_start().trim_start_matches('=').trim();
            names.push(value.trim_matches('"').to_owned());
            inside = false;
        }
    }
    names
}

/// Every `GPUSH_*` name mentioned anywhere in `text`.
fn env_mentions(text: &str) -> BTreeSet<String> {
    text.match_indices("GPUSH_")
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| name.len() > "GPUSH_".len())
        .collect()
}

/// Seconds of a systemd/humantime-like duration: `30`, `30s`, `2min`.
fn seconds(value: &str) -> Option<u64> {
    let value = value.trim().trim_matches('"');
    if let Some(n) = value.strip_suffix("min") {
        return n.trim().parse::<u64>().ok().map(|n| n * 60);
    }
    value.strip_suffix('s').unwrap_or(value).trim().parse().ok()
}

fn grace_secs() -> u64 {
    DEFAULT_SHUTDOWN_GRACE.as_secs()
}

// ---------------------------------------------------------------------------
// One gpush process as a deployment file describes it, and its checks.

/// A gpush process described by a compose service, a k8s container or the
/// Dockerfile's default command.
#[derive(Debug, Default)]
struct Process {
    /// Where it is described, for messages.
    name: String,
    /// The command line: binary and arguments.
    command: Vec<String>,
    /// Env var names with their literal value, if any.
    env: BTreeMap<String, Option<String>>,
    /// Ports the deployment sends traffic to inside the container.
    ports: Vec<u16>,
    /// HTTP probes: port and path.
    probes: Vec<(u16, String)>,
}

impl Process {
    /// The value of a setting given as a `--flag value`, `--flag=value` or
    /// env var.
    fn setting(&self, flag: &str, env: &str) -> Option<String> {
        let mut args = self.command.iter();
        while let Some(arg) = args.next() {
            if arg == flag {
                return args.next().cloned();
            }
            if let Some(value) = arg.strip_prefix(flag).and_then(|v| v.strip_prefix('=')) {
                return Some(value.to_owned());
            }
        }
        self.env.get(env).cloned().flatten()
    }

    fn standalone(&self) -> bool {
        self.command.iter().any(|a| a == "--standalone")
            || self
                .env
                .get("GPUSH_STANDALONE")
                .cloned()
                .flatten()
                .as_deref()
                == Some("true")
    }
}

/// Checks one process: its binary exists, its env vars are its binary's,
/// it listens on every interface on the ports traffic is sent to, and its
/// probes hit real routes on the port serving them.
fn check_process(ws: &Workspace, p: &Process) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(binary) = p.command.first().and_then(|c| ws.binary(c)) else {
        problems.push(format!(
            "{}: command {:?} runs no gpush binary",
            p.name, p.command
        ));
        return problems;
    };
    for name in p.env.keys().filter(|n| n.starts_with("GPUSH_")) {
        if !ws.env(binary).contains(name) {
            problems.push(format!("{}: {binary:?} has no env var {name}", p.name));
        }
    }

    // (setting, default port, default binds every interface)
    let mut listeners = Vec::new();
    match binary {
        Binary::Edge => {
            listeners.push(("--ws-addr", "GPUSH_WS_ADDR", DEFAULT_WS_PORT, true));
            if p.standalone() {
                listeners.push(("--http-addr", "GPUSH_HTTP_ADDR", DEFAULT_HTTP_PORT, false));
                listeners.push(("--grpc-addr", "GPUSH_GRPC_ADDR", DEFAULT_GRPC_PORT, false));
            }
        }
        Binary::Ingress => {
            listeners.push(("--http-addr", "GPUSH_HTTP_ADDR", DEFAULT_HTTP_PORT, false));
            listeners.push(("--grpc-addr", "GPUSH_GRPC_ADDR", DEFAULT_GRPC_PORT, false));
        }
    }
    let mut listen = Vec::new();
    for (flag, env, default_port, default_public) in listeners {
        let port = match p.setting(flag, env) {
            Some(addr) => match addr.parse::<SocketAddr>() {
                Ok(addr) if addr.ip().is_unspecified() => addr.port(),
                Ok(addr) => {
                    problems.push(format!(
                        "{}: {env} {addr} is not reachable from outside the container",
                        p.name
                    ));
                    addr.port()
                }
                Err(e) => {
                    problems.push(format!("{}: {env} {addr:?}: {e}", p.name));
                    continue;
                }
            },
            None => {
                if !default_public {
                    problems.push(format!(
                        "{}: {env} not set; the default binds loopback without an API key",
                        p.name
                    ));
                }
                default_port
            }
        };
        listen.push(port);
    }

    for port in &p.ports {
        if !listen.contains(port) {
            problems.push(format!(
                "{}: port {port} is not one it listens on {listen:?}",
                p.name
            ));
        }
    }
    // The probe routes are served on the edge's WebSocket port and on
    // ingress's HTTP port: the first listener in both cases.
    let probe_port = listen.first().copied();
    for (port, path) in &p.probes {
        if Some(*port) != probe_port {
            problems.push(format!(
                "{}: probe port {port} does not serve {path} (that is {probe_port:?})",
                p.name
            ));
        }
        if !PROBE_PATHS.contains(&path.as_str()) || !ws.routes(binary).contains(path) {
            problems.push(format!(
                "{}: probe path {path} is not a health route of {binary:?}",
                p.name
            ));
        }
    }
    problems
}

/// Port and path of an `http://host:port/path` URL.
fn http_target(url: &str) -> Option<(u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = rest.split_once('/')?;
    let port = authority.rsplit_once(':')?.1.parse().ok()?;
    Some((port, format!("/{path}")))
}

/// Host names in a comma-separated list of URLs.
fn url_hosts(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(|url| {
            let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
            let authority = rest.split('/').next().unwrap_or(rest);
            authority
                .rsplit_once(':')
                .map_or(authority, |(h, _)| h)
                .to_owned()
        })
        .collect()
}

fn yaml_str(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn yaml_strings(value: &Value) -> Vec<String> {
    match value {
        Value::Sequence(items) => items.iter().filter_map(yaml_str).collect(),
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

fn yaml_docs(text: &str) -> Result<Vec<Value>, String> {
    use serde::Deserialize as _;
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).map_err(|e| format!("YAML does not parse: {e}")))
        .filter(|doc| !matches!(doc, Ok(Value::Null)))
        .collect()
}

// ---------------------------------------------------------------------------
// docker-compose.yml

fn check_compose(ws: &Workspace, text: &str) -> Vec<String> {
    let docs = match yaml_docs(text) {
        Ok(docs) => docs,
        Err(e) => return vec![e],
    };
    let Some(services) = docs
        .first()
        .and_then(|d| d.get("services"))
        .and_then(Value::as_mapping)
    else {
        return vec!["no services".to_owned()];
    };
    let mut problems = Vec::new();
    let names: BTreeSet<String> = services.keys().filter_map(yaml_str).collect();
    for required in ["nats", "etcd"] {
        if !names.contains(required) {
            problems.push(format!("no {required} service"));
        }
    }
    // History is on by default and lives in JetStream.
    let nats_command = services
        .iter()
        .find(|(name, _)| yaml_str(name).as_deref() == Some("nats"))
        .and_then(|(_, service)| service.get("command"))
        .map(yaml_strings)
        .unwrap_or_default();
    if !nats_command
        .iter()
        .any(|a| a == "-js" || a == "--jetstream")
    {
        problems.push(format!(
            "the nats service runs without JetStream (-js), which gpush's history needs: {nats_command:?}"
        ));
    }
    let mut published = BTreeMap::new(); // host port -> (service, container port)
    let mut processes = Vec::new();
    for (name, service) in services {
        let name = yaml_str(name).unwrap_or_default();
        let test = service
            .get("healthcheck")
            .and_then(|h| h.get("test"))
            .map(yaml_strings)
            .unwrap_or_default();
        if test.is_empty() {
            problems.push(format!("{name}: no healthcheck"));
        }

        // depends_on: a list or a map with conditions.
        let mut deps = BTreeMap::new();
        match service.get("depends_on") {
            Some(Value::Sequence(items)) => {
                deps.extend(items.iter().filter_map(yaml_str).map(|d| (d, None)));
            }
            Some(Value::Mapping(map)) => {
                for (dep, spec) in map {
                    let condition = spec.get("condition").and_then(yaml_str);
                    deps.insert(yaml_str(dep).unwrap_or_default(), condition);
                }
            }
            _ => {}
        }
        for (dep, condition) in &deps {
            if !names.contains(dep) {
                problems.push(format!("{name}: depends_on unknown service {dep}"));
            }
            if condition.as_deref() != Some("service_healthy") {
                problems.push(format!("{name}: depends_on {dep} without service_healthy"));
            }
        }

        let mut ports = Vec::new();
        for spec in service.get("ports").map(yaml_strings).unwrap_or_default() {
            let (host, container) = spec.rsplit_once(':').unwrap_or((&spec, &spec));
            match (host.parse::<u16>(), container.parse::<u16>()) {
                (Ok(host), Ok(container)) => {
                    published.insert(host, (name.clone(), container));
                    ports.push(container);
                }
                _ => problems.push(format!("{name}: port {spec:?} is not host:container")),
            }
        }

        let Some(build) = service.get("build") else {
            continue;
        };
        // A gpush service: built from the Dockerfile, checked as a process.
        let context = build.get("context").and_then(yaml_str);
        let dockerfile = build.get("dockerfile").and_then(yaml_str);
        match (context.as_deref(), dockerfile.as_deref()) {
            (Some(".."), Some(file)) if root().join(file).is_file() => {}
            other => problems.push(format!("{name}: build {other:?} is not ../<Dockerfile>")),
        }
        let mut env = BTreeMap::new();
        match service.get("environment") {
            Some(Value::Mapping(map)) => {
                for (k, v) in map {
                    env.insert(yaml_str(k).unwrap_or_default(), yaml_str(v));
                }
            }
            Some(Value::Sequence(items)) => {
                for item in items.iter().filter_map(yaml_str) {
                    let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                    env.insert(k.to_owned(), Some(v.to_owned()));
                }
            }
            _ => {}
        }
        // The services a gpush process connects to must start first.
        for var in ["GPUSH_NATS_URL", "GPUSH_ETCD_ENDPOINTS"] {
            for host in env
                .get(var)
                .cloned()
                .flatten()
                .map(|v| url_hosts(&v))
                .unwrap_or_default()
            {
                if !deps.contains_key(&host) {
                    problems.push(format!("{name}: {var} names {host}, not in depends_on"));
                }
            }
        }
        let probes = test.iter().filter_map(|arg| http_target(arg)).collect();
        let process = Process {
            name: name.clone(),
            command: service.get("command").map(yaml_strings).unwrap_or_default(),
            env,
            ports,
            probes,
        };
        problems.extend(check_process(ws, &process));
        problems.extend(check_compose_secrets(ws, &process));
        processes.push(process);
    }

    // The README's curl example talks to localhost:10068: ingress's HTTP port.
    match published.get(&DEFAULT_HTTP_PORT) {
        Some((service, container)) => {
            let ingress = processes.iter().find(|p| &p.name == service);
            let http = ingress.and_then(|p| p.setting("--http-addr", "GPUSH_HTTP_ADDR"));
            let serves = ingress
                .and_then(|p| p.command.first())
                .and_then(|c| ws.binary(c))
                == Some(Binary::Ingress)
                && http
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                    .map(|a| a.port())
                    == Some(*container);
            if !serves {
                problems.push(format!(
                    "localhost:{DEFAULT_HTTP_PORT} goes to {service}:{container}, not ingress's HTTP port"
                ));
            }
        }
        None => problems.push(format!("nothing publishes {DEFAULT_HTTP_PORT}")),
    }
    // An edge's public URL must reach that edge from the host.
    for p in &processes {
        let Some(url) = p.env.get("GPUSH_PUBLIC_URL").cloned().flatten() else {
            continue;
        };
        let port = url
            .strip_prefix("ws://localhost:")
            .and_then(|r| r.split('/').next())
            .and_then(|port| port.parse::<u16>().ok());
        let ws_port = p
            .setting("--ws-addr", "GPUSH_WS_ADDR")
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .map_or(DEFAULT_WS_PORT, |a| a.port());
        let reaches =
            port.and_then(|port| published.get(&port)) == Some(&(p.name.clone(), ws_port));
        if !reaches {
            problems.push(format!(
                "{}: GPUSH_PUBLIC_URL {url} is not published to its port {ws_port}",
                p.name
            ));
        }
    }
    let edges = processes
        .iter()
        .filter(|p| p.command.first().and_then(|c| ws.binary(c)) == Some(Binary::Edge))
        .count();
    if edges < 2 {
        problems.push(format!("{edges} edges, expected two"));
    }
    problems
}

// ---------------------------------------------------------------------------
// Kubernetes manifests

/// A compose service's secrets come from the caller with no fallback
/// (`${NAME:?message}`): a literal or a `${NAME:-default}` is a working
/// secret anyone can read here. A push API (ingress, a standalone edge),
/// which listens on every interface in a container, needs its key or the
/// binary refuses to start.
fn check_compose_secrets(ws: &Workspace, p: &Process) -> Vec<String> {
    let mut problems = Vec::new();
    for name in ["GPUSH_JWT_SECRET", "GPUSH_API_KEY"] {
        if let Some(value) = p.env.get(name) {
            let required = value
                .as_deref()
                .is_some_and(|v| v.starts_with(&format!("${{{name}:?")) && v.ends_with('}'));
            if !required {
                problems.push(format!(
                    "{}: {name} must be required from the caller (${{{name}:?...}}), \
                     not a literal or a default",
                    p.name
                ));
            }
        }
    }
    let binary = p.command.first().and_then(|c| ws.binary(c));
    let push_api =
        binary == Some(Binary::Ingress) || (binary == Some(Binary::Edge) && p.standalone());
    let insecure =
        p.command.iter().any(|a| a == "--api-insecure") || p.env.contains_key("GPUSH_API_INSECURE");
    if push_api && !insecure && p.setting("--api-key", "GPUSH_API_KEY").is_none() {
        problems.push(format!(
            "{}: push API without GPUSH_API_KEY: the binary refuses to start",
            p.name
        ));
    }
    problems
}

fn check_k8s(ws: &Workspace, text: &str, expected: Binary) -> Vec<String> {
    let docs = match yaml_docs(text) {
        Ok(docs) => docs,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    let kind = |d: &Value| d.get("kind").and_then(yaml_str).unwrap_or_default();
    let deployments: Vec<&Value> = docs.iter().filter(|d| kind(d) == "Deployment").collect();
    let services: Vec<&Value> = docs.iter().filter(|d| kind(d) == "Service").collect();
    if deployments.len() != 1 || services.len() != 1 {
        problems.push(format!(
            "{} Deployments and {} Services, expected one each",
            deployments.len(),
            services.len()
        ));
    }

    for deployment in deployments {
        let pod = deployment.get("spec").and_then(|s| s.get("template"));
        let labels = pod
            .and_then(|t| t.get("metadata"))
            .and_then(|m| m.get("labels"));
        let pod_spec = pod.and_then(|t| t.get("spec"));
        let containers = pod_spec
            .and_then(|s| s.get("containers"))
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default();
        if containers.is_empty() {
            problems.push("Deployment without containers".to_owned());
        }
        let mut named_ports = BTreeMap::new();
        for container in &containers {
            let name = container.get("name").and_then(yaml_str).unwrap_or_default();
            for port in container
                .get("ports")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                if let Some(number) = port.get("containerPort").and_then(Value::as_u64) {
                    let number = u16::try_from(number).unwrap_or(0);
                    let port_name = port.get("name").and_then(yaml_str);
                    named_ports.insert(number.to_string(), number);
                    if let Some(port_name) = port_name {
                        named_ports.insert(port_name, number);
                    }
                }
            }
            let mut env = BTreeMap::new();
            for var in container
                .get("env")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                let var_name = var.get("name").and_then(yaml_str).unwrap_or_default();
                env.insert(var_name, var.get("value").and_then(yaml_str));
            }
            let mut probes = Vec::new();
            for probe in ["readinessProbe", "livenessProbe"] {
                let get = container.get(probe).and_then(|p| p.get("httpGet"));
                let path = get.and_then(|g| g.get("path")).and_then(yaml_str);
                let port = get
                    .and_then(|g| g.get("port"))
                    .and_then(yaml_str)
                    .and_then(|p| named_ports.get(&p).copied());
                let want = if probe == "readinessProbe" {
                    "/readyz"
                } else {
                    "/healthz"
                };
                match (port, path) {
                    (Some(port), Some(path)) => {
                        if path != want {
                            problems.push(format!("{name}: {probe} on {path}, expected {want}"));
                        }
                        probes.push((port, path));
                    }
                    other => problems.push(format!(
                        "{name}: {probe} is not an httpGet on a container port: {other:?}"
                    )),
                }
            }
            let process = Process {
                name: name.clone(),
                command: container
                    .get("command")
                    .map(yaml_strings)
                    .into_iter()
                    .flatten()
                    .chain(
                        container
                            .get("args")
                            .map(yaml_strings)
                            .into_iter()
                            .flatten(),
                    )
                    .collect(),
                env,
                ports: named_ports.values().copied().collect(),
                probes,
            };
            problems.extend(check_process(ws, &process));
            let binary = process.command.first().and_then(|c| ws.binary(c));
            if binary != Some(expected) {
                problems.push(format!("{name}: runs {binary:?}, expected {expected:?}"));
            }
            if binary == Some(Binary::Ingress) {
                let key_from_secret = container
                    .get("env")
                    .and_then(Value::as_sequence)
                    .into_iter()
                    .flatten()
                    .any(|v| {
                        v.get("name").and_then(yaml_str).as_deref() == Some("GPUSH_API_KEY")
                            && v.get("valueFrom")
                                .and_then(|f| f.get("secretKeyRef"))
                                .is_some()
                    });
                if !key_from_secret {
                    problems.push(format!("{name}: GPUSH_API_KEY not from a Secret"));
                }
            }
            if binary == Some(Binary::Edge) {
                problems.extend(check_edge_drain(&process, container, pod_spec));
            }
        }

        // Prometheus finds the pods by annotation: it must scrape a port
        // and a path the binary serves.
        let annotations = pod
            .and_then(|t| t.get("metadata"))
            .and_then(|m| m.get("annotations"));
        let annotation = |key: &str| annotations.and_then(|a| a.get(key)).and_then(yaml_str);
        match (
            annotation("prometheus.io/scrape").as_deref(),
            annotation("prometheus.io/port"),
            annotation("prometheus.io/path"),
        ) {
            (Some("true"), Some(port), Some(path)) => {
                if !named_ports.contains_key(&port) {
                    problems.push(format!("prometheus.io/port {port} is not a container port"));
                }
                if !ws.routes(expected).contains(&path) {
                    problems.push(format!(
                        "prometheus.io/path {path} is not a route of {expected:?}"
                    ));
                }
            }
            other => problems.push(format!(
                "pod template lacks prometheus.io scrape/port/path annotations: {other:?}"
            )),
        }

        // Each Service selects this Deployment and targets its ports.
        for service in &services {
            let spec = service.get("spec");
            let selector = spec.and_then(|s| s.get("selector"));
            let selects = selector.and_then(Value::as_mapping).is_some_and(|sel| {
                !sel.is_empty()
                    && sel
                        .iter()
                        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            });
            if !selects {
                problems.push(format!(
                    "Service selector {selector:?} does not match the pod labels {labels:?}"
                ));
            }
            for port in spec
                .and_then(|s| s.get("ports"))
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                let target = port
                    .get("targetPort")
                    .or_else(|| port.get("port"))
                    .and_then(yaml_str)
                    .unwrap_or_default();
                if !named_ports.contains_key(&target) {
                    problems.push(format!(
                        "Service targetPort {target} is not a container port"
                    ));
                }
            }
        }
    }
    problems
}

/// The pod must outlive the preStop sleep plus the edge's shutdown grace.
fn check_edge_drain(p: &Process, container: &Value, pod_spec: Option<&Value>) -> Vec<String> {
    let mut problems = Vec::new();
    let pre_stop = container.get("lifecycle").and_then(|l| l.get("preStop"));
    let sleep = pre_stop
        .and_then(|s| s.get("exec"))
        .and_then(|e| e.get("command"))
        .map(yaml_strings)
        .and_then(|cmd| match cmd.as_slice() {
            [sleep, secs] if sleep.ends_with("sleep") => seconds(secs),
            _ => None,
        })
        .or_else(|| {
            pre_stop
                .and_then(|s| s.get("sleep"))
                .and_then(|s| s.get("seconds"))
                .and_then(Value::as_u64)
        });
    let Some(sleep) = sleep.filter(|s| *s > 0) else {
        problems.push(format!("{}: no preStop sleep", p.name));
        return problems;
    };
    let grace = match p.setting("--shutdown-grace", "GPUSH_SHUTDOWN_GRACE") {
        Some(value) => seconds(&value).unwrap_or(u64::MAX),
        None => grace_secs(),
    };
    let termination = pod_spec
        .and_then(|s| s.get("terminationGracePeriodSeconds"))
        .and_then(Value::as_u64)
        .unwrap_or(30);
    if termination <= sleep.saturating_add(grace) {
        problems.push(format!(
            "{}: terminationGracePeriodSeconds {termination} <= preStop {sleep}s + shutdown_grace {grace}s",
            p.name
        ));
    }
    problems
}

// ---------------------------------------------------------------------------
// Dockerfile, systemd unit, Makefile

fn check_dockerfile(ws: &Workspace, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    // Join continuation lines, drop comments.
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    let args = |prefix: &str| -> Vec<Vec<String>> {
        instructions
            .iter()
            .filter_map(|i| i.strip_prefix(prefix))
            .map(|rest| rest.split_whitespace().map(str::to_owned).collect())
            .collect()
    };

    let froms = args("FROM ");
    if froms.len() < 2 {
        problems.push("not a multi-stage build".to_owned());
    }
    let want_packages: BTreeSet<&str> =
        [ws.edge_package.as_str(), ws.ingress_package.as_str()].into();
    let builds: Vec<Vec<String>> = args("RUN ")
        .into_iter()
        .filter(|run| run.windows(2).any(|w| w[0] == "cargo" && w[1] == "build"))
        .collect();
    match builds.as_slice() {
        [build] => {
            for flag in ["--release", "--locked"] {
                if !build.iter().any(|a| a == flag) {
                    problems.push(format!("cargo build without {flag}"));
                }
            }
            let packages: BTreeSet<&str> = build
                .windows(2)
                .filter(|w| w[0] == "-p" || w[0] == "--package")
                .map(|w| w[1].as_str())
                .collect();
            if packages != want_packages {
                problems.push(format!(
                    "cargo build packages {packages:?}, expected {want_packages:?}"
                ));
            }
        }
        _ => problems.push(format!(
            "{} cargo build commands, expected one",
            builds.len()
        )),
    }

    let mut copied = BTreeSet::new();
    for copy in args("COPY ")
        .into_iter()
        .filter(|c| c.first().is_some_and(|a| a.starts_with("--from=")))
    {
        let Some((dest, sources)) = copy[1..].split_last() else {
            continue;
        };
        if dest.trim_end_matches('/') != "/usr/local/bin" {
            problems.push(format!("binaries copied to {dest}, not /usr/local/bin"));
        }
        for source in sources {
            match source.split_once("target/release/") {
                Some((_, bin)) => {
                    copied.insert(bin.to_owned());
                }
                None => problems.push(format!("copies {source}, not a release binary")),
            }
        }
    }
    if copied != ws.all_bins() {
        problems.push(format!(
            "copies binaries {copied:?}, expected {:?}",
            ws.all_bins()
        ));
    }

    let user = args("USER ").last().and_then(|u| u.first().cloned());
    if user.is_none() || user.as_deref() == Some("root") || user.as_deref() == Some("0") {
        problems.push(format!("runs as {user:?}, not a non-root user"));
    }

    let exposed: Vec<u16> = args("EXPOSE ")
        .into_iter()
        .flatten()
        .filter_map(|p| p.split('/').next().and_then(|p| p.parse().ok()))
        .collect();
    let cmd = instructions
        .iter()
        .filter_map(|i| i.strip_prefix("CMD "))
        .next_back()
        .map(|json| serde_json::from_str::<Vec<String>>(json).map_err(|e| e.to_string()));
    match cmd {
        Some(Ok(command)) => {
            let process = Process {
                name: "Dockerfile CMD".to_owned(),
                command,
                ports: exposed.clone(),
                ..Process::default()
            };
            problems.extend(check_process(ws, &process));
            // Every port the default command listens on is exposed.
            for (flag, env) in [
                ("--ws-addr", "GPUSH_WS_ADDR"),
                ("--http-addr", "GPUSH_HTTP_ADDR"),
                ("--grpc-addr", "GPUSH_GRPC_ADDR"),
            ] {
                if let Some(port) = process
                    .setting(flag, env)
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                    .map(|a| a.port())
                    && !exposed.contains(&port)
                {
                    problems.push(format!("CMD listens on {port}, not in EXPOSE {exposed:?}"));
                }
            }
        }
        Some(Err(e)) => problems.push(format!("CMD is not a JSON array: {e}")),
        None => problems.push("no CMD".to_owned()),
    }
    problems
}

fn check_systemd(ws: &Workspace, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut section = String::new();
    let mut service = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_owned();
        } else if section == "[Service]"
            && !line.starts_with('#')
            && let Some((key, value)) = line.split_once('=')
        {
            service
                .entry(key.trim().to_owned())
                .or_insert_with(Vec::new)
                .push(value.trim().to_owned());
        }
    }
    let get = |key: &str| service.get(key).and_then(|v| v.last()).map(String::as_str);

    let exec: Vec<&str> = get("ExecStart")
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    if exec.first().and_then(|b| ws.binary(b)) != Some(Binary::Edge) {
        problems.push(format!("ExecStart {exec:?} does not run the edge"));
    }
    if !exec
        .windows(2)
        .any(|w| w[0] == "--config" && w[1].ends_with(".toml"))
    {
        problems.push("ExecStart without --config <file>.toml".to_owned());
    }
    for (key, want) in [
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
    ] {
        if get(key) != Some(want) {
            problems.push(format!("{key}={:?}, expected {want}", get(key)));
        }
    }
    if get("LimitNOFILE")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        < 65536
    {
        problems.push(format!("LimitNOFILE={:?} is too low", get("LimitNOFILE")));
    }
    match get("User") {
        Some(user) if user != "root" && !user.is_empty() => {}
        other => problems.push(format!("User={other:?}, expected a dedicated user")),
    }
    let stop = get("TimeoutStopSec").and_then(seconds).unwrap_or(0);
    if stop <= grace_secs() {
        problems.push(format!(
            "TimeoutStopSec {stop}s <= the edge's shutdown_grace {}s",
            grace_secs()
        ));
    }
    for env in service.get("Environment").into_iter().flatten() {
        for assignment in env.split_whitespace() {
            let name = assignment.split('=').next().unwrap_or_default();
            if !ws.edge_env.contains(name) {
                problems.push(format!("Environment {name} is not an edge env var"));
            }
        }
    }
    problems
}

fn check_makefile(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut recipes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(command) = line.strip_prefix('\t') {
            if let Some(target) = &current {
                recipes
                    .entry(target.clone())
                    .or_default()
                    .push(command.to_owned());
            }
        } else if let Some((target, _)) = line.split_once(':')
            && !line.starts_with(['#', ' ', '.'])
            && !target.contains(' ')
        {
            current = Some(target.to_owned());
            recipes.entry(target.to_owned()).or_default();
        } else if !line.trim().is_empty() {
            current = None;
        }
    }
    for (target, uses) in [
        ("build", "cargo build"),
        ("run", "cargo run"),
        ("test", ".ci/run"),
        ("dockerBuild", "docker build -f deploy/Dockerfile"),
        ("dockerRun", "docker run"),
    ] {
        match recipes.get(target).map(Vec::as_slice) {
            Some([command]) if command.contains(uses) => {}
            Some(commands) => problems.push(format!(
                "{target}: {commands:?} is not a one-liner running {uses}"
            )),
            None => problems.push(format!("no {target} target")),
        }
    }
    if !root().join(".ci/run").is_file() || !root().join("deploy/Dockerfile").is_file() {
        problems.push("a file the Makefile runs is missing".to_owned());
    }
    problems
}

/// Every `GPUSH_*` name mentioned in a deployment file is a flag's env var.
fn check_env_mentions(ws: &Workspace, text: &str) -> Vec<String> {
    env_mentions(text)
        .into_iter()
        .filter(|name| !ws.edge_env.contains(name) && !ws.ingress_env.contains(name))
        .map(|name| format!("{name} is no binary's env var"))
        .collect()
}

// ---------------------------------------------------------------------------
// The real files.

const DEPLOY_FILES: [&str; 8] = [
    "deploy/Dockerfile",
    "deploy/docker-compose.yml",
    "deploy/k8s/edge.yaml",
    "deploy/k8s/ingress.yaml",
    "deploy/k8s/README.md",
    "deploy/gpush-edge.service",
    "deploy/edge.toml",
    "deploy/ingress.toml",
];

#[test]
fn env_vars_mentioned_exist() {
    let ws = Workspace::load();
    for file in DEPLOY_FILES {
        assert_clean(file, check_env_mentions(&ws, &read(file)));
    }
}

#[test]
fn compose_matches_the_binaries() {
    let ws = Workspace::load();
    assert_clean(
        "docker-compose.yml",
        check_compose(&ws, &read("deploy/docker-compose.yml")),
    );
}

#[test]
fn k8s_matches_the_binaries() {
    let ws = Workspace::load();
    assert_clean(
        "edge.yaml",
        check_k8s(&ws, &read("deploy/k8s/edge.yaml"), Binary::Edge),
    );
    assert_clean(
        "ingress.yaml",
        check_k8s(&ws, &read("deploy/k8s/ingress.yaml"), Binary::Ingress),
    );
}

#[test]
fn dockerfile_builds_and_copies_the_binaries() {
    let ws = Workspace::load();
    assert_clean(
        "Dockerfile",
        check_dockerfile(&ws, &read("deploy/Dockerfile")),
    );
    let ignore = read(".dockerignore");
    for excluded in ["target", ".git"] {
        assert!(
            ignore
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == excluded),
            ".dockerignore does not exclude {excluded}"
        );
    }
}

#[test]
fn systemd_unit_outlives_the_drain() {
    let ws = Workspace::load();
    assert_clean(
        "gpush-edge.service",
        check_systemd(&ws, &read("deploy/gpush-edge.service")),
    );
}

#[test]
fn makefile_has_the_targets() {
    assert_clean("Makefile", check_makefile(&read("Makefile")));
}

// ---------------------------------------------------------------------------
// Each check catches drift.

#[test]
fn caught_unknown_env_var() {
    let ws = Workspace::load();
    let compose = read("deploy/docker-compose.yml");
    let bad = broken(&compose, "GPUSH_NODE_ID", "GPUSH_NODEID");
    assert_caught(check_env_mentions(&ws, &bad), "GPUSH_NODEID");
    // An ingress-only variable on an edge.
    let bad = broken(
        &compose,
        "GPUSH_NODE_ID: edge2",
        "GPUSH_NODE_ID: edge2\n      GPUSH_MAX_BATCH: \"5\"",
    );
    assert_caught(check_compose(&ws, &bad), "no env var GPUSH_MAX_BATCH");
    let unit = read("deploy/gpush-edge.service");
    let bad = broken(&unit, "GPUSH_LOG_FORMAT", "GPUSH_LOGFORMAT");
    assert_caught(check_systemd(&ws, &bad), "GPUSH_LOGFORMAT");
}

#[test]
fn caught_yaml_that_does_not_parse() {
    let ws = Workspace::load();
    let bad = broken(
        &read("deploy/docker-compose.yml"),
        "services:\n",
        "services:\n  - [\n",
    );
    assert_caught(check_compose(&ws, &bad), "YAML does not parse");
    let bad = broken(&read("deploy/k8s/edge.yaml"), "spec:\n", "spec: [\n");
    assert_caught(check_k8s(&ws, &bad, Binary::Edge), "YAML does not parse");
}

#[test]
fn caught_compose_port_drift() {
    let ws = Workspace::load();
    let compose = read("deploy/docker-compose.yml");
    let bad = broken(&compose, "\"9993:9993\"", "\"9993:9994\"");
    assert_caught(check_compose(&ws, &bad), "port 9994");
    let bad = broken(&compose, "localhost:9993/readyz", "localhost:9992/readyz");
    assert_caught(check_compose(&ws, &bad), "probe port 9992");
    let bad = broken(&compose, "localhost:10068/readyz", "localhost:10068/ready");
    assert_caught(check_compose(&ws, &bad), "probe path /ready");
    let bad = broken(&compose, "\"10068:10068\"", "\"10069:10068\"");
    assert_caught(check_compose(&ws, &bad), "nothing publishes 10068");
    let bad = broken(&compose, "ws://localhost:9993/ws", "ws://localhost:9994/ws");
    assert_caught(check_compose(&ws, &bad), "GPUSH_PUBLIC_URL");
    let bad = broken(
        &compose,
        "GPUSH_HTTP_ADDR: 0.0.0.0:10068",
        "GPUSH_HTTP_ADDR: 127.0.0.1:10068",
    );
    assert_caught(check_compose(&ws, &bad), "not reachable");
}

#[test]
fn caught_compose_default_secrets() {
    let ws = Workspace::load();
    let compose = read("deploy/docker-compose.yml");
    let key_line = compose
        .lines()
        .find(|l| l.trim_start().starts_with("GPUSH_API_KEY:"))
        .map(|l| format!("{l}\n"))
        .expect("ingress has GPUSH_API_KEY");
    let key_value = "\"${GPUSH_API_KEY:?set GPUSH_API_KEY, the key push callers must send}\"";
    // (from, to, what the check must say)
    let cases = [
        (
            "${GPUSH_JWT_SECRET:?",
            "${GPUSH_JWT_SECRET:-change-me",
            "GPUSH_JWT_SECRET must be required",
        ),
        (key_value, "change-me", "GPUSH_API_KEY must be required"),
        (key_line.as_str(), "", "push API without GPUSH_API_KEY"),
    ];
    for (from, to, needle) in cases {
        assert_caught(check_compose(&ws, &broken(&compose, from, to)), needle);
    }
}

#[test]
fn caught_compose_start_order_drift() {
    let ws = Workspace::load();
    let compose = read("deploy/docker-compose.yml");
    let bad = broken(
        &compose,
        "      etcd:\n        condition",
        "      etc:\n        condition",
    );
    assert_caught(check_compose(&ws, &bad), "unknown service etc");
    assert_caught(check_compose(&ws, &bad), "names etcd, not in depends_on");
    let bad = broken(&compose, "service_healthy", "service_started");
    assert_caught(check_compose(&ws, &bad), "without service_healthy");
}

#[test]
fn caught_k8s_drift() {
    let ws = Workspace::load();
    let edge = read("deploy/k8s/edge.yaml");
    let bad = broken(
        &edge,
        "terminationGracePeriodSeconds: 30",
        "terminationGracePeriodSeconds: 12",
    );
    assert_caught(
        check_k8s(&ws, &bad, Binary::Edge),
        "terminationGracePeriodSeconds",
    );
    let bad = broken(
        &edge,
        "GPUSH_SHUTDOWN_GRACE\n              value: 10s",
        "GPUSH_SHUTDOWN_GRACE\n              value: 30s",
    );
    assert_caught(
        check_k8s(&ws, &bad, Binary::Edge),
        "terminationGracePeriodSeconds",
    );
    let bad = broken(&edge, "command: [\"sleep\", \"5\"]", "command: [\"true\"]");
    assert_caught(check_k8s(&ws, &bad, Binary::Edge), "no preStop sleep");
    let bad = broken(&edge, "path: /readyz", "path: /ready");
    assert_caught(check_k8s(&ws, &bad, Binary::Edge), "/ready");
    let bad = broken(&edge, "containerPort: 9992", "containerPort: 9991");
    assert_caught(check_k8s(&ws, &bad, Binary::Edge), "port 9991");
    let bad = broken(&edge, "targetPort: ws", "targetPort: websocket");
    assert_caught(check_k8s(&ws, &bad, Binary::Edge), "targetPort websocket");
    let bad = broken(
        &edge,
        "prometheus.io/path: /metrics",
        "prometheus.io/path: /stats",
    );
    assert_caught(
        check_k8s(&ws, &bad, Binary::Edge),
        "prometheus.io/path /stats",
    );
    let bad = broken(
        &edge,
        "prometheus.io/port: \"9992\"",
        "prometheus.io/port: \"9090\"",
    );
    assert_caught(
        check_k8s(&ws, &bad, Binary::Edge),
        "prometheus.io/port 9090",
    );
    let ingress = read("deploy/k8s/ingress.yaml");
    let bad = broken(&ingress, "port: http\n", "port: grpc\n");
    assert_caught(check_k8s(&ws, &bad, Binary::Ingress), "probe port 10067");
    let bad = broken(&ingress, "secretKeyRef", "configMapKeyRef");
    assert_caught(check_k8s(&ws, &bad, Binary::Ingress), "not from a Secret");
    assert_caught(check_k8s(&ws, &ingress, Binary::Edge), "expected Edge");
}

#[test]
fn caught_dockerfile_drift() {
    let ws = Workspace::load();
    let file = read("deploy/Dockerfile");
    let bad = broken(&file, " -p gpush-ingress", "");
    assert_caught(check_dockerfile(&ws, &bad), "cargo build packages");
    let bad = broken(&file, " /src/target/release/gpush-ingress", "");
    assert_caught(check_dockerfile(&ws, &bad), "copies binaries");
    let bad = broken(&file, "EXPOSE 9992 10067 10068", "EXPOSE 9992 10068");
    assert_caught(check_dockerfile(&ws, &bad), "not in EXPOSE");
    let bad = broken(&file, "\"0.0.0.0:10068\"", "\"127.0.0.1:10068\"");
    assert_caught(check_dockerfile(&ws, &bad), "not reachable");
    let bad = broken(&file, "USER gpush", "USER root");
    assert_caught(check_dockerfile(&ws, &bad), "non-root");
    let bad = broken(&file, "--locked ", "");
    assert_caught(check_dockerfile(&ws, &bad), "without --locked");
}

#[test]
fn caught_systemd_drift() {
    let ws = Workspace::load();
    let unit = read("deploy/gpush-edge.service");
    let bad = broken(&unit, "TimeoutStopSec=30", "TimeoutStopSec=10");
    assert_caught(check_systemd(&ws, &bad), "TimeoutStopSec");
    let bad = broken(&unit, "KillSignal=SIGTERM", "KillSignal=SIGKILL");
    assert_caught(check_systemd(&ws, &bad), "KillSignal");
    let bad = broken(&unit, "/usr/local/bin/gpush-edge", "/usr/local/bin/gpush");
    assert_caught(check_systemd(&ws, &bad), "does not run the edge");
}

#[test]
fn caught_makefile_drift() {
    let makefile = read("Makefile");
    let bad = broken(&makefile, "dockerRun:", "docker-run:");
    assert_caught(check_makefile(&bad), "no dockerRun target");
    let bad = broken(&makefile, "\t.ci/run\n", "\t.ci/run\n\techo done\n");
    assert_caught(check_makefile(&bad), "not a one-liner");
}

// ---------------------------------------------------------------------------
// deploy/compose-test.sh: the compose stack as a test target.

/// The value `script` exports for `name`.
fn exported(script: &str, name: &str) -> Option<String> {
    script
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("export {name}=")))
        .map(|v| v.trim_matches('"').to_owned())
}

/// Host port -> the binary (`command[0]`) of the compose service that
/// publishes it.
fn compose_published(compose: &str) -> BTreeMap<u16, String> {
    let mut published = BTreeMap::new();
    let Ok(docs) = yaml_docs(compose) else {
        return published;
    };
    let services = docs
        .first()
        .and_then(|d| d.get("services"))
        .and_then(Value::as_mapping);
    for service in services.into_iter().flat_map(|s| s.values()) {
        let binary = service
            .get("command")
            .map(yaml_strings)
            .and_then(|c| c.first().cloned())
            .unwrap_or_default();
        for port in service.get("ports").map(yaml_strings).unwrap_or_default() {
            if let Some(host) = port.split(':').next().and_then(|p| p.parse().ok()) {
                published.insert(host, binary.clone());
            }
        }
    }
    published
}

fn check_compose_test(script: &str, compose: &str) -> Vec<String> {
    use gpush_integration_tests::deploy::{ENV_API_KEY, ENV_PUSH_GRPC, ENV_PUSH_HTTP, ENV_WS_URLS};
    let mut problems = Vec::new();
    match std::process::Command::new("bash")
        .arg("-n")
        .arg("-c")
        .arg(script)
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => problems.push(format!(
            "bash -n: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => problems.push(format!("cannot run bash: {e}")),
    }
    if !script.contains("docker compose -f deploy/docker-compose.yml") {
        problems.push("does not bring up deploy/docker-compose.yml".to_owned());
    }
    if !script.contains("trap ") || !script.contains(" down") {
        problems.push("does not tear the stack down on exit (trap ... down)".to_owned());
    }
    if !script.contains("--test-threads=1") {
        problems.push("runs the shared-stack scenarios in parallel".to_owned());
    }
    if exported(script, "GPUSH_JWT_SECRET").as_deref()
        != Some(gpush_integration_tests::auth::JWT_SECRET)
    {
        problems.push("GPUSH_JWT_SECRET is not the tests' JWT secret".to_owned());
    }
    if !compose.contains("${GPUSH_JWT_SECRET") {
        problems.push("the compose edges do not take GPUSH_JWT_SECRET from the caller".to_owned());
    }
    let key = exported(script, "GPUSH_API_KEY");
    if key.is_none() || key != exported(script, ENV_API_KEY) {
        problems.push(format!(
            "GPUSH_API_KEY (the stack's push API key) is not exported, or {ENV_API_KEY} differs"
        ));
    }
    let published = compose_published(compose);
    let mut targets = Vec::new(); // (variable, url, binary)
    match exported(script, ENV_WS_URLS) {
        Some(urls) => targets.extend(
            urls.split(',')
                .map(|url| (ENV_WS_URLS, url.to_owned(), "gpush-edge")),
        ),
        None => problems.push(format!("{ENV_WS_URLS} not exported")),
    }
    for name in [ENV_PUSH_HTTP, ENV_PUSH_GRPC] {
        match exported(script, name) {
            Some(url) => targets.push((name, url, "gpush-ingress")),
            None => problems.push(format!("{name} not exported")),
        }
    }
    for (what, url, binary) in targets {
        let http = url.replacen("ws://", "http://", 1);
        let http = if http.trim_start_matches("http://").contains('/') {
            http
        } else {
            format!("{http}/")
        };
        let Some((port, path)) = http_target(&http) else {
            problems.push(format!("{what} {url}: not a URL"));
            continue;
        };
        if published.get(&port).map(String::as_str) != Some(binary) {
            problems.push(format!(
                "{what} {url}: port {port} is not published by a {binary} service"
            ));
        }
        if what == ENV_WS_URLS && path != "/ws" {
            problems.push(format!("{what} {url}: path is not /ws"));
        }
    }
    problems
}

#[test]
fn compose_test_script_targets_the_compose_stack() {
    assert_clean(
        "compose-test.sh",
        check_compose_test(
            &read("deploy/compose-test.sh"),
            &read("deploy/docker-compose.yml"),
        ),
    );
}

#[test]
fn caught_compose_test_drift() {
    let script = read("deploy/compose-test.sh");
    let compose = read("deploy/docker-compose.yml");
    let bad = broken(&script, "ws://127.0.0.1:9993/ws", "ws://127.0.0.1:9994/ws");
    assert_caught(check_compose_test(&bad, &compose), "port 9994");
    let bad = broken(&script, "http://127.0.0.1:10068", "http://127.0.0.1:9992");
    assert_caught(check_compose_test(&bad, &compose), "gpush-ingress");
    let bad = broken(&script, " --test-threads=1", "");
    assert_caught(check_compose_test(&bad, &compose), "parallel");
    let bad = broken(&script, "gpush-integration-test-secret", "other");
    assert_caught(check_compose_test(&bad, &compose), "JWT");
    let bad = broken(
        &script,
        "export GPUSH_IT_API_KEY=",
        "export GPUSH_IT_OTHER=",
    );
    assert_caught(
        check_compose_test(&bad, &compose),
        "GPUSH_IT_API_KEY differs",
    );
    let bad = broken(&script, "trap '", "# '");
    assert_caught(check_compose_test(&bad, &compose), "tear");
    let bad = broken(&script, "cd \"$(dirname \"$0\")/..\"", "if then");
    assert_caught(check_compose_test(&bad, &compose), "bash -n");
}
