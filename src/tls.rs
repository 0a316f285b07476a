//! TLS: the rustls configs for terminating TLS on the proxy listener
//! (`[server.tls]`) and for speaking TLS to upstream targets
//! (`[upstreams.NAME.tls]`), built from PEM files with the `ring` provider.
//! Files are read whenever a config generation is built (at start and on each
//! reload), so a rotated certificate takes effect on reload, and every error
//! names the file and what is wrong with it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ServerTls, UpstreamTls};

/// Request extension set by the server on requests that arrived over TLS, so
/// the proxy can say `X-Forwarded-Proto: https` (its absence means "http").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Secure;

/// ALPN protocol ids.
pub(crate) const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// A TLS config that could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file is missing or unreadable.
    #[error("{path}: cannot read {what}: {source}")]
    Read {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid PEM.
    #[error("{path}: not a valid PEM {what} file: {source}")]
    Pem {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: pem::Error,
    },
    #[error("{path}: no certificate in it (expected PEM `BEGIN CERTIFICATE` blocks)")]
    NoCertificate { path: PathBuf },
    #[error(
        "{path}: no private key in it (expected a PEM `BEGIN PRIVATE KEY`, `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY` block)"
    )]
    NoKey { path: PathBuf },
    #[error("{key}: the private key does not match the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// The key is of a type rustls cannot sign with, or the certificate cannot be parsed.
    #[error("{cert} / {key}: unusable certificate or key: {source}")]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{path}: unusable CA certificate: {source}")]
    BadCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// Not expected with the `ring` provider's defaults; kept so nothing panics.
    #[error("TLS setup failed: {0}")]
    Setup(#[source] rustls::Error),
}

/// The rustls config for terminating TLS with `tls.cert` and `tls.key`,
/// offering HTTP/2 then HTTP/1.1 by ALPN.
pub fn server_config(tls: &ServerTls) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_certificates(&tls.cert, "certificate")?;
    let key = read_key(&tls.key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|source| match source {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                TlsError::KeyMismatch {
                    cert: tls.cert.clone(),
                    key: tls.key.clone(),
                }
            }
            source => TlsError::Unusable {
                cert: tls.cert.clone(),
                key: tls.key.clone(),
                source,
            },
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// The rustls config for TLS to an upstream: trusting the certificates in
/// `tls.ca` if given, else Mozilla's web PKI roots; offering HTTP/2 (when
/// `http2`) and HTTP/1.1 by ALPN. SNI and the verified name are the caller's.
pub fn client_config(tls: &UpstreamTls, http2: bool) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    match &tls.ca {
        Some(path) => {
            for cert in read_certificates(path, "CA certificate")? {
                roots.add(cert).map_err(|source| TlsError::BadCa {
                    path: path.clone(),
                    source,
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = if http2 {
        vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()]
    } else {
        vec![ALPN_HTTP11.to_vec()]
    };
    Ok(config)
}

/// The `ring` provider, passed explicitly so no process-wide default is needed.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        what,
        source,
    })
}

/// Every certificate in a PEM file, in file order; at least one.
fn read_certificates(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            what,
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path, "private key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_path_buf(),
        },
        source => TlsError::Pem {
            path: path.to_path_buf(),
            what: "private key",
            source,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use rcgen::{CertificateParams, KeyPair};

    /// A fresh directory under the system temp dir for one test's files.
    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir()
            .join(format!("sluice-tls-unit-{}", std::process::id()))
            .join(name);
        std::fs::create_dir_all(&dir).expect("create test dir");
        dir
    }

    /// A self-signed certificate for localhost and its key, as PEM.
    fn self_signed() -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn client_config_loads_the_ca_file_and_sets_alpn() {
        let dir = dir("client");
        let (cert, _) = self_signed();
        let ca = write(&dir, "ca.pem", &cert);
        let tls = UpstreamTls {
            ca: Some(ca),
            server_name: None,
        };
        let h2 = client_config(&tls, true).expect("client config");
        assert_eq!(
            h2.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        let h1 = client_config(&tls, false).expect("client config");
        assert_eq!(h1.alpn_protocols, vec![b"http/1.1".to_vec()]);
        // Without a CA file the web PKI roots are used.
        let web = UpstreamTls {
            ca: None,
            server_name: None,
        };
        assert!(client_config(&web, false).is_ok());
    }

    #[test]
    fn client_config_names_a_bad_ca_file() {
        let dir = dir("client-bad");
        let missing = UpstreamTls {
            ca: Some(dir.join("nope.pem")),
            server_name: None,
        };
        let err = client_config(&missing, false).expect_err("missing");
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
        assert!(err.to_string().contains("nope.pem"), "{err}");
        let empty = UpstreamTls {
            ca: Some(write(&dir, "empty.pem", "just text\n")),
            server_name: None,
        };
        let err = client_config(&empty, false).expect_err("empty");
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains("empty.pem"), "{err}");
    }

    #[test]
    fn server_config_loads_cert_and_key_and_sets_alpn() {
        let dir = dir("server");
        let (cert, key) = self_signed();
        let tls = ServerTls {
            cert: write(&dir, "cert.pem", &cert),
            key: write(&dir, "key.pem", &key),
        };
        let config = server_config(&tls).expect("server config");
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn server_config_errors_name_the_file_and_the_problem() {
        let dir = dir("server-bad");
        let (cert, key) = self_signed();
        let (_, other_key) = self_signed();
        let cert_path = write(&dir, "cert.pem", &cert);
        let key_path = write(&dir, "key.pem", &key);
        let check = |tls: ServerTls, file: &str, problem: &str| {
            let err = server_config(&tls).expect_err("must fail").to_string();
            assert!(err.contains(file), "{err}");
            assert!(err.contains(problem), "{err}");
        };
        check(
            ServerTls {
                cert: dir.join("missing-cert.pem"),
                key: key_path.clone(),
            },
            "missing-cert.pem",
            "cannot read certificate",
        );
        check(
            ServerTls {
                cert: cert_path.clone(),
                key: dir.join("missing-key.pem"),
            },
            "missing-key.pem",
            "cannot read private key",
        );
        check(
            ServerTls {
                cert: key_path.clone(),
                key: key_path.clone(),
            },
            "key.pem",
            "no certificate",
        );
        check(
            ServerTls {
                cert: cert_path.clone(),
                key: cert_path.clone(),
            },
            "cert.pem",
            "no private key",
        );
        check(
            ServerTls {
                cert: cert_path.clone(),
                key: write(&dir, "other-key.pem", &other_key),
            },
            "other-key.pem",
            "does not match",
        );
        check(
            ServerTls {
                cert: write(&dir, "broken.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n"),
                key: key_path,
            },
            "broken.pem",
            "not a valid PEM",
        );
    }
}
