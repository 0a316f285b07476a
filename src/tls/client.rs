//! The rustls config for TLS from sluice to an upstream's targets.

use rustls::{ClientConfig, RootCertStore};

use super::files::{TlsError, read_certificates};
use super::{ALPN_H2, ALPN_HTTP11, provider};
use crate::config::UpstreamTls;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testing::{dir, self_signed, write};

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
}
