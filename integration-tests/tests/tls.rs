//! TLS end to end, with certificates generated for each test (rcgen): a
//! CA, a server certificate for `localhost` and `127.0.0.1` signed by it,
//! a client certificate signed by it, and a second CA that nothing trusts
//! with a client certificate of its own.
//!
//! - An edge with TLS (standalone, so its push API is TLS too): `wss://`
//!   clients that trust the CA connect, subscribe and receive pushes made
//!   over HTTPS and gRPC over TLS; its HTTP routes are HTTPS. Plain `ws://`
//!   on the TLS port and clients that do not trust the CA fail, within the
//!   timeout, and the edge keeps serving; on shutdown clients still get
//!   their 1001 close through TLS.
//! - Ingress with TLS: HTTPS and gRPC over TLS pushes are accepted; plain
//!   HTTP and gRPC on those ports fail.
//! - Ingress with `grpc_client_ca`: gRPC callers without a client
//!   certificate, or with one from another CA, are refused; one with a
//!   certificate signed by the CA pushes. HTTPS asks for no certificate.

use gpush_edge::EdgeConfig;
use gpush_ingress::IngressConfig;
use gpush_integration_tests::deploy::edge_test_config;
use gpush_integration_tests::frames::{self, close};
use gpush_integration_tests::procs::scratch_dir;
use gpush_integration_tests::{EdgeHandle, IngressHandle, NatsServer, PushApi, TIMEOUT, WsClient};
use gpush_proto::v1::PushRequest;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::time::timeout;
use tokio_tungstenite::Connector;

/// A certificate and its private key, as PEM.
struct Pem {
    cert: String,
    key: String,
}

impl Pem {
    /// Writes both into `dir` as `<name>.crt` and `<name>.key`.
    fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert).expect("write certificate");
        std::fs::write(&key, &self.key).expect("write key");
        (cert, key)
    }
}

/// The test's certificates, and the server's and the CA's as files.
struct Pki {
    /// The CA everything trusts.
    ca: String,
    /// `ca` as a file (a client CA bundle).
    ca_file: PathBuf,
    /// A CA nothing trusts.
    other_ca: String,
    /// `localhost` and `127.0.0.1`, signed by `ca`.
    server_cert: PathBuf,
    server_key: PathBuf,
    /// A client certificate signed by `ca`.
    client: Pem,
    /// A client certificate signed by `other_ca`.
    stranger: Pem,
}

fn pem_cert(cert: &rcgen::Certificate) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", cert.der().to_vec()))
}

/// A self-signed CA certificate (PEM) and the issuer that signs with it.
fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("CA certificate");
    (pem_cert(&cert), Issuer::new(params, key))
}

/// A certificate for `names` (DNS names or IP addresses) with `usage`,
/// signed by `issuer`.
fn leaf(issuer: &Issuer<'static, KeyPair>, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Pem {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names.clone()).expect("leaf params");
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].as_str());
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("sign leaf");
    Pem {
        cert: pem_cert(&cert),
        key: pem::encode(&pem::Pem::new("PRIVATE KEY", key.serialize_der())),
    }
}

