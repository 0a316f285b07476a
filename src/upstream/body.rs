//! The response body the gateway relays, whichever client fetched it, and
//! the backend's side of a switched protocol.
//!
//! Plain HTTP/1.1 targets are served by sluice's own codec ([`H1Body`]);
//! TLS and HTTP/2 targets by hyper's client ([`Incoming`]). After a 101 the
//! backend's side of the tunnel is the raw connection (with any bytes the
//! backend sent past its head) or hyper's upgraded stream.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::Response;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::h1body::H1Body;
use crate::http::BoxError;

/// A backend's response body.
#[expect(
    clippy::large_enum_variant,
    reason = "the HTTP/1.1 body is the common one: boxing it would allocate per response"
)]
pub enum UpstreamBody {
    /// From a plain HTTP/1.1 connection of the target's pool.
    H1(H1Body),
    /// From hyper's client (TLS, HTTP/2).
    Hyper(Incoming),
}

impl UpstreamBody {
    /// The fields of an HTTP/1 backend's response head as they arrived, if
    /// this body came with them (hyper's responses have a map instead).
    pub fn take_fields(&mut self) -> Option<crate::http::h1::Fields> {
        match self {
            UpstreamBody::H1(body) => body.take_fields(),
            UpstreamBody::Hyper(_) => None,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::H1(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(BoxError::from))),
            UpstreamBody::Hyper(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(BoxError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(body) => body.is_end_stream(),
            UpstreamBody::Hyper(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::H1(body) => body.size_hint(),
            UpstreamBody::Hyper(body) => body.size_hint(),
        }
    }
}

/// The backend's side of a 101: resolves to its stream once the switch is
/// complete (at once on the own-codec path).
pub fn upgrade(
    response: &mut Response<UpstreamBody>,
) -> impl Future<Output = Result<UpstreamIo, BoxError>> + Send + 'static {
    let taken = match response.body_mut() {
        UpstreamBody::H1(body) => Ok(body.take_upgraded()),
        UpstreamBody::Hyper(_) => Err(hyper::upgrade::on(response)),
    };
    async move {
        match taken {
            Ok(Some((io, read))) => Ok(UpstreamIo::Tcp { read, io }),
            Ok(None) => Err("the upstream connection was already taken".into()),
            Err(on) => Ok(UpstreamIo::Hyper(TokioIo::new(on.await?))),
        }
    }
}

/// The backend's stream after a switch of protocols.
pub enum UpstreamIo {
    /// The raw connection; `read`: bytes the backend sent past its 101,
    /// handed on first.
    Tcp {
        read: Bytes,
        io: TcpStream,
    },
    Hyper(TokioIo<hyper::upgrade::Upgraded>),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp { read, io } => {
                if !read.is_empty() {
                    let n = read.len().min(buf.remaining());
                    buf.put_slice(&read[..n]);
                    read.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Pin::new(io).poll_read(cx, buf)
            }
            UpstreamIo::Hyper(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tcp { io, .. } => Pin::new(io).poll_write(cx, buf),
            UpstreamIo::Hyper(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp { io, .. } => Pin::new(io).poll_flush(cx),
            UpstreamIo::Hyper(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp { io, .. } => Pin::new(io).poll_shutdown(cx),
            UpstreamIo::Hyper(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}
