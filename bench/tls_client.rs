//! bench/tls_client.rs: the TLS client config of the bench clients
//! (`bench/handshakes.rs`, `bench/crowd.rs --tls`), included by `#[path]`.
//!
//! Every handshake it makes is a full one: no session tickets, no session
//! ids (`Resumption::disabled`), so what is measured is the server's cost
//! of a new client (a key exchange and a signature). It does not verify the
//! server's certificate or its handshake signature: the bench servers use
//! throwaway self-signed certificates, and the client's own work stays the
//! same, and small, whichever server it measures. Key exchange by X25519,
//! as OpenSSL's clients offer first.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

/// Accepts any certificate and any handshake signature (see the module doc).
#[derive(Debug)]
struct AcceptAnything(Vec<SignatureScheme>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

/// A client config for full handshakes over TLS 1.2 only (`tls12`) or TLS
/// 1.3 only, offering `alpn` (e.g. `http/1.1`).
pub fn full_handshakes(tls12: bool, alpn: &[u8]) -> anyhow::Result<Arc<ClientConfig>> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    // P-256 is offered too (second, so no key share is made for it): over
    // TLS 1.2 OpenSSL only uses an ECDSA certificate whose curve the client
    // lists among its groups.
    provider.kx_groups = vec![
        rustls::crypto::aws_lc_rs::kx_group::X25519,
        rustls::crypto::aws_lc_rs::kx_group::SECP256R1,
    ];
    let schemes = provider
        .signature_verification_algorithms
        .supported_schemes();
    let version = if tls12 {
        &rustls::version::TLS12
    } else {
        &rustls::version::TLS13
    };
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(schemes)))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}
