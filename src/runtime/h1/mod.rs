//! Serving HTTP/1 client connections with sluice's own codec
//! ([`crate::http::h1`]); HTTP/2 stays with hyper.
//!
//! - [`conn`]: one connection's life: wait for a head, serve the request,
//!   answer, again; the HTTP/2 preface hands the stream back.
//! - [`response`]: the response head as written, and its body framing.
//! - [`stream`]: plain and TLS streams, and waiting for bytes without a
//!   buffer.
//! - [`buffers`]: the per-worker pool of read and write buffers.

pub(crate) mod buffers;
pub(crate) mod conn;
pub(crate) mod response;
pub(crate) mod stream;

pub(crate) use conn::{Connection, Settings, Start};
