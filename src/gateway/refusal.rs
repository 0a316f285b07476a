//! Error to outcome and status: the one place a refused or failed request
//! gets its [`Outcome`] and its answer.
//!
//! Invariant: a failure of the client's request body (malformed, too large,
//! too slow, cut off) is the client's outcome, never the target's.

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::http::request_body::ClientBodyError;
use crate::http::{Body, STATUS_CLIENT_CLOSED, local};
use crate::outcome::Outcome;
use crate::upstream::UpstreamError;

/// The one place a failed request gets its outcome and answer. A failure of
/// the client's body is the client's: `400` malformed, `413` too large,
/// `408` too slow, and a client gone mid-body is cancelled (or forwarded, if
/// the backend may have seen part of it) with 499 in the log. Anything else
/// is the backend's: `upstream_error`, `502` or `504`.
pub(super) fn failure(err: &UpstreamError, reached: bool) -> (Outcome, Response<Body>) {
    match err {
        UpstreamError::ClientBody(fault) => body_failure(*fault, reached),
        _ => (
            Outcome::UpstreamError,
            local(err.status(), "upstream error\n"),
        ),
    }
}

/// The outcome and answer for a request whose body failed on the client's
/// side; `reached`: the request had been handed to a backend connection.
pub(super) fn body_failure(fault: ClientBodyError, reached: bool) -> (Outcome, Response<Body>) {
    let (outcome, status, text) = match fault {
        ClientBodyError::TooLarge => (
            Outcome::RejectedInvalid,
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large\n",
        ),
        ClientBodyError::Malformed => (
            Outcome::RejectedInvalid,
            StatusCode::BAD_REQUEST,
            "malformed request body\n",
        ),
        ClientBodyError::Timeout => (
            Outcome::RejectedInvalid,
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time\n",
        ),
        // Nobody is left to read an answer; the status is for the log.
        ClientBodyError::Gone => (
            if reached {
                Outcome::Forwarded
            } else {
                Outcome::Cancelled
            },
            STATUS_CLIENT_CLOSED,
            "request body incomplete\n",
        ),
    };
    let mut response = local(status, text);
    // The rest of the body is not worth reading: the connection ends.
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    (outcome, response)
}

/// A refusal with an optional Retry-After (whole seconds, rounded up, at least 1).
pub(super) fn refusal(
    status: StatusCode,
    text: &'static str,
    retry_after: Option<Duration>,
) -> Response<Body> {
    let mut response = local(status, text);
    if let Some(wait) = retry_after {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    response
}
