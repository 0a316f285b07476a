//! How a request to an upstream failed, classified once: connect failures
//! and resets are 502, no response head within `timeout` is 504, and a
//! failure of the client's own body is told apart from the target's.
//!
//! Invariant: every failure maps to exactly one [`UpstreamErrorKind`] and
//! one status, here and nowhere else in the upstream.

use std::time::Duration;

use http::uri::Authority;

use super::metrics::UpstreamErrorKind;
use crate::http::BoxError;
use crate::http::request_body::ClientBodyError;

/// Why a request could not be relayed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: Authority,
        #[source]
        source: BoxError,
    },
    #[error("no response from {target} within {timeout:?}")]
    Timeout {
        target: Authority,
        timeout: Duration,
    },
    #[error("request to {target} failed: {source}")]
    Other {
        target: Authority,
        #[source]
        source: BoxError,
    },
    #[error("no healthy target with room in upstream {upstream}")]
    NoTarget { upstream: String },
    /// The client's doing, not the target's: its request body failed (or
    /// was still being sent when the timeout passed).
    #[error("client request body: {0}")]
    ClientBody(#[from] ClientBodyError),
}

impl UpstreamError {
    pub fn kind(&self) -> UpstreamErrorKind {
        match self {
            UpstreamError::Connect { .. } | UpstreamError::NoTarget { .. } => {
                UpstreamErrorKind::Connect
            }
            UpstreamError::Timeout { .. } => UpstreamErrorKind::Timeout,
            UpstreamError::Other { .. } | UpstreamError::ClientBody(_) => UpstreamErrorKind::Other,
        }
    }

    /// 504 for a timeout, 502 for everything else.
    pub fn status(&self) -> http::StatusCode {
        match self {
            UpstreamError::Timeout { .. } => http::StatusCode::GATEWAY_TIMEOUT,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }
}

/// Whether a connect failed for want of a resource on this machine (file
/// descriptors: EMFILE, ENFILE; buffers: ENOBUFS; memory: ENOMEM).
pub(super) fn is_local_shortage(error: &UpstreamError) -> bool {
    const SHORTAGES: [i32; 4] = [24, 23, 105, 12];
    let UpstreamError::Connect { source, .. } = error else {
        return false;
    };
    crate::http::causes(source.as_ref()).any(|err| {
        err.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|code| SHORTAGES.contains(&code))
    })
}
