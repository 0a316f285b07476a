//! The error type that crosses body and service boundaries, and how its
//! chain of causes is walked and written.

use http::StatusCode;

/// Any error a body or a connection can carry across a boundary.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// NGINX's status for a client that closed the connection before the response.
pub(crate) const STATUS_CLIENT_CLOSED: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// An error and its sources, outermost first.
pub(crate) fn causes<'e>(
    err: &'e (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'e (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |e| e.source())
}

/// An error with its causes, outermost first: "a: b: c".
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    for cause in causes(err) {
        let cause_text = cause.to_string();
        if text.is_empty() {
            text = cause_text;
        } else if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
    }
    text
}
