//! One plain HTTP/1.1 connection to a target, on sluice's own codec
//! ([`crate::http::h1`]): the request head and body written out (a
//! buffered body in the same vectored write as the head), the response head
//! read back, interim 1xx responses skipped on the way.
//!
//! A streaming request body is sent while the response head is awaited, as
//! hyper's client does: a backend that answers before taking the whole body
//! (a 413, an early 200) is heard, and the connection, whose request was
//! not sent whole, is then not reused.
//!
//! Invariant: a failure of the client's body comes out as
//! [`ExchangeError::ClientBody`] (its source the [`ClientBodyError`]), so
//! the upstream never blames the target for it; every other failure is the
//! target's (or the network's).

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderValue, header};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::net::TcpStream;

use crate::http::BoxError;
use crate::http::client_fields::{ClientFields, Kind};
use crate::http::h1::write::{put_decimal, put_field};
use crate::http::h1::{EncodeError, Encoder, HeadError, HeadLimits, ResponseHead, parse_response};
use crate::http::headers::Forwarding;
use crate::http::request_body::{ClientBodyError, RequestBody};

/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;

/// The most interim (1xx) responses taken before the final one.
const MAX_INTERIM: usize = 32;

/// Why an exchange on a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Writing the request failed; `unsent`: not a byte of it was taken by
    /// the connection (the backend closed it while it was idle).
    #[error("writing the request failed")]
    Write {
        #[source]
        source: io::Error,
        unsent: bool,
    },
    #[error("reading the response failed")]
    Read(#[source] io::Error),
    /// The backend closed the connection before a whole response head.
    #[error("connection closed before a response head")]
    Closed,
    #[error("invalid response head")]
    Head(#[from] HeadError),
    #[error("more than {MAX_INTERIM} interim responses")]
    TooManyInterim,
    /// The client's body failed: the client's fault, not the target's.
    #[error("the request body failed")]
    ClientBody(#[source] ClientBodyError),
    /// The client's body did not match the length it announced.
    #[error("the request body does not match its length")]
    BodyLength(#[source] EncodeError),
}

impl ExchangeError {
    /// The request never reached the connection: it may be sent again.
    pub fn is_unsent(&self) -> bool {
        matches!(self, ExchangeError::Write { unsent: true, .. })
    }
}

/// A TCP connection to a target, with its read buffer (bytes read past the
/// end of one message stay there for the next) and the buffer request
/// heads are written into.
pub struct Connection {
    pub(super) io: TcpStream,
    pub(super) read: BytesMut,
    write: BytesMut,
}

/// The request body, as it goes out after its head.
pub(super) enum Outgoing {
    /// Nothing more (no body, or one already framed into the head's buffer).
    Nothing,
    /// A buffered body, written with the head in one vectored write.
    Whole(Bytes),
    /// A body streamed from the client, framed by the encoder.
    Stream(RequestBody, Encoder),
}

impl Connection {
    /// Connects to `addr` within `timeout`.
    pub(super) async fn connect(addr: &str, timeout: Duration) -> Result<Connection, BoxError> {
        let io = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(io)) => io,
            Ok(Err(err)) => return Err(Box::new(err)),
            Err(_) => return Err(format!("connect timed out after {timeout:?}").into()),
        };
        if let Err(err) = io.set_nodelay(true) {
            tracing::debug!(%err, "TCP_NODELAY not set on an upstream connection");
        }
        Ok(Connection {
            io,
            read: BytesMut::new(),
            write: BytesMut::new(),
        })
    }

    /// Whether an idle connection can carry a request: the backend has not
    /// closed it, and has not sent anything unasked (which could only be a
    /// last word before closing, or garbage). Asks the kernel, not the
    /// runtime's cached readiness, so a close that has arrived is seen.
    pub(super) fn is_reusable(&self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut probe = [MaybeUninit::<u8>::uninit(); 1];
        match socket2::SockRef::from(&self.io).peek(&mut probe) {
            Err(err) => err.kind() == io::ErrorKind::WouldBlock,
            Ok(_) => false,
        }
    }

    /// Writes the request head (and how its body is framed) into the write
    /// buffer; returns the body as it goes out after the head.
    pub(super) fn prepare(
        &mut self,
        parts: &Parts,
        rewrite: (Option<&Forwarding>, &HeaderValue),
        body: RequestBody,
    ) -> Outgoing {
        let dst = &mut self.write;
        dst.clear();
        // A request that said Content-Length: 0 says it again; one that said
        // nothing has no body and says nothing.
        let empty = if client_fields(parts, rewrite.0).has(Kind::ContentLength) {
            BodyFraming::Length(0)
        } else {
            BodyFraming::None
        };
        let (framing, outgoing) = match body {
            RequestBody::Empty => (empty, Outgoing::Nothing),
            RequestBody::Buffered {
                data,
                trailers: None,
            } => match data {
                Some(data) if !data.is_empty() => (
                    BodyFraming::Length(data.len() as u64),
                    Outgoing::Whole(data),
                ),
                _ => (empty, Outgoing::Nothing),
            },
            RequestBody::Buffered {
                data,
                trailers: Some(trailers),
            } => {
                // Trailers go out only on a chunked body (rare: framed here,
                // after the head, with a copy).
                write_head(dst, parts, rewrite, BodyFraming::Chunked);
                let mut encoder = Encoder::chunked();
                let data = data.unwrap_or_default();
                let framed = encoder
                    .encode_into(&data, dst)
                    .and_then(|()| encoder.finish(Some(&trailers), dst));
                debug_assert!(framed.is_ok(), "a chunked encoder takes any data");
                return Outgoing::Nothing;
            }
            RequestBody::Streaming(streaming) => {
                let body = RequestBody::Streaming(streaming);
                match body.size_hint().exact() {
                    Some(len) => (
                        BodyFraming::Length(len),
                        Outgoing::Stream(body, Encoder::length(len)),
                    ),
                    None => (
                        BodyFraming::Chunked,
                        Outgoing::Stream(body, Encoder::chunked()),
                    ),
                }
            }
        };
        write_head(dst, parts, rewrite, framing);
        outgoing
    }

    /// Writes the prepared head, with a buffered body if there is one.
    pub(super) async fn send_head(&mut self, outgoing: &Outgoing) -> Result<(), ExchangeError> {
        let head: &[u8] = &self.write;
        let data: &[u8] = match outgoing {
            Outgoing::Whole(data) => data,
            _ => &[],
        };
        let mut slices = [IoSlice::new(head), IoSlice::new(data)];
        write_all(&self.io, &mut slices).await
    }

    /// Sends what is left of the request body while waiting for the final
    /// response head. Returns the head and whether the whole request went
    /// out (if not, the connection must not carry another).
    pub(super) async fn exchange(
        &mut self,
        outgoing: Outgoing,
        head_request: bool,
        limits: &HeadLimits,
    ) -> Result<(ResponseHead, bool), ExchangeError> {
        let Connection { io, read, write } = self;
        let io = &*io;
        let Outgoing::Stream(body, encoder) = outgoing else {
            let head = read_head(io, read, head_request, limits).await?;
            return Ok((head, true));
        };
        // Boxed: a streamed body is the rare case, and its sending state
        // would otherwise enlarge every request's future (which is moved
        // whole when hyper's server takes it).
        let mut sending = Box::pin(send_body(io, write, body, encoder));
        let receiving = read_head(io, read, head_request, limits);
        tokio::pin!(receiving);
        let mut sent = false;
        let mut send_failed: Option<ExchangeError> = None;
        loop {
            tokio::select! {
                biased;
                head = &mut receiving => {
                    return match head {
                        Ok(head) => Ok((head, sent)),
                        // A backend that stopped reading the body and closed
                        // failed first at the write.
                        Err(err) => Err(send_failed.unwrap_or(err)),
                    };
                }
                done = sending.as_mut(), if !sent && send_failed.is_none() => match done {
                    Ok(()) => sent = true,
                    Err(err @ ExchangeError::ClientBody(_)) => return Err(err),
                    // The backend may still answer (e.g. 413, then close).
                    Err(err) => send_failed = Some(err),
                },
            }
        }
    }

    /// A fresh connection to send the prepared request on, in place of this
    /// one (found closed before a byte of it was sent).
    pub(super) fn replaced_by(self, mut fresh: Connection) -> Connection {
        fresh.write = self.write;
        fresh
    }

    /// Reads more into the read buffer: the number of bytes read, 0 at the
    /// end of the stream.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_fill(&self.io, &mut self.read, cx)
    }

    /// The connection's stream and the bytes already read past the last
    /// message (for a protocol switched to).
    pub(super) fn into_parts(self) -> (TcpStream, Bytes) {
        (self.io, self.read.freeze())
    }
}

