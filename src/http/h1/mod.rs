//! sluice's own HTTP/1.1 codec, on `httparse`: pure framing (no IO, no
//! runtime), shared by the server side (client connections) and the
//! upstream side (plain-HTTP keep-alive connections to targets).
//!
//! - [`body`]: message bodies both ways — a [`Decoder`] for Content-Length,
//!   chunked (with trailers) and read-until-close bodies that splits data
//!   off a caller's buffer without copying, and an [`Encoder`] that frames
//!   data for a vectored write.
//! - [`request`]: a request head parsed into `http` types, and its framing,
//!   keep-alive and `Expect` decisions (the server side).
//! - [`incoming`]: a client's request body as the gateway reads it, fed by
//!   the connection that reads the socket.

pub mod body;
pub mod incoming;
pub mod request;

pub use body::{
    BodyError, Decoded, Decoder, DecoderLimits, EncodeError, Encoder, Frame, LAST_CHUNK,
};
