//! sluice's own HTTP/1.1 codec, on `httparse`: pure framing (no IO, no
//! runtime), shared by the server side (client connections) and the
//! upstream side (plain-HTTP keep-alive connections to targets).
//!
//! - [`body`]: message bodies both ways — a [`Decoder`] for Content-Length,
//!   chunked (with trailers) and read-until-close bodies that splits data
//!   off a caller's buffer without copying, and an [`Encoder`] that frames
//!   data for a vectored write.
//! - [`request`]: a request head parsed into its method, target and
//!   [`Fields`], and its framing, keep-alive and `Expect` decisions (the
//!   server side).
//! - [`incoming`]: a client's request body as the gateway reads it, fed by
//!   the connection that reads the socket.
//! - [`response`]: a backend's response head and its body's framing.
//! - [`fields`]: a head's fields (a response's, a request's) kept as they
//!   arrived, each classified once, relayed without a header map.
//!
//! Deliberate differences from hyper's HTTP/1 (tests/it/h1diff.rs checks the
//! rest agrees): a response head is bounded at 64 KiB and 100 fields
//! ([`HeadLimits`]); a chunk-size line at 4 KiB and a body's chunk
//! extensions at 16 KiB in all ([`DecoderLimits`]); trailer fields that may
//! not be trailers (framing, routing, connection control, content metadata,
//! credentials) are dropped, both ways; a bare LF anywhere in chunked framing
//! (size line, after data, trailers) is an error.

pub mod body;
pub mod fields;
pub mod incoming;
pub mod request;
pub mod response;
pub(crate) mod write;

pub use body::{
    BodyError, Decoded, Decoder, DecoderLimits, EncodeError, Encoder, Frame, LAST_CHUNK,
};
pub use fields::Fields;
pub use response::{Framing, HeadError, HeadLimits, ResponseHead, parse_response};
