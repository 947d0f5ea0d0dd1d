//! TLS server settings from PEM files, shared by the edge (`wss://` and
//! HTTPS) and ingress (HTTPS and gRPC over TLS, optionally with client
//! certificates).
//!
//! Everything is rustls with the `ring` provider, named explicitly, so no
//! process-wide default provider is needed. PEM files are read with
//! `rustls-pki-types` (re-exported by rustls); a file that cannot be read
//! or holds nothing usable is an error naming the file, reported by config
//! validation ([`check_identity`], [`check_client_ca`]) before anything
//! binds, and again by [`server_config`] if the file changed meanwhile.

use crate::config::Problems;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use rustls::ServerConfig;

/// How long a client has to complete the TLS handshake after connecting.
/// Handshakes run in per-connection tasks, so a slow one holds only itself.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// ALPN protocol id of HTTP/1.1: the edge (WebSocket upgrades) and the HTTP
/// push API.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// ALPN protocol id of HTTP/2: the gRPC push API.
pub const ALPN_H2: &[u8] = b"h2";

/// A TLS setting that cannot be used, naming the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate file could not be read or is not PEM.
    #[error("cannot read certificates from {path}: {source}")]
    Certs {
        /// The certificate file.
        path: PathBuf,
        /// What the PEM reader said.
        source: pem::Error,
    },
    /// A certificate file holds no `CERTIFICATE` section.
    #[error("no PEM certificate in {path}")]
    NoCerts {
        /// The certificate file.
        path: PathBuf,
    },
    /// A key file could not be read, is not PEM or holds no private key.
    #[error("cannot read a private key from {path}: {source}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why (`no items found`: no PKCS#8, PKCS#1 or SEC1 key in it).
        source: pem::Error,
    },
    /// The certificate and key do not make a server identity (the key
    /// does not match the certificate, or an unsupported key type).
    #[error("certificate {cert} with key {key}: {source}")]
    Identity {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why, as rustls says it.
        source: rustls::Error,
    },
    /// A CA bundle for client certificates holds a certificate that is not
    /// a usable trust anchor.
    #[error("client CA bundle {path}: {reason}")]
    ClientCa {
        /// The CA bundle file.
        path: PathBuf,
        /// What rustls said of the bundle.
        reason: String,
    },
}

/// The crypto provider of every TLS config gpush builds: ring, as the rest
/// of the dependency tree (reqwest, async-nats) uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in the PEM file `path`, in order (leaf first for a
/// chain). At least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Certs {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCerts {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in the PEM file `path`.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Key {
        path: path.to_owned(),
        source,
    })
}