/// The client's fields a request carries: beside it in its
/// [`Forwarding`], or in its map.
fn client_fields<'a>(parts: &'a Parts, forwarding: Option<&'a Forwarding>) -> ClientFields<'a> {
    match forwarding {
        Some(forwarding) => forwarding.client_fields(&parts.headers),
        None => ClientFields::Map(&parts.headers),
    }
}

/// How a request body is framed on the wire.
#[derive(Clone, Copy)]
enum BodyFraming {
    /// No body, and no header saying so.
    None,
    Length(u64),
    Chunked,
}

/// Writes the request line and header fields, then the framing header.
/// Content-Length and Transfer-Encoding from the request are replaced by
/// sluice's own: the body is framed here, whatever the client's framing.
/// With a [`Forwarding`] the fields are rewritten as they are copied;
/// without one they go as they are, with `default_host` if there is no
/// Host.
fn write_head(
    dst: &mut BytesMut,
    parts: &Parts,
    (forwarding, default_host): (Option<&Forwarding>, &HeaderValue),
    framing: BodyFraming,
) {
    let fields = client_fields(parts, forwarding);
    // Room for the forwarding fields too: the buffer is the connection's,
    // so once warm it holds a head without growing.
    dst.reserve(320 + fields.len() * 32);
    dst.put_slice(parts.method.as_str().as_bytes());
    dst.put_u8(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    dst.put_slice(target.as_bytes());
    dst.put_slice(b" HTTP/1.1\r\n");
    match forwarding {
        Some(forwarding) => forwarding.write_fields(fields, default_host, dst),
        None => {
            let headers = &parts.headers;
            if !headers.contains_key(header::HOST) {
                put_field(dst, b"host", default_host.as_bytes());
            }
            for (name, value) in headers {
                if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
                    continue;
                }
                put_field(dst, name.as_str().as_bytes(), value.as_bytes());
            }
        }
    }
    match framing {
        BodyFraming::None => {}
        BodyFraming::Length(len) => {
            dst.put_slice(b"content-length: ");
            put_decimal(dst, len);
            dst.put_slice(b"\r\n");
        }
        BodyFraming::Chunked => dst.put_slice(b"transfer-encoding: chunked\r\n"),
    }
    dst.put_slice(b"\r\n");
}

