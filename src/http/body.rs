//! The response body sluice serves, relayed or made here, and the short
//! local responses (refusals, admin answers) built from text.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

use super::error::BoxError;

/// The response body type sluice serves: relayed or local.
pub type Body = BoxBody<Bytes, BoxError>;

/// A response as the gateway answers it: and, beside it, the fields of an
/// HTTP/1 backend's head as they arrived (the response's map then holds
/// only those sluice added). Beside, not in the response's extensions,
/// whose first insert allocates a map: an HTTP/1 client's writer copies
/// them from their bytes, an HTTP/2 client's gets them in the map
/// ([`Fields::restore`](super::h1::Fields::restore)).
pub type Reply = (Response<Body>, Option<super::h1::Fields>);

/// A body of text made here.
pub fn text_body(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A local (not relayed) response with a short text body.
pub fn local(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(text_body(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A local response with a JSON body (one line, newline-terminated).
pub fn local_json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(text_body(value.to_string() + "\n"));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
