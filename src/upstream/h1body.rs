//! The body of a response on a plain HTTP/1.1 connection, read straight
//! from that connection as the relay asks for it (no connection task, no
//! channel between them).
//!
//! Invariant: the connection goes back to its pool only when the body was
//! read to its end, the response allowed reuse and nothing unasked follows
//! it; a body dropped half-read, broken off or malformed closes it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;

use super::h1conn::Connection;
use super::h1pool::{H1Pool, Handoff};
use crate::http::h1::{BodyError, Decoded, Decoder, Fields};

/// Why a response body broke off.
#[derive(Debug, thiserror::Error)]
pub enum H1BodyError {
    #[error("reading the response body failed")]
    Io(#[source] std::io::Error),
    #[error("malformed response body")]
    Framing(#[source] BodyError),
}

/// A response body read from its connection.
pub struct H1Body {
    /// Until the body ends (or the protocol is switched).
    conn: Option<Connection>,
    decoder: Decoder,
    /// The response allows another request on the connection.
    keep_alive: bool,
    /// Where the connection goes once the body is done.
    home: Option<(Arc<H1Pool>, Arc<Handoff>)>,
    /// The response head's fields as they arrived, until the relay takes
    /// them (carried here, beside the response, not in its extensions:
    /// their first insert allocates a map per response).
    fields: Option<Fields>,
}

impl H1Body {
    pub(super) fn new(
        conn: Connection,
        decoder: Decoder,
        keep_alive: bool,
        home: (Arc<H1Pool>, Arc<Handoff>),
        fields: Fields,
    ) -> H1Body {
        H1Body {
            conn: Some(conn),
            decoder,
            keep_alive,
            home: Some(home),
            fields: Some(fields),
        }
    }

    /// The response head's fields as they arrived (`None` once taken).
    pub fn take_fields(&mut self) -> Option<Fields> {
        self.fields.take()
    }

    /// The connection after a 101: its stream and the bytes the backend
    /// already sent in the new protocol. `None` if taken already.
    pub fn take_upgraded(&mut self) -> Option<(TcpStream, Bytes)> {
        self.home = None;
        self.conn.take().map(Connection::into_parts)
    }

    /// The body has ended: the connection goes home if it may carry another
    /// request, else it is closed.
    fn release(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let home = self.home.take();
        if self.keep_alive
            && self.decoder.is_done()
            && conn.read.is_empty()
            && let Some((pool, handoff)) = home
        {
            pool.body_ended(handoff, conn);
        }
    }

    /// Breaks the body off: the connection is closed.
    fn fail(&mut self, err: H1BodyError) -> Poll<Option<Result<Frame<Bytes>, H1BodyError>>> {
        self.conn = None;
        self.home = None;
        Poll::Ready(Some(Err(err)))
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = H1BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1BodyError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.decode(&mut conn.read) {
                Ok(Decoded::Data(data)) => {
                    if this.decoder.is_done() {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Trailers(trailers)) => {
                    // What follows trailers is the end.
                    if let Ok(Decoded::End) = this.decoder.decode(&mut conn.read) {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Decoded::End) => {
                    this.release();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(err) => return this.fail(H1BodyError::Framing(err)),
            }
            match conn.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(err)) => return this.fail(H1BodyError::Io(err)),
                Poll::Ready(Ok(0)) => match this.decoder.eof() {
                    // Read to the close: nothing left to reuse.
                    Ok(_) => {
                        this.keep_alive = false;
                        this.release();
                        return Poll::Ready(None);
                    }
                    Err(err) => return this.fail(H1BodyError::Framing(err)),
                },
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.exact_remaining() {
            Some(len) if self.conn.is_some() => SizeHint::with_exact(len),
            Some(_) => SizeHint::with_exact(0),
            None => SizeHint::default(),
        }
    }
}

impl Drop for H1Body {
    fn drop(&mut self) {
        // A body with nothing to read (HEAD, 204, 304, a length of 0) is
        // done without being polled.
        if self.decoder.is_done() {
            self.release();
        }
    }
}
