//! The client's side of an HTTP/1 connection that switches protocols (a
//! 101 answer to an Upgrade request): the connection hands its socket, and
//! any bytes it had already read past the request, to whoever waits on the
//! request's [`ClientUpgrade`] (the gateway's tunnel).
//!
//! Invariant: the socket is handed over only after the 101 head has been
//! written, and the bytes read ahead come out first, in order.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

/// A byte stream a connection can be served over.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A stream with bytes already read from it put back in front.
pub struct Rewind<S> {
    read_ahead: Bytes,
    io: S,
}

/// A client connection after its switch: the bytes read ahead, then the
/// socket.
pub type Upgraded = Rewind<Box<dyn Io>>;

impl<S> Rewind<S> {
    pub fn new(io: S, read_ahead: Bytes) -> Rewind<S> {
        Rewind { read_ahead, io }
    }
}

impl<S> std::fmt::Debug for Rewind<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewind")
            .field("read_ahead", &self.read_ahead.len())
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read_ahead.is_empty() {
            let n = self.read_ahead.len().min(buf.remaining());
            buf.put_slice(&self.read_ahead[..n]);
            self.read_ahead.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Why a client's upgrade did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The connection ended (or did not switch) before handing its socket on.
    #[error("the client connection did not switch protocols")]
    NotSwitched,
    /// The request's upgrade was already taken.
    #[error("the client upgrade was already taken")]
    Taken,
}

/// In an Upgrade request's extensions: where the client's connection will
/// come once the 101 is written.
#[derive(Clone, Debug)]
pub struct ClientUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

/// Kept by the connection: hands its socket on after the 101.
#[derive(Debug)]
pub struct UpgradeSender(oneshot::Sender<Upgraded>);

/// A pending upgrade: the request's side and the connection's.
pub fn pending() -> (ClientUpgrade, UpgradeSender) {
    let (tx, rx) = oneshot::channel();
    (
        ClientUpgrade(Arc::new(Mutex::new(Some(rx)))),
        UpgradeSender(tx),
    )
}

impl ClientUpgrade {
    /// Waits for the client's connection after its switch.
    pub async fn upgraded(self) -> Result<Upgraded, UpgradeError> {
        let rx = self.0.lock().take().ok_or(UpgradeError::Taken)?;
        rx.await.map_err(|_| UpgradeError::NotSwitched)
    }
}

impl UpgradeSender {
    /// Hands the connection on; `Err` gives it back when nobody waits.
    pub fn send(self, upgraded: Upgraded) -> Result<(), Upgraded> {
        self.0.send(upgraded)
    }

    /// Whether a tunnel waits for the connection.
    pub fn is_awaited(&self) -> bool {
        !self.0.is_closed()
    }
}
