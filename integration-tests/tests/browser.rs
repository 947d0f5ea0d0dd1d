//! The browser client (`/gpush.js`) and the demo page (`/`) in real headless
//! Chromium: the page connects, subscribes, receives pushes made over HTTP
//! (from its own form, through CORS, and from the test), logs in and
//! receives a private push, and keeps all of that across an edge restart
//! (same port: backoff, re-login, re-subscribe) and across a drain (close
//! 1001: discovery through ingress picks the other edge). The client
//! refreshes its login with `getToken` before the token expires, logs in
//! again after a 10004, and never hands one user's private pushes to the
//! next user's handlers. The demo page is served only where enabled.
//! After a lost connection it resubscribes and logs in with `since`: the
//! pushes missed meanwhile reach the handlers in order and once, with a
//! "recovered" event per topic, or a "gap" event when the history is gone
//! (a restarted standalone edge). The server API steers it: a disconnect
//! (close 4003) closes it for good, a server logout ends its login
//! without a new one, server subscriptions are kept across reconnects
//! only with `keep`, and server unsubscribes end them. Where the edge's
//! `[presence]` rule says so, it is told who joins and leaves a topic (or
//! to ask, when too much changed at once) and asks presence().
//!
//! Chromium (Debian `chromium`) runs as a child process with a DevTools
//! port; Debian's `chromedriver` attaches to it, and the test drives it
//! over WebDriver with fantoccini. Both processes are killed on drop (the
//! browser is started by the test, not by chromedriver, so that killing it
//! cannot leave an orphaned browser behind). A missing browser fails the
//! test with the apt-get command that installs it; `.ci/run` installs it.

use fantoccini::{Client, ClientBuilder, Locator};
use gpush_common::history::config::PrefixRule;
use gpush_edge::EdgeConfig;
use gpush_integration_tests::api::PushMsg;
use gpush_integration_tests::auth::JWT_SECRET;
use gpush_integration_tests::procs::{LoggedChild, find_program, free_port, scratch_dir};
use gpush_integration_tests::{Cluster, Deployment, EdgeHandle, Standalone, TIMEOUT, auth};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tokio::time::{Instant, sleep, timeout};

/// How long the page gets for something that should happen: generous,
/// since a reconnect waits out a backoff step first.
const WAIT: Duration = Duration::from_secs(20);
/// How long Chromium and chromedriver get to start.
const START: Duration = Duration::from_secs(30);
/// Poll interval of every wait on the page.
const POLL: Duration = Duration::from_millis(50);
const INSTALL: &str = "apt-get install -y chromium chromium-driver";

/// Headless Chromium with chromedriver attached, and a WebDriver session.
struct Browser {
    client: Client,
    chromedriver: LoggedChild,
    chromium: LoggedChild,
    /// Logs and the browser profile, removed on drop unless the test failed.
    dir: PathBuf,
}

