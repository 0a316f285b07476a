//! TLS: terminating it on the proxy listener (`[server.tls]`) and speaking
//! it to upstream targets (`[upstreams.NAME.tls]`), with rustls and the
//! aws-lc-rs provider. Files are read whenever a config generation is built (at
//! start and on each reload), so a rotated certificate takes effect on
//! reload; session-ticket keys outlive reloads, so clients keep resuming.
//!
//! Contents: `files` (PEM reading and [`TlsError`]), `server` (the
//! listener's rustls config and its [`Resumption`] state), `handshake` (the
//! [`Terminator`]: a timed, counted handshake per accepted connection),
//! `client` (upstream TLS), `metrics` (the TLS families), `noise` (keeping
//! client-triggered warnings of rustls and h2 from flooding the log).

mod client;
mod files;
mod handshake;
mod metrics;
pub mod noise;
mod server;

pub use self::client::client_config;
pub use self::files::TlsError;
pub use self::handshake::Terminator;
pub use self::metrics::TlsFamilies;
pub use self::server::{Resumption, server_config};

/// ALPN protocol ids.
pub(crate) const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The crypto provider of every TLS config sluice builds, passed
/// explicitly so no process-wide default is needed.
///
/// The first call also draws a few random bytes: aws-lc seeds its
/// process-wide random generator from CPU jitter on first use, hundreds of
/// millions of instructions (bench/HTTPS.md). Configs are built at start
/// and on reload, so that cost is paid there, once per process, and not by
/// the first client's handshake.
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    static SEEDED: std::sync::Once = std::sync::Once::new();
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    SEEDED.call_once(|| {
        // A failure here is not ours to handle: the handshake that needs
        // randomness reports it.
        let _ = provider.secure_random.fill(&mut [0u8; 16]);
    });
    std::sync::Arc::new(provider)
}

/// Test helpers shared by the unit tests of this module's files.
#[cfg(test)]
mod testing {
    use std::path::{Path, PathBuf};

    use rcgen::{CertificateParams, KeyPair};

    /// A fresh directory under the system temp dir for one test's files,
    /// removed when the test drops it.
    pub(super) struct TestDir(PathBuf);

    impl std::ops::Deref for TestDir {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _gone = std::fs::remove_dir_all(&self.0);
        }
    }

    pub(super) fn dir(name: &str) -> TestDir {
        let dir =
            std::env::temp_dir().join(format!("sluice-tls-unit-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create test dir");
        TestDir(dir)
    }

    /// A self-signed certificate for localhost and its key, as PEM.
    pub(super) fn self_signed() -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    pub(super) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }
}