/// The trust anchors of a client CA bundle.
fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::ClientCa {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// A rustls server config presenting the chain in `cert` with the key in
/// `key`, offering the ALPN protocols `alpn` (most preferred first). With
/// `client_ca`, clients must present a certificate that chains to one of
/// the CAs in that PEM bundle (mutual TLS); without, none is asked for.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_certs(cert)?;
    let private_key = load_key(key)?;
    let identity = |source| TlsError::Identity {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    };
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(identity)?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(path)?), provider)
                    .build()
                    .map_err(|e| TlsError::ClientCa {
                        path: path.to_owned(),
                        reason: e.to_string(),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, private_key)
        .map_err(identity)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Checks a `tls_cert` / `tls_key` pair of settings: both or neither, and
/// when both, files that make a server identity. Problems name the keys
/// (`{section}tls_cert`) and the files.
pub fn check_identity(
    section: &str,
    cert: Option<&Path>,
    key: Option<&Path>,
    problems: &mut Problems,
) {
    match (cert, key) {
        (None, None) => {}
        (Some(_), None) => problems.push(format!(
            "{section}tls_cert is set but {section}tls_key is not: TLS needs both"
        )),
        (None, Some(_)) => problems.push(format!(
            "{section}tls_key is set but {section}tls_cert is not: TLS needs both"
        )),
        (Some(cert), Some(key)) => {
            if let Err(e) = server_config(cert, key, None, &[]) {
                problems.push(format!("{section}tls_cert/{section}tls_key: {e}"));
            }
        }
    }
}

/// Checks a client CA bundle setting (`key` names it): PEM certificates
/// that are usable trust anchors.
pub fn check_client_ca(key: &str, path: &Path, problems: &mut Problems) {
    if let Err(e) = load_roots(path) {
        problems.push(format!("{key}: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory of this test process, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("gpush-common-tls-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("scratch dir");
            Self(dir)
        }

        fn write(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).expect("write");
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A self-signed certificate for `localhost` and its key, as PEM.
    fn self_signed() -> (String, String) {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
        (
            ::pem::encode(&::pem::Pem::new("CERTIFICATE", cert.der().to_vec())),
            ::pem::encode(&::pem::Pem::new("PRIVATE KEY", signing_key.serialize_der())),
        )
    }

    #[test]
    fn a_generated_pair_makes_a_server_config() {
        let dir = Scratch::new("pair");
        let (cert, key) = self_signed();
        let cert = dir.write("cert.pem", &cert);
        let key = dir.write("key.pem", &key);
        let config = server_config(&cert, &key, None, &[ALPN_HTTP1]).expect("config");
        assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
        // The same file as a client CA bundle: a self-signed cert is its own CA.
        server_config(&cert, &key, Some(&cert), &[ALPN_H2]).expect("mTLS config");
        let mut problems = Problems::default();
        check_identity("", Some(&cert), Some(&key), &mut problems);
        check_client_ca("grpc_client_ca", &cert, &mut problems);
        assert!(problems.finish().is_ok());
    }

    #[test]
    fn bad_files_are_errors_naming_them() {
        let dir = Scratch::new("bad");
        let (cert, key) = self_signed();
        let (other_cert, _) = self_signed();
        let cert = dir.write("cert.pem", &cert);
        let key = dir.write("key.pem", &key);
        let other_cert = dir.write("other.pem", &other_cert);
        let garbage = dir.write("garbage.pem", "not a PEM file\n");
        let missing = dir.0.join("missing.pem");

        let message = |r: Result<Arc<ServerConfig>, TlsError>| r.expect_err("error").to_string();
        let text = message(server_config(&missing, &key, None, &[]));
        assert!(text.contains("missing.pem"), "{text}");
        let text = message(server_config(&garbage, &key, None, &[]));
        assert!(text.contains("no PEM certificate in") && text.contains("garbage.pem"));
        let text = message(server_config(&cert, &garbage, None, &[]));
        assert!(text.contains("garbage.pem"), "{text}");
        // A certificate file is not a key file.
        let text = message(server_config(&cert, &cert, None, &[]));
        assert!(text.contains("private key from") && text.contains("cert.pem"));
        // The key of another certificate.
        let text = message(server_config(&other_cert, &key, None, &[]));
        assert!(
            text.contains("other.pem") && text.contains("key.pem"),
            "{text}"
        );
        let text = message(server_config(&cert, &key, Some(&garbage), &[]));
        assert!(text.contains("garbage.pem"), "{text}");

        let mut problems = Problems::default();
        check_identity("", Some(&cert), None, &mut problems);
        check_identity("x.", None, Some(&key), &mut problems);
        check_identity("", Some(&missing), Some(&key), &mut problems);
        check_client_ca("grpc_client_ca", &missing, &mut problems);
        let text = problems.finish().expect_err("problems").to_string();
        for needle in [
            "tls_cert is set but tls_key is not",
            "x.tls_key is set but x.tls_cert is not",
            "tls_cert/tls_key: cannot read certificates from",
            "grpc_client_ca: cannot read certificates from",
        ] {
            assert!(text.contains(needle), "{needle:?} not in {text}");
        }
        assert_eq!(text.matches("missing.pem").count(), 2, "{text}");
    }
}
