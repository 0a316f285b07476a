//! The streams an HTTP/1 connection is served over (plain TCP and TLS), and
//! how each waits for the client's next bytes without holding a buffer.
//!
//! Invariant: waiting for a request, or watching a waiting request's client
//! for its leaving, costs no read buffer; one is taken from the pool only
//! once there are bytes to read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::buffers;

/// A client connection's byte stream.
pub(crate) trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready when a read would find bytes or the end of the stream. A stream
    /// that cannot tell without reading (TLS) reads what it has into `buf`,
    /// taking a buffer from the pool only when there is something to keep.
    fn poll_wait_readable(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Option<BytesMut>,
    ) -> Poll<io::Result<()>>;
}

impl ClientStream for TcpStream {
    fn poll_wait_readable(
        &mut self,
        cx: &mut Context<'_>,
        _buf: &mut Option<BytesMut>,
    ) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

impl ClientStream for TlsStream<TcpStream> {
    fn poll_wait_readable(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Option<BytesMut>,
    ) -> Poll<io::Result<()>> {
        // rustls keeps its own record buffers; what it has decrypted is
        // copied out through a small stack array.
        let mut scratch = [0u8; 256];
        let mut read = ReadBuf::new(&mut scratch);
        match Pin::new(self).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                if !read.filled().is_empty() {
                    buf.get_or_insert_with(buffers::take)
                        .extend_from_slice(read.filled());
                } else {
                    // The end of the stream: the next read says so too.
                    buf.get_or_insert_with(buffers::take);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => Poll::Pending,
        }
    }
}