impl Browser {
    async fn start() -> Self {
        let chromium_bin = find_program("chromium", INSTALL);
        let chromedriver_bin = find_program("chromedriver", INSTALL);
        let dir = scratch_dir("browser");
        let profile = dir.join("profile");

        let mut command = Command::new(chromium_bin);
        command.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
        ]);
        command.arg(format!("--user-data-dir={}", profile.display()));
        command.arg("about:blank");
        let mut chromium = LoggedChild::spawn("chromium", command, dir.join("chromium.log"));
        let devtools = devtools_addr(&mut chromium, &profile).await;

        let port = free_port();
        let mut command = Command::new(chromedriver_bin);
        command.arg(format!("--port={port}"));
        let mut chromedriver =
            LoggedChild::spawn("chromedriver", command, dir.join("chromedriver.log"));
        chromedriver
            .wait_for_port(SocketAddr::from(([127, 0, 0, 1], port)))
            .await;

        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({ "debuggerAddress": devtools.to_string() }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let session = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await;
        let client = match session {
            Ok(client) => client,
            Err(e) => panic!(
                "no WebDriver session: {e}\nchromedriver log:\n{}\nchromium log:\n{}",
                chromedriver.log_tail(),
                chromium.log_tail()
            ),
        };
        Self {
            client,
            chromedriver,
            chromium,
            dir,
        }
    }

    async fn open(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Replaces the text of input `id` with `text`.
    async fn fill(&self, id: &str, text: &str) {
        let input = self
            .client
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("no #{id}: {e}"));
        input
            .clear()
            .await
            .unwrap_or_else(|e| panic!("clear #{id}: {e}"));
        input
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into #{id}: {e}"));
    }

    async fn click(&self, id: &str) {
        self.client
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("no #{id}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click #{id}: {e}"));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    async fn eval(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Polls `script` until it returns something truthy, for at most
    /// [`WAIT`]; panics with `what` and the page's log otherwise.
    async fn wait_for(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.eval(script, args.clone()).await;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() >= deadline {
                panic!(
                    "page: {what} did not happen within {WAIT:?}; page log:\n{}",
                    self.page_log().await
                );
            }
            sleep(POLL).await;
        }
    }

    async fn page_log(&self) -> String {
        let log = self
            .client
            .execute(
                "return Array.from(document.querySelectorAll('#log li'), li => li.textContent).join('\\n');",
                vec![],
            )
            .await;
        match log {
            Ok(Value::String(text)) => text,
            other => format!("(no log: {other:?})"),
        }
    }

    /// Waits for the client's connection to be open.
    async fn wait_open(&self) {
        self.wait_for(
            "connection open",
            "return window.gpush && window.gpush.state === 'open';",
            vec![],
        )
        .await;
    }

    /// Waits until the page has logged `at_least` replies `code` for `topic`.
    async fn wait_replies(&self, code: u32, topic: &str, at_least: u64) {
        self.wait_for(
            &format!("{at_least} replies {code} for {topic:?}"),
            "return document.querySelectorAll(\
                 `#log li.reply[data-code=\"${arguments[0]}\"][data-topic=\"${arguments[1]}\"]`\
             ).length >= arguments[2];",
            vec![json!(code), json!(topic), json!(at_least)],
        )
        .await;
    }

    /// Waits for a logged push whose text contains `needle`.
    async fn wait_push(&self, needle: &str) {
        self.wait_for(
            &format!("a push containing {needle:?}"),
            "return Array.from(document.querySelectorAll('#log li.push'))\
                 .some(li => li.textContent.includes(arguments[0]));",
            vec![json!(needle)],
        )
        .await;
    }

    /// Subscribes to public `topic` with the page's form and waits for the
    /// edge's 20001 reply.
    async fn subscribe(&self, topic: &str) {
        self.fill("topic", topic).await;
        self.click("subscribe").await;
        self.wait_replies(20001, topic, 1).await;
    }

    /// Sends a push with the page's form and waits for the push API's 200.
    async fn push_from_page(&self, uid: &str, topic: &str, message: &str) {
        let before = self
            .eval(
                "return Number(document.getElementById('push-result').dataset.count || 0);",
                vec![],
            )
            .await;
        self.fill("push-uid", uid).await;
        self.fill("push-topic", topic).await;
        self.fill("push-message", message).await;
        self.click("push-send").await;
        let result = self
            .wait_for(
                "the push form's answer",
                "const r = document.getElementById('push-result');\
                 return Number(r.dataset.count || 0) > arguments[0] ? r.textContent : null;",
                vec![before],
            )
            .await;
        let result = result.as_str().unwrap_or_default().to_owned();
        assert!(
            result.contains(" 200 ok"),
            "the page's push was refused: {result}"
        );
    }

    async fn close(self) {
        let _ = timeout(TIMEOUT, self.client.clone().close()).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The browser first: it writes to its profile until it is gone.
        self.chromium.kill();
        self.chromedriver.kill();
        if std::thread::panicking() {
            eprintln!("browser logs kept in {}", self.dir.display());
            return;
        }
        // Its helper processes can outlive the main one by a moment and
        // write to the profile meanwhile: try again for up to a second.
        for _ in 0..20 {
            if std::fs::remove_dir_all(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The DevTools address Chromium announces in `<profile>/DevToolsActivePort`
/// (first line: the port it bound for `--remote-debugging-port=0`).
async fn devtools_addr(chromium: &mut LoggedChild, profile: &std::path::Path) -> SocketAddr {
    let file = profile.join("DevToolsActivePort");
    let deadline = Instant::now() + START;
    loop {
        chromium.assert_running();
        let port = std::fs::read_to_string(&file)
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<u16>().ok());
        if let Some(port) = port {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            chromium.wait_for_port(addr).await;
            return addr;
        }
        if Instant::now() >= deadline {
            panic!(
                "chromium wrote no {} within {START:?}; log:\n{}",
                file.display(),
                chromium.log_tail()
            );
        }
        sleep(POLL).await;
    }
}

/// `/gpush.js` and `/` are served with their types and caching headers,
/// and the page knows the standalone push API's port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_are_served_with_types() {
    let d = Standalone::start(|_| {}).await;
    let http = reqwest::Client::new();
    let base = d.edge.page_url();
    for (path, content_type, cache) in [
        (
            "gpush.js",
            "text/javascript; charset=utf-8",
            "public, max-age=300",
        ),
        ("", "text/html; charset=utf-8", "no-cache"),
    ] {
        let response = timeout(TIMEOUT, http.get(format!("{base}{path}")).send())
            .await
            .expect("answer in time")
            .expect("GET");
        assert_eq!(response.status(), 200, "/{path}");
        let headers = response.headers();
        assert_eq!(headers["content-type"], content_type, "/{path}");
        assert_eq!(headers["cache-control"], cache, "/{path}");
        let body = response.text().await.expect("body");
        if path.is_empty() {
            let port = d.api().http_base().rsplit(':').next().unwrap_or_default();
            let meta = format!(r#"<meta name="gpush-push-port" content="{port}">"#);
            assert!(body.contains(&meta), "the page lacks {meta}");
        } else {
            assert!(body.contains("class GPush"), "not the client");
        }
    }
}

/// A standalone edge: the page subscribes, receives pushes from its own
/// form and from the test, logs in with a JWT and receives a private push;
/// then the edge stops (close 1001), stays down until the page's first
/// reconnect is refused, and starts again on the same port: the page comes
/// back, logged in and subscribed again, and receives what is pushed after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_survives_an_edge_restart() {
    let started = Instant::now();
    let mut d = Standalone::start(|_| {}).await;
    let browser = Browser::start().await;
    browser.open(&d.edge.page_url()).await;
    browser.wait_open().await;

    browser.subscribe("news").await;
    browser
        .push_from_page("", "news", r#"{"from":"page","n":1}"#)
        .await;
    browser
        .wait_push(r#"push 10001 news: {"from":"page","n":1}"#)
        .await;
    d.push_http("", "news", br#"{"from":"test","n":1}"#).await;
    browser
        .wait_push(r#"push 10001 news: {"from":"test","n":1}"#)
        .await;

    browser.fill("token", &auth::hs256("alice")).await;
    browser.click("login").await;
    browser
        .wait_for(
            "login as alice",
            "return document.getElementById('uid').textContent === 'alice';",
            vec![],
        )
        .await;
    browser.fill("private-topic", "inbox").await;
    browser.click("subscribe-private").await;
    browser.wait_replies(20001, "inbox", 1).await;
    d.push_http("alice", "inbox", b"private one").await;
    browser.wait_push("push 10002 inbox: private one").await;
    // Someone else's private push is not delivered.
    d.push_http("bob", "inbox", b"not for alice").await;

    // Stop the edge and keep it down until the page has failed to
    // reconnect at least once, so the backoff path runs too.
    let config = d.edge.stop().await;
    browser
        .wait_for(
            "a refused reconnect",
            "return document.getElementById('log').textContent.includes('(close 1006)');",
            vec![],
        )
        .await;
    d.edge = EdgeHandle::start_again(config).await;
    browser
        .wait_for(
            "a second connection",
            "return window.gpush.connects >= 2 && window.gpush.state === 'open';",
            vec![],
        )
        .await;
    browser.wait_replies(20001, "news", 2).await;
    browser.wait_replies(20001, "inbox", 2).await;
    assert_eq!(
        browser
            .eval("return window.gpush.uid;", vec![])
            .await
            .as_str(),
        Some("alice")
    );

    d.push_http("", "news", br#"{"from":"test","n":2}"#).await;
    browser
        .wait_push(r#"push 10001 news: {"from":"test","n":2}"#)
        .await;
    d.push_http("alice", "inbox", b"private two").await;
    browser.wait_push("push 10002 inbox: private two").await;
    browser
        .push_from_page("", "news", r#"{"from":"page","n":2}"#)
        .await;
    browser
        .wait_push(r#"push 10001 news: {"from":"page","n":2}"#)
        .await;
    let log = browser.page_log().await;
    assert!(!log.contains("not for alice"), "misdelivered:\n{log}");
    browser.close().await;
    eprintln!("browser restart test took {:?}", started.elapsed());
}

/// A cluster: the page finds its edge through ingress (`?discover=`),
/// pushes through ingress (CORS `*`), and when its edge drains (close
/// 1001) it goes to the other edge at once and subscribes again there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_moves_to_another_edge_on_drain() {
    let started = Instant::now();
    let mut cluster = Cluster::start_with(
        2,
        |ingress| ingress.push.cors_allowed_origins = vec!["*".to_owned()],
        |edge| edge.demo_page = Some(true),
    )
    .await;
    let ingress = cluster.ingress.http_base();
    let browser = Browser::start().await;
    let page = format!("{}?discover={ingress}", cluster.edges[0].page_url());
    browser.open(&page).await;
    browser.wait_open().await;
    let first = browser.eval("return window.gpush.nodeId;", vec![]).await;
    let first = first.as_str().expect("a node id from discovery").to_owned();
    browser.subscribe("news").await;
    browser
        .push_from_page("", "news", r#"{"via":"ingress","n":1}"#)
        .await;
    browser
        .wait_push(r#"push 10001 news: {"via":"ingress","n":1}"#)
        .await;

    let draining = cluster
        .edges
        .iter()
        .position(|e| e.node_id() == Some(first.as_str()))
        .unwrap_or_else(|| panic!("discovery gave an unknown edge {first:?}"));
    let edge = cluster.edges.remove(draining);
    edge.shutdown().await.expect("the edge drains cleanly");

    let second = browser
        .wait_for(
            "a connection to the other edge",
            "const c = window.gpush;\
             return c.state === 'open' && c.nodeId !== arguments[0] ? c.nodeId : null;",
            vec![json!(first)],
        )
        .await;
    assert_eq!(second.as_str(), cluster.edges[0].node_id());
    browser.wait_replies(20001, "news", 2).await;
    cluster
        .push_http("", "news", br#"{"via":"ingress","n":2}"#)
        .await;
    browser
        .wait_push(r#"push 10001 news: {"via":"ingress","n":2}"#)
        .await;
    browser.close().await;
    eprintln!("browser drain test took {:?}", started.elapsed());
}

/// GET `url`: its status and body.
async fn get(url: &str) -> (u16, String) {
    let response = timeout(TIMEOUT, reqwest::get(url))
        .await
        .expect("answer in time")
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// The demo page (which follows `?ws=` and `?push=` links) is served by
/// standalone edges by default, by clustered edges only with `demo_page`;
/// where it is off, `/` answers 404 with a JSON body and `/gpush.js` is
/// still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_only_where_enabled() {
    let cluster = Cluster::start(2, |_| {}).await;
    let standalone_off = Standalone::start(|c| c.demo_page = Some(false)).await;
    let standalone = Standalone::start(|_| {}).await;
    let mut enabled = Cluster::start(1, |c| c.demo_page = Some(true)).await;
    let on = enabled.edges.remove(0);
    for (what, base, served) in [
        ("clustered edge", cluster.edges[0].page_url(), false),
        (
            "standalone, demo_page = false",
            standalone_off.edge.page_url(),
            false,
        ),
        ("standalone", standalone.edge.page_url(), true),
        ("clustered, demo_page = true", on.page_url(), true),
    ] {
        let (status, body) = get(&base).await;
        if served {
            assert_eq!(status, 200, "{what}: /");
            assert!(body.contains("gpush.js"), "{what}: not the page");
        } else {
            assert_eq!(status, 404, "{what}: / must not be served");
            let body: Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("{what}: 404 body {body:?} is not JSON: {e}"));
            assert_eq!(body["code"], "not_found", "{what}: {body}");
        }
        let (status, body) = get(&format!("{base}gpush.js")).await;
        assert_eq!(status, 200, "{what}: /gpush.js");
        assert!(body.contains("class GPush"), "{what}: not the client");
    }
}

/// `auth.expiry_leeway` of the login tests, in seconds.
const LEEWAY: i64 = 1;

/// A client of its own in the page (`window[name]`) whose `getToken`
/// hands out `tokens` in turn (then null), counting calls in
/// `window[name + "Calls"]`; what its private `inbox` handler gets goes to
/// `window[name + "Got"]`, its 10004s to `window[name + "Expired"]`, and
/// its 20001 replies are counted in `window[name + "Subs"]`.
async fn token_client(browser: &Browser, ws_url: &str, name: &str, tokens: Vec<String>) {
    browser
        .eval(
            "const [url, name, tokens] = arguments;\
             window[name + 'Calls'] = 0; window[name + 'Got'] = [];\
             window[name + 'Expired'] = 0; window[name + 'Subs'] = 0;\
             const c = new GPush({url: url, getToken: () => {\
                 window[name + 'Calls']++;\
                 return Promise.resolve(tokens.shift() || null);\
             }});\
             c.on('expired', () => window[name + 'Expired']++);\
             c.on('reply', (r) => { if (r.code === 20001) window[name + 'Subs']++; });\
             window[name] = c;\
             c.login().then(() => c.subscribePrivate('inbox', (d) => window[name + 'Got'].push(d)));",
            vec![json!(ws_url), json!(name), json!(tokens)],
        )
        .await;
}

/// Waits until `client` has received private push `data`.
async fn wait_got(browser: &Browser, client: &str, data: &str) {
    browser
        .wait_for(
            &format!("{client} gets {data:?}"),
            "return window[arguments[0] + 'Got'].includes(arguments[1]);",
            vec![json!(client), json!(data)],
        )
        .await;
}

/// With `getToken`, the client refreshes its login before the token
/// expires (pushes keep arriving past the first token's end, no 10004);
/// when a refresh gets no token, the edge ends the login (10004) and the
/// client logs in again with the next token, its private subscription
/// restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_token_refreshes_the_login_and_logs_in_again_after_10004() {
    let d = Standalone::start(|c| c.auth.expiry_leeway = Duration::from_secs(LEEWAY as u64)).await;
    let browser = Browser::start().await;
    browser.open(&d.edge.page_url()).await;
    browser.wait_open().await;
    let ws = d.edge.ws_url();
    let short = auth::now() + 2;
    let long = auth::now() + 3600;
    let token = |uid: &str, exp: i64| auth::hs256_with(JWT_SECRET, uid, exp);
    token_client(
        &browser,
        &ws,
        "rae",
        vec![token("rae", short), token("rae", long)],
    )
    .await;
    // rex's refresh gets no token: its login ends, then the third token
    // logs it in again.
    token_client(
        &browser,
        &ws,
        "rex",
        vec![token("rex", short), String::new(), token("rex", long)],
    )
    .await;
    for uid in ["rae", "rex"] {
        browser
            .wait_for(
                &format!("{uid} subscribed to its inbox"),
                "return window[arguments[0]].uid === arguments[0] && window[arguments[0] + 'Subs'] >= 1;",
                vec![json!(uid)],
            )
            .await;
    }
    d.push_http("rae", "inbox", b"before").await;
    wait_got(&browser, "rae", "before").await;
    browser
        .wait_for(
            "rae refreshed with the second token",
            "return window.raeCalls >= 2 && window.rae._expires === arguments[0];",
            vec![json!(long)],
        )
        .await;
    browser
        .wait_for(
            "rex's login ended (10004)",
            "return window.rexExpired >= 1;",
            vec![],
        )
        .await;
    browser
        .wait_for(
            "rex logged in again and subscribed again",
            "return window.rexCalls >= 3 && window.rex.uid === 'rex' && window.rexSubs >= 2;",
            vec![],
        )
        .await;
    // Well past the first token's end plus the leeway and a sweep.
    let past = (short + LEEWAY + 2 - auth::now()).max(0) as u64;
    sleep(Duration::from_secs(past)).await;
    d.push_http("rae", "inbox", b"after").await;
    wait_got(&browser, "rae", "after").await;
    d.push_http("rex", "inbox", b"again").await;
    wait_got(&browser, "rex", "again").await;
    let rae_expired = browser.eval("return window.raeExpired;", vec![]).await;
    assert_eq!(rae_expired, json!(0), "a refreshed login does not end");
    browser.close().await;
}

/// logout() + login(B) on one connection: private pushes to A that are
/// already on their way when the page switches (queued while the page is
/// busy) never reach B's handlers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_pushes_are_not_handed_to_the_next_user() {
    let d = Standalone::start(|_| {}).await;
    let browser = Browser::start().await;
    browser.open(&d.edge.page_url()).await;
    browser.wait_open().await;
    browser
        .eval(
            "const [url, amy] = arguments;\
             window.raw = []; window.amyGot = []; window.bobGot = [];\
             const c = new GPush({url: url});\
             window.switcher = c;\
             c.on('open', () => c._ws.addEventListener('message', (e) => window.raw.push(e.data)));\
             c.login(amy).then(() => c.subscribePrivate('inbox', (d) => window.amyGot.push(d)));",
            vec![json!(d.edge.ws_url()), json!(auth::hs256("amy"))],
        )
        .await;
    browser
        .wait_for(
            "amy subscribed",
            "return window.switcher.uid === 'amy' && window.raw.some((f) => f.includes('20001'));",
            vec![],
        )
        .await;
    d.push_http("amy", "inbox", b"amy-1").await;
    wait_got(&browser, "amy", "amy-1").await;

    // The page is busy for a while; meanwhile a push to amy reaches it
    // and waits in its task queue; then it switches to bob.
    let api = d.api().clone();
    let push = tokio::spawn(async move {
        sleep(Duration::from_millis(300)).await;
        api.push_http("amy", "inbox", b"amy-2").await;
    });
    browser
        .eval(
            "const until = Date.now() + 1500;\
             while (Date.now() < until) {}\
             const c = window.switcher;\
             c.logout();\
             c.login(arguments[0]);\
             c.subscribePrivate('inbox', (d) => window.bobGot.push(d));",
            vec![json!(auth::hs256("bob"))],
        )
        .await;
    push.await.expect("push task");
    browser
        .wait_for(
            "amy's second push on the wire and bob subscribed",
            "return window.raw.some((f) => f.includes('amy-2'))\
                 && window.switcher.uid === 'bob'\
                 && window.raw.filter((f) => f.includes('20001')).length >= 2;",
            vec![],
        )
        .await;
    d.push_http("bob", "inbox", b"bob-1").await;
    wait_got(&browser, "bob", "bob-1").await;
    let bob = browser.eval("return window.bobGot;", vec![]).await;
    assert_eq!(bob, json!(["bob-1"]), "bob got someone else's push");
    browser.close().await;
}

/// A client of its own in the page (`window[name]`) whose connections can
/// be cut: its WebSocket goes to a closed port while
/// `window[name + "State"].offline` is true. The state also records what
/// the handlers made with `record(key)` got (`got`: `[key, offset, data]`),
/// every push (`pushes`: `[code, topic, offset, data]`), the "recovered"
/// and "gap" events (`events`: `[event, topic, info]`), the server's and
/// presence events and "expired" (`told`: `[event, info]`), the requests
/// sent (`sent`), the WebSockets made (`sockets`) and the number of 20001
/// and 20003 replies (`joins`). Reconnects wait 100 to 300 ms.
async fn cuttable_client(browser: &Browser, ws_url: &str, name: &str) {
    cuttable_client_with(browser, ws_url, name, None).await;
}

/// [`cuttable_client`], with a `getToken` that gives `token` when there
/// is one (counting its calls in `tokens`); while `hold` is set in the
/// state, it gives a promise that never settles.
async fn cuttable_client_with(browser: &Browser, ws_url: &str, name: &str, token: Option<&str>) {
    browser
        .eval(
            "const [url, name, token] = arguments;\
             const s = {offline: false, socket: null, sockets: 0, got: [], pushes: [], events: [],\
                 told: [], sent: [], joins: 0, tokens: 0, hold: false};\
             window[name + 'State'] = s;\
             class Cuttable extends WebSocket {\
                 constructor(u, p) {\
                     super(s.offline ? 'ws://127.0.0.1:9/ws' : u, p);\
                     s.socket = this;\
                     s.sockets++;\
                 }\
                 send(frame) { s.sent.push(frame); super.send(frame); }\
             }\
             const options = {url: url, WebSocket: Cuttable, reconnectInitial: 100, reconnectMax: 300};\
             if (token !== null) options.getToken = () => {\
                 s.tokens++;\
                 return s.hold ? new Promise(() => {}) : Promise.resolve(token);\
             };\
             const c = new GPush(options);\
             s.record = (key) => (data, push) => s.got.push([key,\
                 push.offset === undefined ? null : push.offset,\
                 typeof data === 'string' ? data : JSON.stringify(data)]);\
             c.on('push', (push, data) => s.pushes.push([push.code, push.topic === undefined ? null : push.topic,\
                 push.offset === undefined ? null : push.offset,\
                 typeof data === 'string' ? data : JSON.stringify(data)]));\
             c.on('recovered', (topic, info) => s.events.push(['recovered', topic, info]));\
             c.on('gap', (topic, info) => s.events.push(['gap', topic, info]));\
             for (const event of ['disconnected', 'loggedout', 'expired', 'subscribed', 'unsubscribed',\
                     'join', 'leave', 'presence']) {\
                 c.on(event, (info) => s.told.push([event, info]));\
             }\
             c.on('reply', (r) => { if (r.code === 20001 || r.code === 20003) s.joins++; });\
             window[name] = c;",
            vec![json!(ws_url), json!(name), json!(token)],
        )
        .await;
}

/// Runs `script` with `c` (the client `name`) and `s` (its state) bound.
async fn with_client(browser: &Browser, name: &str, script: &str) -> Value {
    let body = format!(
        "const c = window[arguments[0]]; const s = window[arguments[0] + 'State']; {script}"
    );
    browser.eval(&body, vec![json!(name)]).await
}

/// Waits until `script` (with `c` and `s` bound) is truthy.
async fn wait_client(browser: &Browser, name: &str, what: &str, script: &str) -> Value {
    let body = format!(
        "const c = window[arguments[0]]; const s = window[arguments[0] + 'State']; {script}"
    );
    browser
        .wait_for(&format!("{name}: {what}"), &body, vec![json!(name)])
        .await
}

/// Cuts the connection of client `name` from the page's side and keeps
/// it from reconnecting until [`reconnect`].
async fn cut(browser: &Browser, name: &str) {
    with_client(browser, name, "s.offline = true; s.socket.close();").await;
    wait_client(
        browser,
        name,
        "connection lost",
        "return c.state !== 'open';",
    )
    .await;
}

/// Lets client `name` reconnect and waits for its `connects`-th connection.
async fn reconnect(browser: &Browser, name: &str, connects: u64) {
    with_client(browser, name, "s.offline = false;").await;
    wait_client(
        browser,
        name,
        &format!("connection {connects} open"),
        &format!("return c.connects >= {connects} && c.state === 'open';"),
    )
    .await;
}

/// A push a handler got: (handler key, offset, data).
type Row = (String, Option<u64>, String);

/// What the handlers of client `name` got: (key, offset, data), once
/// there are at least `n`.
async fn got(browser: &Browser, name: &str, n: usize) -> Vec<Row> {
    let value = wait_client(
        browser,
        name,
        &format!("{n} pushes handled"),
        &format!("return s.got.length >= {n} ? s.got : null;"),
    )
    .await;
    let rows: Vec<Row> = serde_json::from_value(value).expect("[key, offset, data] rows");
    rows
}

/// The data `key`'s handler got, checking that its offsets (where it
/// has them) increase.
fn data_of(rows: &[Row], key: &str) -> Vec<String> {
    let mine: Vec<_> = rows.iter().filter(|r| r.0 == key).collect();
    for pair in mine.windows(2) {
        let ordered = match (pair[0].1, pair[1].1) {
            (Some(a), Some(b)) => a < b,
            _ => true,
        };
        assert!(ordered, "{key}: offsets out of order or repeated: {rows:?}");
    }
    mine.iter().map(|r| r.2.clone()).collect()
}

/// The "recovered" and "gap" events of client `name`, once there are at
/// least `n`.
async fn events(browser: &Browser, name: &str, n: usize) -> Vec<Value> {
    let value = wait_client(
        browser,
        name,
        &format!("{n} recovered/gap events"),
        &format!("return s.events.length >= {n} ? s.events : null;"),
    )
    .await;
    value.as_array().cloned().expect("an array of events")
}

/// The requests client `name` sent with `code` (and `topic`), parsed.
async fn sent(browser: &Browser, name: &str, code: u32, topic: Option<&str>) -> Vec<Value> {
    let frames = with_client(browser, name, "return s.sent;").await;
    frames
        .as_array()
        .expect("frames")
        .iter()
        .filter_map(|f| serde_json::from_str::<Value>(f.as_str()?).ok())
        .filter(|r| r["code"] == code && topic.is_none_or(|t| r["topic"] == t))
        .collect()
}

fn strings(prefix: &str, range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|n| format!("{prefix}{n}")).collect()
}

/// The page's client loses its connection (cut from the page's side),
/// 20 pushes are made meanwhile; it reconnects, resubscribes with
/// `since`, and its handler gets all 20 in order and once, then live ones;
/// "recovered" fires for the topic. A first subscribe sends no `since`; a
/// topic without history gets none either and no event; a push the client
/// already has (same or older offset) never reaches the handler again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_recovers_what_it_missed_while_disconnected() {
    let d = Standalone::start(|c| {
        c.history.topics = vec![PrefixRule {
            prefix: "live.".into(),
            size: 0,
            ttl: Duration::from_secs(1),
        }];
    })
    .await;
    let browser = Browser::start().await;
    browser.open(&d.edge.page_url()).await;
    browser.wait_open().await;
    cuttable_client(&browser, &d.edge.ws_url(), "rc").await;
    with_client(
        &browser,
        "rc",
        "c.subscribe('news', s.record('news')); c.subscribe('live.tick', s.record('tick'));",
    )
    .await;
    wait_client(&browser, "rc", "subscribed twice", "return s.joins >= 2;").await;
    for text in strings("a", 0..3) {
        d.push_http("", "news", text.as_bytes()).await;
    }
    d.push_http("", "live.tick", b"t0").await;
    got(&browser, "rc", 4).await;

    cut(&browser, "rc").await;
    let missed = strings("m", 0..20);
    for text in &missed {
        d.push_http("", "news", text.as_bytes()).await;
    }
    d.push_http("", "live.tick", b"lost").await;
    reconnect(&browser, "rc", 2).await;
    wait_client(&browser, "rc", "subscribed again", "return s.joins >= 4;").await;
    d.push_http("", "news", b"live").await;
    d.push_http("", "live.tick", b"t1").await;
    let rows = got(&browser, "rc", 4 + 20 + 2).await;

    let mut expected = strings("a", 0..3);
    expected.extend(missed.iter().cloned());
    expected.push("live".to_owned());
    assert_eq!(data_of(&rows, "news"), expected, "{rows:?}");
    let news: Vec<u64> = rows
        .iter()
        .filter(|r| r.0 == "news")
        .map(|r| r.1.expect("news pushes carry offsets"))
        .collect();
    assert_eq!(news, (1..=24).collect::<Vec<u64>>(), "{rows:?}");
    assert_eq!(data_of(&rows, "tick"), ["t0", "t1"], "{rows:?}");
    assert!(rows.iter().filter(|r| r.0 == "tick").all(|r| r.1.is_none()));

    let evs = events(&browser, "rc", 1).await;
    assert_eq!(evs.len(), 1, "one event, for news only: {evs:?}");
    let (event, topic, info) = (&evs[0][0], &evs[0][1], &evs[0][2]);
    assert_eq!(
        (event, topic),
        (&json!("recovered"), &json!("news")),
        "{evs:?}"
    );
    assert_eq!(info["private"], false, "{info}");
    assert_eq!(info["since"]["offset"], 3, "{info}");
    assert_eq!(info["offset"], 23, "{info}");
    assert_eq!(info["epoch"], info["since"]["epoch"], "{info}");

    let subs = sent(&browser, "rc", 1, Some("news")).await;
    assert_eq!(subs.len(), 2, "{subs:?}");
    assert!(
        subs[0].get("since").is_none(),
        "a first subscribe: {subs:?}"
    );
    assert_eq!(subs[1]["since"]["offset"], 3, "{subs:?}");
    let ticks = sent(&browser, "rc", 1, Some("live.tick")).await;
    assert!(
        ticks.iter().all(|r| r.get("since").is_none()),
        "no history, no since: {ticks:?}"
    );

    // Frames the client already has, as a reconnect race could bring them
    // again: dropped before any handler.
    with_client(
        &browser,
        "rc",
        "for (const offset of [24, 7]) {\
             const push = {code: 10001, topic: 'news', data: 'again ' + offset, offset: offset};\
             s.socket.dispatchEvent(new MessageEvent('message', {data: JSON.stringify(push)}));\
         }",
    )
    .await;
    d.push_http("", "news", b"after").await;
    let rows = got(&browser, "rc", 4 + 20 + 3).await;
    let news = data_of(&rows, "news");
    assert_eq!(news.last().map(String::as_str), Some("after"), "{rows:?}");
    assert!(!news.iter().any(|t| t.starts_with("again")), "{rows:?}");
    browser.close().await;
}

/// A standalone edge that restarts has lost its history (a new epoch):
/// after the reconnect the client says "gap" for the public topic, the
/// private topic and the user-wide pushes, and takes the live pushes of
/// the new epoch (whose offsets start again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_is_told_of_a_gap_after_a_standalone_restart() {
    let mut d = Standalone::start(|_| {}).await;
    let browser = Browser::start().await;
    browser.open(&d.edge.page_url()).await;
    browser.wait_open().await;
    cuttable_client(&browser, &d.edge.ws_url(), "gc").await;
    with_client(
        &browser,
        "gc",
        &format!(
            "c.subscribe('news', s.record('news'));\
             c.onUser(s.record('user'));\
             c.login({:?}).then(() => c.subscribePrivate('inbox', s.record('inbox')));",
            auth::hs256("gil")
        ),
    )
    .await;
    wait_client(&browser, "gc", "joined three times", "return s.joins >= 3;").await;
    d.push_http("", "news", b"n1").await;
    d.push_http("gil", "inbox", b"i1").await;
    d.push_http("gil", "", b"u1").await;
    got(&browser, "gc", 3).await;

    let config = d.edge.stop().await;
    d.edge = EdgeHandle::start_again(config).await;
    let evs = events(&browser, "gc", 3).await;
    let mut topics: Vec<String> = Vec::new();
    for ev in &evs {
        assert_eq!(ev[0], "gap", "{evs:?}");
        let info = &ev[2];
        assert_ne!(info["epoch"], info["since"]["epoch"], "{evs:?}");
        assert_eq!(info["private"], !ev[1].is_string() || ev[1] == "inbox");
        topics.push(ev[1].as_str().unwrap_or("(user)").to_owned());
    }
    topics.sort();
    assert_eq!(topics, ["(user)", "inbox", "news"], "{evs:?}");

    d.push_http("", "news", b"n2").await;
    d.push_http("gil", "inbox", b"i2").await;
    d.push_http("gil", "", b"u2").await;
    let rows = got(&browser, "gc", 6).await;
    // The new epoch's offsets start again: not taken for duplicates.
    let data = |key: &str| {
        rows.iter()
            .filter(|r| r.0 == key)
            .map(|r| r.2.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(data("news"), ["n1", "n2"], "{rows:?}");
    assert_eq!(data("inbox"), ["i1", "i2"], "{rows:?}");
    assert_eq!(data("user"), ["u1", "u2"], "{rows:?}");
    browser.close().await;
}

/// A logged-in page that loses its connection gets back, through the
/// login with `since`, the user-wide pushes it missed, and through the
/// private subscribe with `since` its private topic's: each in order and
/// once, nobody else's, then live ones; "recovered" fires for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_recovers_private_and_user_wide_pushes_through_login() {
    let d = Standalone::start(|_| {}).await;
    let browser = Browser::start().await;
    browser.open(&d.edge.page_url()).await;
    browser.wait_open().await;
    cuttable_client(&browser, &d.edge.ws_url(), "pc").await;
    with_client(
        &browser,
        "pc",
        &format!(
            "c.onUser(s.record('user'));\
             c.login({:?}).then(() => c.subscribePrivate('inbox', s.record('inbox')));",
            auth::hs256("ann")
        ),
    )
    .await;
    wait_client(
        &browser,
        "pc",
        "logged in and subscribed",
        "return s.joins >= 2;",
    )
    .await;
    d.push_http("ann", "inbox", b"i0").await;
    d.push_http("ann", "", b"u0").await;
    got(&browser, "pc", 2).await;

    cut(&browser, "pc").await;
    let send = |uid: &str, topic: &str, text: &str| PushMsg::new(uid, topic, text.as_bytes());
    d.push_batch_http(&[
        send("ann", "inbox", "i1"),
        send("ann", "", "u1"),
        send("ann", "other", "o1"),
        send("bob", "inbox", "not ann's"),
        send("bob", "", "not ann's either"),
        send("ann", "inbox", "i2"),
        send("ann", "", "u2"),
    ])
    .await;
    reconnect(&browser, "pc", 2).await;
    let evs = events(&browser, "pc", 2).await;
    got(&browser, "pc", 6).await;
    d.push_http("ann", "inbox", b"i3").await;
    d.push_http("ann", "", b"u3").await;
    let rows = got(&browser, "pc", 8).await;
    assert_eq!(rows.len(), 8, "{rows:?}");
    assert_eq!(
        data_of(&rows, "inbox"),
        ["i0", "i1", "i2", "i3"],
        "{rows:?}"
    );
    assert_eq!(data_of(&rows, "user"), ["u0", "u1", "u2", "u3"], "{rows:?}");

    assert_eq!(evs.len(), 2, "{evs:?}");
    let mut seen: Vec<(String, String)> = evs
        .iter()
        .map(|ev| {
            assert_eq!(ev[2]["private"], true, "{ev}");
            let topic = ev[1].as_str().unwrap_or("(user)").to_owned();
            (ev[0].as_str().unwrap_or_default().to_owned(), topic)
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("recovered".to_owned(), "(user)".to_owned()),
            ("recovered".to_owned(), "inbox".to_owned())
        ]
    );
    // i0 was offset 1 and u0 offset 2 of ann's stream: both ask from 2,
    // since the inbox had everything up to u0 too (its stream is in order).
    let logins = sent(&browser, "pc", 3, None).await;
    assert_eq!(logins.len(), 2, "{logins:?}");
    assert!(logins[0].get("since").is_none(), "{logins:?}");
    assert_eq!(logins[1]["since"]["offset"], 2, "{logins:?}");
    let inbox = sent(&browser, "pc", 5, Some("inbox")).await;
    assert_eq!(inbox.len(), 2, "{inbox:?}");
    assert!(inbox[0].get("since").is_none(), "{inbox:?}");
    assert_eq!(inbox[1]["since"]["offset"], 2, "{inbox:?}");
    browser.close().await;
}

/// How long a client is watched for what must not happen (a reconnect, a
/// login, a push): a dozen backoff steps of the test clients (100 to
/// 300 ms).
const QUIET: Duration = Duration::from_secs(3);

/// `POST <path>` with `body` on the server API of `d`: its JSON answer,
/// which must be a 200.
async fn server_post(d: &impl Deployment, path: &str, body: Value) -> Value {
    let reply = d.api().post(path, body.to_string(), None).await;
    assert_eq!(
        reply.status,
        200,
        "{} POST {path} {body}: {}",
        d.name(),
        reply.body
    );
    reply.json()
}

/// `GET <path>` on the server API of `d`: its JSON answer, which must be
/// a 200 with every edge in it.
async fn server_get(d: &impl Deployment, path: &str) -> Value {
    let reply = d.api().get(path).await;
    assert_eq!(reply.status, 200, "{} GET {path}: {}", d.name(), reply.body);
    let answer = reply.json();
    assert_eq!(answer["missing"], json!([]), "GET {path}: {answer}");
    answer
}

/// Connections logged in as `uid`, on every edge (`GET /v1/online`).
async fn online(d: &impl Deployment, uid: &str) -> u64 {
    let answer = server_get(d, &format!("/v1/online?uid={uid}")).await;
    answer["online"][uid]
        .as_u64()
        .unwrap_or_else(|| panic!("no count for {uid}: {answer}"))
}

/// Connections subscribed to public `topic`, on every edge
/// (`GET /v1/presence`).
async fn subscribers(d: &impl Deployment, topic: &str) -> u64 {
    let answer = server_get(d, &format!("/v1/presence?topic={topic}")).await;
    answer["connections"]
        .as_u64()
        .unwrap_or_else(|| panic!("no connection count for {topic}: {answer}"))
}

/// The infos of client `name`'s `event` events (`told` of
/// [`cuttable_client`]), once there are at least `n`.
async fn told(browser: &Browser, name: &str, event: &str, n: usize) -> Vec<Value> {
    let value = wait_client(
        browser,
        name,
        &format!("{n} {event:?} events"),
        &format!(
            "const infos = s.told.filter((e) => e[0] === {event:?}).map((e) => e[1]);\
             return infos.length >= {n} ? infos : null;"
        ),
    )
    .await;
    value.as_array().cloned().expect("an array of infos")
}

/// The data of the pushes to `topic` client `name` got (any handler or
/// none: its "push" event), once there are at least `n`.
async fn pushed(browser: &Browser, name: &str, topic: &str, n: usize) -> Vec<String> {
    let value = wait_client(
        browser,
        name,
        &format!("{n} pushes to {topic:?}"),
        &format!(
            "const data = s.pushes.filter((p) => p[1] === {topic:?}).map((p) => p[3]);\
             return data.length >= {n} ? data : null;"
        ),
    )
    .await;
    serde_json::from_value(value).expect("push data")
}

/// Waits until the demo page's client is logged in as `uid`.
async fn wait_page_uid(browser: &Browser, uid: &str) {
    browser
        .wait_for(
            &format!("the demo page logged in as {uid}"),
            "return window.gpush.state === 'open' && document.getElementById('uid').textContent === arguments[0];",
            vec![json!(uid)],
        )
        .await;
}

/// Waits until the demo page has logged a `event` event whose text
/// contains `needle`.
async fn wait_logged(browser: &Browser, event: &str, needle: &str) {
    browser
        .wait_for(
            &format!("the demo page logs {event:?} with {needle:?}"),
            "return Array.from(document.querySelectorAll(`#log li[data-event=\"${arguments[0]}\"]`))\
                 .some((li) => li.textContent.includes(arguments[1]));",
            vec![json!(event), json!(needle)],
        )
        .await;
}

/// The server API disconnects a user (close 4003, here through ingress
/// to a clustered edge): the page's client ends closed, as after
/// close(), with a "disconnected" event carrying the call's reason, and
/// a login waiting for its token is rejected. Nothing comes back by
/// itself: no new WebSocket, no new login, the user offline, although
/// the client's backoff would have tried a dozen times meanwhile. The
/// application decides: connect() connects and logs in again. The demo
/// page, logged in as the same user, logs the event and connects again
/// with its Connect button.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_disconnect_closes_the_page_client_for_good() {
    let cluster = Cluster::start(1, |edge| edge.demo_page = Some(true)).await;
    let browser = Browser::start().await;
    browser.open(&cluster.edges[0].page_url()).await;
    browser.wait_open().await;
    let token = auth::hs256("dan");
    browser.fill("token", &token).await;
    browser.click("login").await;
    wait_page_uid(&browser, "dan").await;
    cuttable_client_with(&browser, &cluster.edges[0].ws_url(), "dc", Some(&token)).await;
    with_client(
        &browser,
        "dc",
        "c.login(); c.subscribe('news', s.record('news'));",
    )
    .await;
    wait_client(
        &browser,
        "dc",
        "logged in and subscribed",
        "return c.uid === 'dan' && s.joins >= 2;",
    )
    .await;
    assert_eq!(online(&cluster, "dan").await, 2);
    // A new login waits for its token when the server disconnects (the
    // edge still has the first one).
    with_client(
        &browser,
        "dc",
        "s.hold = true; s.rejected = null;\
         c.login().catch((e) => { s.rejected = e.message; });",
    )
    .await;
    wait_client(
        &browser,
        "dc",
        "getToken asked again",
        "return s.tokens >= 2;",
    )
    .await;

    let body = json!({"uid": "dan", "reason": "banned for a test"});
    let answer = server_post(&cluster, "/v1/disconnect", body).await;
    assert_eq!(answer["connections"], 2, "{answer}");
    let infos = told(&browser, "dc", "disconnected", 1).await;
    assert_eq!(
        infos,
        [json!({"code": 4003, "reason": "banned for a test"})],
        "{infos:?}"
    );
    let now = with_client(&browser, "dc", "return [c.state, s.rejected];").await;
    assert_eq!(
        now,
        json!([
            "closed",
            "gpush: disconnected by the server: banned for a test"
        ])
    );

    sleep(QUIET).await;
    let after = with_client(
        &browser,
        "dc",
        "return [c.state, c.connects, s.sockets, s.tokens];",
    )
    .await;
    assert_eq!(after, json!(["closed", 1, 1, 2]), "came back by itself");
    let page = browser
        .eval(
            "return [window.gpush.state, window.gpush.connects];",
            vec![],
        )
        .await;
    assert_eq!(
        page,
        json!(["closed", 1]),
        "the demo page came back by itself"
    );
    assert_eq!(online(&cluster, "dan").await, 0);
    wait_logged(&browser, "disconnected", "banned for a test").await;
    browser.click("connect").await;
    wait_page_uid(&browser, "dan").await;

    with_client(&browser, "dc", "s.hold = false; c.connect();").await;
    wait_client(
        &browser,
        "dc",
        "connected, logged in and subscribed again",
        "return c.state === 'open' && c.uid === 'dan' && s.joins >= 4;",
    )
    .await;
    assert_eq!(online(&cluster, "dan").await, 2);
    browser.close().await;
}

/// The server API logs a user out (10004, reason "logout"): the page's
/// client says "loggedout" (not "expired"), has no uid and drops its
/// private subscription, and although it has `getToken` it does not log
/// in again: the user stays offline, getToken is not asked. The
/// connection and its public subscription stay. login() logs in again,
/// without the dropped private subscription. The demo page, logged in as
/// the same user, logs the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_logout_ends_the_page_login_for_good() {
    let d = Standalone::start(|_| {}).await;
    let browser = Browser::start().await;
    browser.open(&d.edge.page_url()).await;
    browser.wait_open().await;
    let token = auth::hs256("lou");
    browser.fill("token", &token).await;
    browser.click("login").await;
    wait_page_uid(&browser, "lou").await;
    cuttable_client_with(&browser, &d.edge.ws_url(), "lo", Some(&token)).await;
    with_client(
        &browser,
        "lo",
        "c.login().then(() => c.subscribePrivate('inbox', s.record('inbox')));\
         c.subscribe('news', s.record('news'));",
    )
    .await;
    wait_client(
        &browser,
        "lo",
        "logged in and subscribed twice",
        "return s.joins >= 3;",
    )
    .await;
    d.push_http("lou", "inbox", b"i1").await;
    d.push_http("", "news", b"n1").await;
    got(&browser, "lo", 2).await;
    assert_eq!(online(&d, "lou").await, 2);

    let answer = server_post(&d, "/v1/logout", json!({"uid": "lou"})).await;
    assert_eq!(answer["connections"], 2, "{answer}");
    wait_logged(&browser, "loggedout", "lou").await;
    let infos = told(&browser, "lo", "loggedout", 1).await;
    assert_eq!(infos, [json!({"uid": "lou", "reason": "logout"})]);
    let now = with_client(
        &browser,
        "lo",
        "return [c.state, c.uid, c.topics(), c.privateTopics()];",
    )
    .await;
    assert_eq!(now, json!(["open", null, ["news"], []]));

    sleep(QUIET).await;
    assert_eq!(online(&d, "lou").await, 0, "logged in again by itself");
    let after = with_client(
        &browser,
        "lo",
        "return [c.uid, s.tokens, c.connects, s.told.filter((e) => e[0] === 'expired').length];",
    )
    .await;
    assert_eq!(after, json!([null, 1, 1, 0]));
    d.push_http("", "news", b"n2").await;
    let rows = got(&browser, "lo", 3).await;
    assert_eq!(data_of(&rows, "news"), ["n1", "n2"], "{rows:?}");

    with_client(&browser, "lo", "c.login();").await;
    wait_client(&browser, "lo", "logged in again", "return c.uid === 'lou';").await;
    assert_eq!(online(&d, "lou").await, 1);
    let inbox = sent(&browser, "lo", 5, Some("inbox")).await;
    assert_eq!(inbox.len(), 1, "the dropped one was sent again: {inbox:?}");
    browser.close().await;
}

/// Server subscriptions (10008) in the page, public and private, with
/// and without `keep`: the client says "subscribed", lists the kept ones
/// as its own, and their pushes reach its "push" event. Its connection is
/// lost and made again (cut from the page's side) while pushes are
/// made: the kept ones are subscribed again (the private one after the
/// login) with `since` from the positions the 10008s and pushes gave, so
/// what was missed is recovered, in order and once, and live pushes
/// follow. The ones without `keep` are not subscribed again (the server
/// decides again): the edge lost the client's subscriber of them. The
/// demo page, logged in as the same user, logs the events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_subscriptions_survive_a_reconnect_only_with_keep() {
    let d = Standalone::start(|_| {}).await;
    let browser = Browser::start().await;
    browser.open(&d.edge.page_url()).await;
    browser.wait_open().await;
    let token = auth::hs256("sam");
    browser.fill("token", &token).await;
    browser.click("login").await;
    wait_page_uid(&browser, "sam").await;
    cuttable_client_with(&browser, &d.edge.ws_url(), "sk", Some(&token)).await;
    with_client(&browser, "sk", "c.login();").await;
    wait_client(&browser, "sk", "logged in", "return c.uid === 'sam';").await;
    let subscriptions = [
        ("alerts", true, true),
        ("orders", false, true),
        ("flash", true, false),
        ("bulletin", false, false),
    ];
    for (topic, public, keep) in subscriptions {
        let body = json!({"uid": "sam", "topic": topic, "public": public, "keep": keep});
        let answer = server_post(&d, "/v1/subscribe", body).await;
        assert_eq!(answer["connections"], 2, "{topic}: {answer}");
    }
    wait_logged(&browser, "subscribed", "alerts (kept across reconnects)").await;
    wait_logged(
        &browser,
        "subscribed",
        "private bulletin (this connection only)",
    )
    .await;
    let infos = told(&browser, "sk", "subscribed", 4).await;
    let expected: Vec<Value> = subscriptions
        .iter()
        .map(|(topic, public, keep)| json!({"topic": topic, "private": !public, "keep": keep}))
        .collect();
    assert_eq!(infos, expected);
    let lists = with_client(&browser, "sk", "return [c.topics(), c.privateTopics()];").await;
    assert_eq!(lists, json!([["alerts"], ["orders"]]));
    d.push_http("", "alerts", b"a1").await;
    d.push_http("sam", "orders", b"o1").await;
    d.push_http("", "flash", b"f1").await;
    d.push_http("sam", "bulletin", b"b1").await;
    for topic in ["alerts", "orders", "flash", "bulletin"] {
        pushed(&browser, "sk", topic, 1).await;
    }
    assert_eq!(subscribers(&d, "flash").await, 2);

    cut(&browser, "sk").await;
    d.push_http("", "alerts", b"a2").await;
    d.push_http("sam", "orders", b"o2").await;
    reconnect(&browser, "sk", 2).await;
    let evs = events(&browser, "sk", 3).await;
    let mut recovered: Vec<String> = evs
        .iter()
        .map(|ev| {
            assert_eq!(ev[0], "recovered", "{evs:?}");
            ev[1].as_str().unwrap_or("(user)").to_owned()
        })
        .collect();
    recovered.sort();
    assert_eq!(recovered, ["(user)", "alerts", "orders"], "{evs:?}");
    d.push_http("", "flash", b"f2").await;
    d.push_http("sam", "bulletin", b"b2").await;
    d.push_http("", "alerts", b"a3").await;
    d.push_http("sam", "orders", b"o3").await;
    assert_eq!(
        pushed(&browser, "sk", "alerts", 3).await,
        ["a1", "a2", "a3"]
    );
    assert_eq!(
        pushed(&browser, "sk", "orders", 3).await,
        ["o1", "o2", "o3"]
    );
    assert_eq!(pushed(&browser, "sk", "flash", 1).await, ["f1"]);
    assert_eq!(pushed(&browser, "sk", "bulletin", 1).await, ["b1"]);
    // The demo page's connection (never lost) keeps both; of the
    // client's, only the kept one is back.
    assert_eq!(subscribers(&d, "alerts").await, 2);
    assert_eq!(subscribers(&d, "flash").await, 1);

    // What the client sent: the kept ones once, after the reconnect, with
    // `since`; the private one after the login; the others never.
    let frames: Vec<Value> = sent(&browser, "sk", 1, None)
        .await
        .into_iter()
        .chain(sent(&browser, "sk", 5, None).await)
        .collect();
    let topics: Vec<&str> = frames.iter().filter_map(|f| f["topic"].as_str()).collect();
    assert_eq!(topics, ["alerts", "orders"], "{frames:?}");
    assert!(
        frames.iter().all(|f| f["since"]["offset"].is_u64()),
        "{frames:?}"
    );
    let order = with_client(
        &browser,
        "sk",
        "const codes = s.sent.map((f) => JSON.parse(f).code);\
         return [codes.lastIndexOf(3), codes.indexOf(5)];",
    )
    .await;
    assert!(order[0].as_i64() < order[1].as_i64(), "{order}");
    browser.close().await;
}

/// Server unsubscribes (10009) in the page: of a public topic and a
/// private one the application subscribed itself, and of a public one
/// the server subscribed with `keep`. The client says "unsubscribed" for
/// each, forgets them all, their pushes no longer arrive, and after a
/// reconnect none is subscribed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_unsubscribe_ends_page_subscriptions() {
    let d = Standalone::start(|_| {}).await;
    let browser = Browser::start().await;
    browser.open(&d.edge.page_url()).await;
    browser.wait_open().await;
    let token = auth::hs256("uma");
    cuttable_client_with(&browser, &d.edge.ws_url(), "su", Some(&token)).await;
    with_client(
        &browser,
        "su",
        "c.login().then(() => c.subscribePrivate('inbox', s.record('inbox')));\
         c.subscribe('news', s.record('news'));",
    )
    .await;
    wait_client(
        &browser,
        "su",
        "logged in and subscribed twice",
        "return s.joins >= 3;",
    )
    .await;
    let body = json!({"uid": "uma", "topic": "alerts", "public": true, "keep": true});
    server_post(&d, "/v1/subscribe", body).await;
    told(&browser, "su", "subscribed", 1).await;
    d.push_http("", "news", b"n1").await;
    d.push_http("", "alerts", b"a1").await;
    d.push_http("uma", "inbox", b"i1").await;
    for topic in ["news", "alerts", "inbox"] {
        pushed(&browser, "su", topic, 1).await;
    }

    for (topic, public) in [("news", true), ("alerts", true), ("inbox", false)] {
        let body = json!({"uid": "uma", "topic": topic, "public": public});
        let answer = server_post(&d, "/v1/unsubscribe", body).await;
        assert_eq!(answer["connections"], 1, "{topic}: {answer}");
    }
    let infos = told(&browser, "su", "unsubscribed", 3).await;
    assert_eq!(
        infos,
        [
            json!({"topic": "news", "private": false}),
            json!({"topic": "alerts", "private": false}),
            json!({"topic": "inbox", "private": true}),
        ]
    );
    let lists = with_client(&browser, "su", "return [c.topics(), c.privateTopics()];").await;
    assert_eq!(lists, json!([[], []]));
    d.push_http("", "news", b"n2").await;
    d.push_http("", "alerts", b"a2").await;
    d.push_http("uma", "inbox", b"i2").await;
    sleep(QUIET).await;
    let all = with_client(&browser, "su", "return s.pushes.map((p) => p[3]);").await;
    assert_eq!(all, json!(["n1", "a1", "i1"]));

    cut(&browser, "su").await;
    reconnect(&browser, "su", 2).await;
    wait_client(
        &browser,
        "su",
        "logged in again",
        "return c.uid === 'uma' && s.joins >= 4;",
    )
    .await;
    assert_eq!(sent(&browser, "su", 1, None).await.len(), 1, "news, once");
    assert_eq!(sent(&browser, "su", 5, None).await.len(), 1, "inbox, once");
    assert_eq!(subscribers(&d, "news").await, 0);
    assert_eq!(subscribers(&d, "alerts").await, 0);
    browser.close().await;
}

/// The `[presence]` rule of the presence tests, as an operator writes it:
/// events and queries for the "room." topics; windows of 2 s, so that a
/// dozen joins made at once fall into at most two of them, and at most 3
/// changes per topic and window.
const PRESENCE_RULE: &str = r#"
[presence]
interval = "2s"
max_changes = 3

[[presence.topics]]
prefix = "room."
events = true
query = true
"#;

/// Gives `config` the [`PRESENCE_RULE`]: the config is parsed from that
/// TOML (so the test goes through the documented keys), then takes the
/// test settings the harness gave `config` (standalone, NATS, auth,
/// grace period).
fn with_presence_rule(config: &mut EdgeConfig) {
    let mut ruled: EdgeConfig = toml::from_str(PRESENCE_RULE)
        .unwrap_or_else(|e| panic!("the [presence] rule is not edge config: {e}"));
    ruled.standalone = config.standalone;
    ruled.nats = config.nats.clone();
    ruled.auth = config.auth.clone();
    ruled.shutdown_grace = config.shutdown_grace;
    *config = ruled;
}

/// Client `name`'s presence(`topic`): its answer, or `{"refused": code}`
/// when it is rejected with the edge's reply.
async fn ask_presence(browser: &Browser, name: &str, topic: &str) -> Value {
    with_client(
        browser,
        name,
        &format!(
            "s.answer = null;\
             c.presence({topic:?}).then((a) => {{ s.answer = a; }},\
                 (e) => {{ s.answer = {{refused: e.reply ? e.reply.code : e.message}}; }});"
        ),
    )
    .await;
    wait_client(
        browser,
        name,
        &format!("the presence of {topic}"),
        "return s.answer;",
    )
    .await
}

/// Presence in the page, on an edge whose `[presence]` rule covers
/// "room.": a client in room.1 is told "join" when another user's first
/// connection subscribes and "leave" when that user's only connection
/// closes; presence() answers the users with their connection counts and
/// the anonymous connections (the demo page's); it is refused (30007,
/// the error carrying the reply) for a topic without a rule and for one
/// the client is not subscribed to. The demo page logs the join and the
/// answer of its Presence button.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_is_told_of_presence_and_asks_for_it() {
    let d = Standalone::start(with_presence_rule).await;
    let browser = Browser::start().await;
    browser.open(&d.edge.page_url()).await;
    browser.wait_open().await;
    browser.subscribe("room.1").await;
    let (pam, pat) = (auth::hs256("pam"), auth::hs256("pat"));
    cuttable_client_with(&browser, &d.edge.ws_url(), "pa", Some(&pam)).await;
    cuttable_client_with(&browser, &d.edge.ws_url(), "pb", Some(&pat)).await;
    with_client(
        &browser,
        "pa",
        "c.login().then(() => { c.subscribe('room.1'); c.subscribe('lobby'); });",
    )
    .await;
    wait_client(
        &browser,
        "pa",
        "logged in and subscribed twice",
        "return s.joins >= 3;",
    )
    .await;
    with_client(
        &browser,
        "pb",
        "c.login().then(() => c.subscribe('room.1'));",
    )
    .await;
    wait_client(
        &browser,
        "pa",
        "told that pat joined room.1",
        "return s.told.some((e) => e[0] === 'join' && e[1].topic === 'room.1' && e[1].uid === 'pat');",
    )
    .await;
    wait_logged(&browser, "join", "pat joined room.1").await;

    let answer = ask_presence(&browser, "pa", "room.1").await;
    assert_eq!(
        answer,
        json!({"users": {"pam": 1, "pat": 1}, "anonymous": 1})
    );
    for topic in ["lobby", "room.2"] {
        let answer = ask_presence(&browser, "pa", topic).await;
        assert_eq!(answer, json!({"refused": 30007}), "{topic}");
    }
    browser.fill("topic", "room.1").await;
    browser.click("presence").await;
    for needle in ["pam (1)", "pat (1)", "1 anonymous"] {
        wait_logged(&browser, "answer", needle).await;
    }

    with_client(&browser, "pb", "c.close();").await;
    let left = wait_client(
        &browser,
        "pa",
        "told that pat left room.1",
        "return s.told.find((e) => e[0] === 'leave');",
    )
    .await;
    assert_eq!(left, json!(["leave", {"topic": "room.1", "uid": "pat"}]));
    let answer = ask_presence(&browser, "pa", "room.1").await;
    assert_eq!(answer, json!({"users": {"pam": 1}, "anonymous": 1}));
    browser.close().await;
}

/// A dozen users join a topic at once, more than `max_changes` in at
/// least one window: the client already in it gets a "presence" event
/// for the topic instead of that window's joins, and presence() lists
/// them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_is_told_to_ask_when_presence_changes_too_much() {
    let d = Standalone::start(with_presence_rule).await;
    let browser = Browser::start().await;
    browser.open(&d.edge.page_url()).await;
    browser.wait_open().await;
    let token = auth::hs256("obs");
    cuttable_client_with(&browser, &d.edge.ws_url(), "ob", Some(&token)).await;
    with_client(
        &browser,
        "ob",
        "c.login().then(() => c.subscribe('room.crowd'));",
    )
    .await;
    wait_client(
        &browser,
        "ob",
        "logged in and subscribed",
        "return s.joins >= 2;",
    )
    .await;

    let crowd: Vec<String> = (0..12).map(|i| format!("crowd{i}")).collect();
    let tokens: Vec<String> = crowd.iter().map(|uid| auth::hs256(uid)).collect();
    browser
        .eval(
            "const [url, tokens] = arguments;\
             window.crowdSubs = 0;\
             window.crowd = tokens.map((token) => {\
                 const c = new GPush({url: url});\
                 c.on('reply', (r) => { if (r.code === 20001) window.crowdSubs++; });\
                 c.login(token).then(() => c.subscribe('room.crowd'));\
                 return c;\
             });",
            vec![json!(d.edge.ws_url()), json!(tokens)],
        )
        .await;
    browser
        .wait_for(
            "the crowd subscribed",
            "return window.crowdSubs >= 12;",
            vec![],
        )
        .await;
    let infos = told(&browser, "ob", "presence", 1).await;
    assert_eq!(infos[0], json!({"topic": "room.crowd"}), "{infos:?}");
    let joins = with_client(
        &browser,
        "ob",
        "return s.told.filter((e) => e[0] === 'join' && e[1].uid.startsWith('crowd')).length;",
    )
    .await;
    assert!(
        joins.as_u64() < Some(12),
        "a window's joins were replaced: {joins}"
    );

    let answer = ask_presence(&browser, "ob", "room.crowd").await;
    let mut users: serde_json::Map<String, Value> =
        crowd.iter().map(|uid| (uid.clone(), json!(1))).collect();
    users.insert("obs".to_owned(), json!(1));
    assert_eq!(answer, json!({"users": users, "anonymous": 0}));
    browser.close().await;
}