/// Reads until a final response head is in: interim 1xx heads are read
/// and dropped (as hyper's client does; 101 is final).
async fn read_head(
    io: &TcpStream,
    read: &mut BytesMut,
    head_request: bool,
    limits: &HeadLimits,
) -> Result<ResponseHead, ExchangeError> {
    let mut interim = 0;
    loop {
        if !read.is_empty()
            && let Some(head) = parse_response(read, head_request, limits)?
        {
            if !head.is_interim() {
                return Ok(head);
            }
            interim += 1;
            if interim > MAX_INTERIM {
                return Err(ExchangeError::TooManyInterim);
            }
            continue;
        }
        let n = std::future::poll_fn(|cx| poll_fill(io, read, cx))
            .await
            .map_err(ExchangeError::Read)?;
        if n == 0 {
            return Err(ExchangeError::Closed);
        }
    }
}

/// Streams the client's body to the backend, framed by `encoder`.
async fn send_body(
    io: &TcpStream,
    scratch: &mut BytesMut,
    mut body: RequestBody,
    mut encoder: Encoder,
) -> Result<(), ExchangeError> {
    loop {
        let frame = match body.frame().await {
            None => {
                scratch.clear();
                encoder
                    .finish(None, scratch)
                    .map_err(ExchangeError::BodyLength)?;
                return write_all(io, &mut [IoSlice::new(scratch)]).await;
            }
            Some(Err(err)) => return Err(ExchangeError::ClientBody(err)),
            Some(Ok(frame)) => frame,
        };
        match frame.into_data() {
            Ok(data) => {
                let framing = encoder
                    .frame(data.len())
                    .map_err(ExchangeError::BodyLength)?;
                let mut slices = [
                    IoSlice::new(framing.head()),
                    IoSlice::new(&data),
                    IoSlice::new(framing.tail),
                ];
                write_all(io, &mut slices).await?;
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    scratch.clear();
                    encoder
                        .finish(Some(&trailers), scratch)
                        .map_err(ExchangeError::BodyLength)?;
                    return write_all(io, &mut [IoSlice::new(scratch)]).await;
                }
            }
        }
    }
}

/// Writes every slice, in as few writes as the socket allows.
async fn write_all(io: &TcpStream, slices: &mut [IoSlice<'_>]) -> Result<(), ExchangeError> {
    let mut slices = slices;
    IoSlice::advance_slices(&mut slices, 0);
    let mut written = false;
    while !slices.is_empty() {
        io.writable().await.map_err(|source| ExchangeError::Write {
            source,
            unsent: !written,
        })?;
        match io.try_write_vectored(slices) {
            Ok(0) => {
                return Err(ExchangeError::Write {
                    source: io::ErrorKind::WriteZero.into(),
                    unsent: !written,
                });
            }
            Ok(n) => {
                written = true;
                IoSlice::advance_slices(&mut slices, n);
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(source) => {
                return Err(ExchangeError::Write {
                    source,
                    unsent: !written,
                });
            }
        }
    }
    Ok(())
}

fn poll_fill(io: &TcpStream, read: &mut BytesMut, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    if read.capacity() - read.len() < READ_CHUNK / 4 {
        read.reserve(READ_CHUNK);
    }
    loop {
        ready!(io.poll_read_ready(cx))?;
        match io.try_read_buf(read) {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            result => return Poll::Ready(result),
        }
    }
}
