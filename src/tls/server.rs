//! The rustls config for terminating TLS on the proxy listener, and the
//! state that lets a returning client resume its session instead of paying
//! for a full handshake (a signature and a key exchange).
//!
//! Invariant: one [`Resumption`] serves every generation whose settings
//! match, so session tickets and cached sessions stay valid across reloads;
//! every worker shares it through the one `ServerConfig`.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::{
    NoServerSessionStorage, ProducesTickets, ServerSessionMemoryCache, StoresServerSessions,
};

use super::files::{TlsError, read_certificates, read_key};
use super::{ALPN_H2, ALPN_HTTP11, provider};
use crate::config::ServerTls;

/// Session resumption on the proxy listener: the session-ticket keys
/// (`session_tickets`) and the cache of sessions resumed by id
/// (`session_cache`).
#[derive(Clone)]
pub struct Resumption {
    tickets: bool,
    cache_size: usize,
    /// Encrypts tickets with a key it replaces every 6 hours (rustls's
    /// rotation); a ticket stays valid for two rotations at most.
    ticketer: Option<Arc<dyn ProducesTickets>>,
    cache: Arc<dyn StoresServerSessions>,
}

impl std::fmt::Debug for Resumption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resumption")
            .field("tickets", &self.tickets)
            .field("cache_size", &self.cache_size)
            .finish_non_exhaustive()
    }
}

impl Resumption {
    /// `previous` if it has `tls`'s settings (so its keys and sessions carry
    /// over), else fresh keys and an empty cache.
    pub fn carried_over(
        tls: &ServerTls,
        previous: Option<&Resumption>,
    ) -> Result<Resumption, TlsError> {
        if let Some(previous) = previous
            && previous.tickets == tls.session_tickets
            && previous.cache_size == tls.session_cache
        {
            return Ok(previous.clone());
        }
        let ticketer = if tls.session_tickets {
            Some(rustls::crypto::aws_lc_rs::Ticketer::new().map_err(TlsError::Setup)?)
        } else {
            None
        };
        let cache: Arc<dyn StoresServerSessions> = if tls.session_cache == 0 {
            Arc::new(NoServerSessionStorage {})
        } else {
            ServerSessionMemoryCache::new(tls.session_cache)
        };
        Ok(Resumption {
            tickets: tls.session_tickets,
            cache_size: tls.session_cache,
            ticketer,
            cache,
        })
    }
}

/// The rustls config for terminating TLS with `tls.cert` and `tls.key`
/// (TLS 1.3 and 1.2), offering HTTP/2 then HTTP/1.1 by ALPN, resuming
/// sessions with `resumption`. The key is parsed into its signing form
/// here, once per generation, not per handshake.
pub fn server_config(
    tls: &ServerTls,
    resumption: &Resumption,
) -> Result<Arc<ServerConfig>, TlsError> {
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
    config.session_storage = resumption.cache.clone();
    if let Some(ticketer) = &resumption.ticketer {
        config.ticketer = ticketer.clone();
    }
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::tls::testing::{dir, self_signed, write};

    fn server_config(tls: &ServerTls) -> Result<Arc<ServerConfig>, TlsError> {
        let resumption = Resumption::carried_over(tls, None)?;
        super::server_config(tls, &resumption)
    }

    #[test]
    fn resumption_carries_over_while_its_settings_stay() {
        let tls = ServerTls::new(PathBuf::from("c.pem"), PathBuf::from("k.pem"));
        let first = Resumption::carried_over(&tls, None).expect("resumption");
        assert!(first.ticketer.as_ref().is_some_and(|t| t.enabled()));
        let same = Resumption::carried_over(&tls, Some(&first)).expect("same");
        let (a, b) = (
            first.ticketer.as_ref().expect("ticketer"),
            same.ticketer.as_ref().expect("ticketer"),
        );
        assert!(
            Arc::ptr_eq(a, b),
            "a reload with the same settings kept the keys"
        );
        let off = ServerTls {
            session_tickets: false,
            ..tls.clone()
        };
        let off = Resumption::carried_over(&off, Some(&first)).expect("off");
        assert!(off.ticketer.is_none());
    }

    #[test]
    fn server_config_loads_cert_and_key_and_sets_alpn() {
        let dir = dir("server");
        let (cert, key) = self_signed();
        let tls = ServerTls::new(write(&dir, "cert.pem", &cert), write(&dir, "key.pem", &key));
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
            ServerTls::new(dir.join("missing-cert.pem"), key_path.clone()),
            "missing-cert.pem",
            "cannot read certificate",
        );
        check(
            ServerTls::new(cert_path.clone(), dir.join("missing-key.pem")),
            "missing-key.pem",
            "cannot read private key",
        );
        check(
            ServerTls::new(key_path.clone(), key_path.clone()),
            "key.pem",
            "no certificate",
        );
        check(
            ServerTls::new(cert_path.clone(), cert_path.clone()),
            "cert.pem",
            "no private key",
        );
        check(
            ServerTls::new(cert_path.clone(), write(&dir, "other-key.pem", &other_key)),
            "other-key.pem",
            "does not match",
        );
        check(
            ServerTls::new(
                write(&dir, "broken.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n"),
                key_path,
            ),
            "broken.pem",
            "not a valid PEM",
        );
    }
}
