//! sluice's own HTTP/1.1 codec, on `httparse`: pure framing (no IO, no
//! runtime), shared by the server side (client connections) and the
//! upstream side (plain-HTTP keep-alive connections to targets).
//!
//! - [`body`]: message bodies both ways — a [`Decoder`] for Content-Length,
//!   chunked (with trailers) and read-until-close bodies that splits data
//!   off a caller's buffer without copying, and an [`Encoder`] that frames
//!   data for a vectored write.

pub mod body;

pub use body::{
    BodyError, Decoded, Decoder, DecoderLimits, EncodeError, Encoder, Frame, LAST_CHUNK,
};
