//! The body of a client's request as it arrives, whichever protocol carried
//! it: HTTP/1 through sluice's own codec, HTTP/2 through hyper. Either way
//! its errors are already the client's ([`ClientBodyError`]), so everything
//! above reads one body type and one kind of failure.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::h1::incoming::IncomingBody;
use super::request_body::ClientBodyError;

/// A client's request body.
#[derive(Debug)]
pub enum ClientBody {
    /// No body.
    Empty,
    /// An HTTP/1 body that had fully arrived with its head.
    Whole(Option<Bytes>),
    /// An HTTP/1 body still arriving.
    H1(IncomingBody),
    /// An HTTP/2 stream's body.
    H2(Incoming),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::Whole(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ClientBody::H1(body) => Pin::new(body).poll_frame(cx),
            ClientBody::H2(incoming) => match Pin::new(incoming).poll_frame(cx) {
                Poll::Ready(Some(Err(err))) => {
                    let failure = client_failure(&err);
                    tracing::debug!(%err, ?failure, "request body failed");
                    Poll::Ready(Some(Err(failure)))
                }
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::Whole(data) => data.is_none(),
            ClientBody::H1(body) => body.is_end_stream(),
            ClientBody::H2(incoming) => incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::Whole(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ClientBody::H1(body) => body.size_hint(),
            ClientBody::H2(incoming) => incoming.size_hint(),
        }
    }
}

/// What an error reading an HTTP/2 client's body says about the client:
/// framing it got wrong (invalid data or input), or else the client went
/// away (reset the stream, broke the connection).
fn client_failure(err: &hyper::Error) -> ClientBodyError {
    let malformed = super::error::causes(err).any(|e| {
        e.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            )
        })
    });
    if malformed || err.is_parse() {
        ClientBodyError::Malformed
    } else {
        ClientBodyError::Gone
    }
}