impl Pki {
    fn generate(label: &str) -> Self {
        let dir = scratch_dir(label);
        let (ca_pem, issuer) = ca("gpush test CA");
        let (other_ca, other_issuer) = ca("gpush untrusted CA");
        let server = leaf(
            &issuer,
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (server_cert, server_key) = server.write(&dir, "server");
        let ca_file = dir.join("ca.crt");
        std::fs::write(&ca_file, &ca_pem).expect("write CA");
        Self {
            client: leaf(
                &issuer,
                &["client.gpush.test"],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
            stranger: leaf(
                &other_issuer,
                &["stranger.gpush.test"],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
            ca: ca_pem,
            ca_file,
            other_ca,
            server_cert,
            server_key,
        }
    }

    /// An HTTP client that trusts only the CA in `ca_pem`.
    fn https_client(ca_pem: &str) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA certificate");
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .build()
            .expect("HTTPS client")
    }

    /// A rustls client config that trusts only the CA in `ca_pem`.
    fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("trust anchor");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

fn push(topic: &str, data: &[u8]) -> PushRequest {
    PushRequest {
        uid: String::new(),
        topic: topic.to_owned(),
        data: data.to_vec().into(),
    }
}

/// A standalone edge with TLS and a client of its push API that trusts the
/// test CA.
async fn tls_edge(pki: &Pki) -> (EdgeHandle, PushApi) {
    let config = EdgeConfig {
        standalone: true,
        nats: gpush_common::config::sections::NatsConfig::with_urls(Vec::new()),
        tls: gpush_common::config::sections::TlsConfig {
            tls_cert: Some(pki.server_cert.clone()),
            tls_key: Some(pki.server_key.clone()),
        },
        ..edge_test_config()
    };
    let edge = EdgeHandle::start(config).await;
    let api = PushApi::new_tls(&edge.http_base(), &edge.grpc_url(), &pki.ca, None);
    (edge, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_serves_websockets_and_http_over_tls() {
    let pki = Pki::generate("tls-edge");
    let (edge, api) = tls_edge(&pki).await;
    let url = edge.ws_url();
    assert!(url.starts_with("wss://"), "{url}");
    assert!(api.http_base().starts_with("https://"));

    let trusted = Pki::client_config(&pki.ca);
    let mut client = WsClient::connect_tls(&url, trusted.clone()).await;
    client.must_subscribe("news").await;
    api.push_http("", "news", br#"{"price":42}"#).await;
    client
        .expect_push(&frames::public("news", br#"{"price":42}"#))
        .await;
    api.push_grpc("", "news", b"over gRPC").await;
    client
        .expect_push(&frames::public("news", b"over gRPC"))
        .await;

    // The edge's other routes are HTTPS.
    let https = Pki::https_client(&pki.ca);
    let base = edge.page_url();
    assert!(base.starts_with("https://"), "{base}");
    for path in ["", "gpush.js", "healthz", "readyz", "metrics"] {
        let page = format!("{base}{path}");
        let response = timeout(TIMEOUT, https.get(&page).send())
            .await
            .unwrap_or_else(|_| panic!("GET {page} timed out"))
            .unwrap_or_else(|e| panic!("GET {page}: {e}"));
        assert_eq!(response.status(), 200, "GET {page}");
    }

    // Plain WebSocket on the TLS port: refused, not left hanging.
    let plain = format!("ws://{}/ws", edge.ws_addr());
    let refused = timeout(TIMEOUT, tokio_tungstenite::connect_async(plain.as_str()))
        .await
        .expect("a plain ws:// connection to the TLS port must fail, not hang");
    assert!(refused.is_err(), "plain ws:// on the TLS port was accepted");

    // A client that does not trust the edge's CA.
    let untrusted = Connector::Rustls(Pki::client_config(&pki.other_ca));
    let refused = timeout(
        TIMEOUT,
        tokio_tungstenite::connect_async_tls_with_config(
            url.as_str(),
            None,
            false,
            Some(untrusted),
        ),
    )
    .await
    .expect("an untrusting client must fail, not hang");
    let error = refused
        .expect_err("a client that does not trust the CA connected")
        .to_string();
    assert!(
        error.to_ascii_lowercase().contains("certificate"),
        "the failure should be about the certificate: {error}"
    );

    // The edge kept serving: the first client, and a new one.
    let mut second = WsClient::connect_tls(&url, trusted).await;
    second.must_subscribe("news").await;
    api.push_http("", "news", b"still here").await;
    client
        .expect_push(&frames::public("news", b"still here"))
        .await;
    second
        .expect_push(&frames::public("news", b"still here"))
        .await;

    second.close().await;

    // A drain reaches TLS clients too.
    let shutdown = tokio::spawn(edge.shutdown());
    let closed = client.next_close(TIMEOUT).await;
    assert_eq!(
        closed.map(|c| u16::from(c.code)),
        Some(close::GOING_AWAY),
        "a TLS client should get 1001 on shutdown"
    );
    shutdown
        .await
        .expect("shutdown task")
        .expect("edge stopped cleanly");
}

/// NATS and an ingress on it with TLS; `tweak` adjusts the config.
async fn tls_ingress(
    pki: &Pki,
    tweak: impl FnOnce(&mut IngressConfig),
) -> (NatsServer, IngressHandle) {
    let nats = NatsServer::start().await;
    let mut config = IngressConfig {
        nats: gpush_common::config::sections::NatsConfig::with_urls(vec![nats.url()]),
        tls: gpush_common::config::sections::TlsConfig {
            tls_cert: Some(pki.server_cert.clone()),
            tls_key: Some(pki.server_key.clone()),
        },
        ..IngressConfig::default()
    };
    tweak(&mut config);
    let ingress = IngressHandle::start(config).await;
    (nats, ingress)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_serves_https_and_grpc_over_tls() {
    let pki = Pki::generate("tls-ingress");
    let (_nats, ingress) = tls_ingress(&pki, |_| {}).await;
    assert!(ingress.http_base().starts_with("https://"));
    let api = PushApi::new_tls(&ingress.http_base(), &ingress.grpc_url(), &pki.ca, None);
    api.wait_for_status("/readyz", 200, TIMEOUT).await;
    api.push_http("", "news", b"over HTTPS").await;
    api.push_grpc("", "news", b"over gRPC with TLS").await;

    // Plain text on the TLS ports fails.
    let plain_http = ingress.http_base().replacen("https://", "http://", 1);
    let plain_grpc = ingress.grpc_url().replacen("https://", "http://", 1);
    let plain = PushApi::new(&plain_http, &plain_grpc);
    let reply = timeout(
        TIMEOUT,
        reqwest::Client::new()
            .get(format!("{plain_http}/healthz"))
            .send(),
    )
    .await
    .expect("plain HTTP on the HTTPS port must fail, not hang");
    assert!(reply.is_err(), "plain HTTP was answered on the HTTPS port");
    let status = plain
        .grpc()
        .push_data(push("news", b"plain"))
        .await
        .expect_err("plain gRPC was served on the TLS port");
    assert_ne!(status.code(), tonic::Code::Ok);

    // A client that trusts only another CA.
    let stranger = PushApi::new_tls(
        &ingress.http_base(),
        &ingress.grpc_url(),
        &pki.other_ca,
        None,
    );
    let status = stranger
        .grpc()
        .push_data(push("news", b"untrusted"))
        .await
        .expect_err("a client that does not trust the CA pushed");
    assert_ne!(status.code(), tonic::Code::Ok);

    // Ingress still serves after all that.
    api.push_grpc("", "news", b"still serving").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_client_certificates_are_required_with_grpc_client_ca() {
    let pki = Pki::generate("tls-mtls");
    let (_nats, ingress) = tls_ingress(&pki, |config| {
        config.grpc_client_ca = Some(pki.ca_file.clone());
    })
    .await;
    let (http, grpc) = (ingress.http_base(), ingress.grpc_url());

    // HTTPS asks for no client certificate.
    let anonymous = PushApi::new_tls(&http, &grpc, &pki.ca, None);
    anonymous.wait_for_status("/readyz", 200, TIMEOUT).await;
    anonymous
        .push_http("", "news", b"no certificate needed")
        .await;

    let refused = anonymous
        .grpc()
        .push_data(push("news", b"anonymous"))
        .await
        .expect_err("a gRPC caller without a client certificate pushed");
    assert_ne!(refused.code(), tonic::Code::Ok);

    let stranger = PushApi::new_tls(
        &http,
        &grpc,
        &pki.ca,
        Some((&pki.stranger.cert, &pki.stranger.key)),
    );
    let refused = stranger
        .grpc()
        .push_data(push("news", b"stranger"))
        .await
        .expect_err("a gRPC caller with another CA's certificate pushed");
    assert_ne!(refused.code(), tonic::Code::Ok);

    let client = PushApi::new_tls(
        &http,
        &grpc,
        &pki.ca,
        Some((&pki.client.cert, &pki.client.key)),
    );
    let reply = client
        .grpc()
        .push_data(push("news", b"with a certificate"))
        .await
        .expect("a gRPC caller with a certificate signed by the CA must push");
    assert_eq!(reply.into_inner().accepted, 1);
    // The refused callers did not take the server down.
    client.push_grpc("", "news", b"again").await;
}
