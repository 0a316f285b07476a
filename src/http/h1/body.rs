//! HTTP/1.1 message body framing (RFC 9112 §6–7), both ways, without IO.
//!
//! [`Decoder`] takes a body off a caller-owned `BytesMut`: data frames are
//! split off the front of that buffer (no copy), the chunked framing around
//! them is consumed as it is parsed, and whatever follows the end of the body
//! is left in the buffer for the next message. It keeps only a few integers
//! of state, so a body may arrive split at any byte. [`Encoder`] frames data
//! the other way: for chunked bodies it hands out the small chunk header and
//! CRLF to write around the caller's data (a vectored write), so the data
//! itself is never copied.
//!
//! Strictness (the smuggling defences): chunk sizes are hex with at least one
//! digit and no overflow, lines end in CRLF (a bare LF is an error), the
//! chunk-size line and the extensions of a whole body are bounded, trailers
//! are bounded in bytes and count. Chunk extensions are tolerated and dropped.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

/// Bounds on what a [`Decoder`] accepts around the data of a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderLimits {
    /// Longest chunk-size line (size, extensions, CRLF), in bytes.
    pub max_chunk_line: usize,
    /// Total bytes of chunk extensions over the whole body: many tiny chunks
    /// with long extensions cost CPU without carrying data.
    pub max_extensions: usize,
    /// Largest trailer section (every field line and the final CRLF).
    pub max_trailer_bytes: usize,
    /// Most trailer fields.
    pub max_trailers: usize,
}

impl Default for DecoderLimits {
    fn default() -> Self {
        DecoderLimits {
            max_chunk_line: 4096,
            max_extensions: 16 * 1024,
            max_trailer_bytes: 16 * 1024,
            max_trailers: 64,
        }
    }
}

/// A body whose framing is malformed, or that ended too early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// A chunk-size line without a hex digit first, or with a stray byte.
    #[error("invalid chunk size")]
    ChunkSize,
    /// A chunk size past `u64::MAX`.
    #[error("chunk size overflows")]
    ChunkSizeOverflow,
    /// A chunk-size line longer than [`DecoderLimits::max_chunk_line`].
    #[error("chunk-size line too long")]
    ChunkLineTooLong,
    /// Chunk extensions past [`DecoderLimits::max_extensions`] in total.
    #[error("too many chunk extension bytes")]
    ExtensionsTooLong,
    /// A line of the chunked framing not ended by CRLF, or chunk data not
    /// followed by CRLF.
    #[error("chunked framing is missing a CRLF")]
    MissingCrlf,
    /// A trailer section that does not parse as header fields.
    #[error("invalid trailer section")]
    Trailers,
    /// A trailer section past [`DecoderLimits::max_trailer_bytes`].
    #[error("trailer section too large")]
    TrailersTooLarge,
    /// More trailer fields than [`DecoderLimits::max_trailers`].
    #[error("too many trailer fields")]
    TooManyTrailers,
    /// The connection closed before the end of a length-delimited or chunked
    /// body.
    #[error("connection closed before the end of the body")]
    Incomplete,
}

/// What [`Decoder::decode`] found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body data, split off the front of the buffer (never empty).
    Data(Bytes),
    /// The trailer fields of a chunked body (never empty); the body ended
    /// with them ([`Decoded::End`] follows).
    Trailers(HeaderMap),
    /// The body is complete; bytes left in the buffer follow it.
    End,
    /// The buffer holds no more body: read more into it and call again (or
    /// [`Decoder::eof`] if the peer closed).
    NeedMore,
}

/// Takes one message body off a byte buffer, frame by frame.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
    limits: DecoderLimits,
    /// Extension bytes seen so far in this body.
    extensions: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length {
        remaining: u64,
    },
    /// Read until the connection closes (responses only).
    Close,
    Chunked(Chunked),
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// In the hex digits of a chunk size; `line` bytes of the line so far.
    Size {
        size: u64,
        digits: bool,
        line: usize,
    },
    /// Whitespace after the size, before `;` or CR.
    SizeWs {
        size: u64,
        line: usize,
    },
    /// In the extensions after `;`, up to CR.
    Extension {
        size: u64,
        line: usize,
    },
    /// CR seen at the end of the chunk-size line (`line` bytes with it).
    SizeLf {
        size: u64,
        line: usize,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// After the last chunk; `scanned` bytes of the buffer hold no end of
    /// the section yet.
    Trailers {
        scanned: usize,
    },
    /// Trailers handed out, `End` next.
    Ended,
}

impl Decoder {
    /// A body of exactly `length` bytes.
    pub fn length(length: u64) -> Decoder {
        Decoder::with_state(if length == 0 {
            State::Done
        } else {
            State::Length { remaining: length }
        })
    }

    /// A chunked body, with the default [`DecoderLimits`].
    pub fn chunked() -> Decoder {
        Decoder::with_state(State::Chunked(Chunked::Size {
            size: 0,
            digits: false,
            line: 0,
        }))
    }

    /// A body that ends when the connection closes (a response only: a
    /// request without a length has no body).
    pub fn close_delimited() -> Decoder {
        Decoder::with_state(State::Close)
    }

    /// No body at all (HEAD, 1xx, 204, 304).
    pub fn empty() -> Decoder {
        Decoder::with_state(State::Done)
    }

    /// The same decoder with other limits.
    pub fn with_limits(mut self, limits: DecoderLimits) -> Decoder {
        self.limits = limits;
        self
    }

    fn with_state(state: State) -> Decoder {
        Decoder {
            state,
            limits: DecoderLimits::default(),
            extensions: 0,
        }
    }

    /// The body has been read to its end.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// A body that ends only when the connection does.
    pub fn is_close_delimited(&self) -> bool {
        self.state == State::Close
    }

    /// Body bytes still to come, when known: exact for a length-delimited
    /// body, the rest of the current chunk in a chunked one.
    pub fn remaining_hint(&self) -> Option<u64> {
        match self.state {
            State::Length { remaining } => Some(remaining),
            State::Chunked(Chunked::Data { remaining }) => Some(remaining),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// The exact length of what is left of the body, if the framing says it.
    pub fn exact_remaining(&self) -> Option<u64> {
        match self.state {
            State::Length { remaining } => Some(remaining),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next frame of the body off the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, BodyError> {
        match self.state {
            State::Done => Ok(Decoded::End),
            State::Length { remaining } => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = clamp(remaining, buf.len());
                let left = remaining - take as u64;
                self.state = if left == 0 {
                    State::Done
                } else {
                    State::Length { remaining: left }
                };
                Ok(Decoded::Data(buf.split_to(take).freeze()))
            }
            State::Close => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                Ok(Decoded::Data(buf.split().freeze()))
            }
            State::Chunked(chunked) => self.decode_chunked(chunked, buf),
        }
    }

    /// The peer closed the connection: the end of a close-delimited body,
    /// an error for any other unfinished one. Call it once `decode` has
    /// returned [`Decoded::NeedMore`].
    pub fn eof(&mut self) -> Result<Decoded, BodyError> {
        match self.state {
            State::Done => Ok(Decoded::End),
            State::Close => {
                self.state = State::Done;
                Ok(Decoded::End)
            }
            State::Length { .. } | State::Chunked(_) => Err(BodyError::Incomplete),
        }
    }

    fn decode_chunked(
        &mut self,
        mut state: Chunked,
        buf: &mut BytesMut,
    ) -> Result<Decoded, BodyError> {
        loop {
            // The line states consume their byte as they go; data and
            // trailers return from here.
            let next = match state {
                Chunked::Data { remaining } => {
                    if buf.is_empty() {
                        self.state = State::Chunked(state);
                        return Ok(Decoded::NeedMore);
                    }
                    let take = clamp(remaining, buf.len());
                    let left = remaining - take as u64;
                    self.state = State::Chunked(if left == 0 {
                        Chunked::DataCr
                    } else {
                        Chunked::Data { remaining: left }
                    });
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                Chunked::Trailers { scanned } => return self.decode_trailers(scanned, buf),
                Chunked::Ended => {
                    self.state = State::Done;
                    return Ok(Decoded::End);
                }
                _ => {
                    let Some(&byte) = buf.first() else {
                        self.state = State::Chunked(state);
                        return Ok(Decoded::NeedMore);
                    };
                    buf.advance(1);
                    self.step(state, byte)?
                }
            };
            state = next;
        }
    }

    /// One byte of a chunk-size line or of the CRLF after chunk data.
    fn step(&mut self, state: Chunked, byte: u8) -> Result<Chunked, BodyError> {
        let max_line = self.limits.max_chunk_line;
        let line_len = |line: usize| {
            if line + 1 > max_line {
                Err(BodyError::ChunkLineTooLong)
            } else {
                Ok(line + 1)
            }
        };
        Ok(match state {
            Chunked::Size { size, digits, line } => {
                let line = line_len(line)?;
                match byte {
                    b'\n' => return Err(BodyError::MissingCrlf),
                    b'\r' | b';' | b' ' | b'\t' if !digits => return Err(BodyError::ChunkSize),
                    b'\r' => Chunked::SizeLf { size, line },
                    b';' => Chunked::Extension { size, line },
                    b' ' | b'\t' => Chunked::SizeWs { size, line },
                    _ => {
                        let digit = hex_value(byte).ok_or(BodyError::ChunkSize)?;
                        let size = size
                            .checked_mul(16)
                            .and_then(|size| size.checked_add(u64::from(digit)))
                            .ok_or(BodyError::ChunkSizeOverflow)?;
                        Chunked::Size {
                            size,
                            digits: true,
                            line,
                        }
                    }
                }
            }
            Chunked::SizeWs { size, line } => {
                let line = line_len(line)?;
                match byte {
                    b' ' | b'\t' => Chunked::SizeWs { size, line },
                    b';' => Chunked::Extension { size, line },
                    b'\r' => Chunked::SizeLf { size, line },
                    b'\n' => return Err(BodyError::MissingCrlf),
                    _ => return Err(BodyError::ChunkSize),
                }
            }
            Chunked::Extension { size, line } => {
                let line = line_len(line)?;
                match byte {
                    b'\r' => Chunked::SizeLf { size, line },
                    // A bare LF inside an extension would end the line for
                    // a lenient peer and not for us.
                    b'\n' => return Err(BodyError::MissingCrlf),
                    _ => {
                        self.extensions += 1;
                        if self.extensions > self.limits.max_extensions {
                            return Err(BodyError::ExtensionsTooLong);
                        }
                        Chunked::Extension { size, line }
                    }
                }
            }
            Chunked::SizeLf { size, line } => match byte {
                _ if line + 1 > max_line => return Err(BodyError::ChunkLineTooLong),
                b'\n' if size == 0 => Chunked::Trailers { scanned: 0 },
                b'\n' => Chunked::Data { remaining: size },
                _ => return Err(BodyError::MissingCrlf),
            },
            Chunked::DataCr => match byte {
                b'\r' => Chunked::DataLf,
                _ => return Err(BodyError::MissingCrlf),
            },
            Chunked::DataLf => match byte {
                b'\n' => Chunked::Size {
                    size: 0,
                    digits: false,
                    line: 0,
                },
                _ => return Err(BodyError::MissingCrlf),
            },
            Chunked::Data { .. } | Chunked::Trailers { .. } | Chunked::Ended => state,
        })
    }

    /// The trailer section: kept in the buffer until its final CRLF has
    /// arrived, then parsed at once.
    fn decode_trailers(
        &mut self,
        scanned: usize,
        buf: &mut BytesMut,
    ) -> Result<Decoded, BodyError> {
        let need_more = |this: &mut Decoder, scanned: usize| {
            this.state = State::Chunked(Chunked::Trailers { scanned });
            Ok(Decoded::NeedMore)
        };
        match buf.first() {
            None => return need_more(self, 0),
            Some(b'\r') => match buf.get(1) {
                None => return need_more(self, 0),
                Some(b'\n') => {
                    buf.advance(2);
                    self.state = State::Done;
                    return Ok(Decoded::End);
                }
                Some(_) => return Err(BodyError::MissingCrlf),
            },
            Some(b'\n') => return Err(BodyError::MissingCrlf),
            Some(_) => {}
        }
        let max = self.limits.max_trailer_bytes;
        let window = &buf[..buf.len().min(max)];
        let Some(at) = find_crlfcrlf(window, scanned) else {
            if buf.len() >= max {
                return Err(BodyError::TrailersTooLarge);
            }
            // The end may straddle what came and what is to come.
            return need_more(self, buf.len().saturating_sub(3));
        };
        let section = buf.split_to(at + 4);
        let trailers = parse_trailers(&section, self.limits.max_trailers)?;
        if trailers.is_empty() {
            self.state = State::Done;
            return Ok(Decoded::End);
        }
        self.state = State::Chunked(Chunked::Ended);
        Ok(Decoded::Trailers(trailers))
    }
}

/// `remaining` capped at `available`, as a slice length.
fn clamp(remaining: u64, available: usize) -> usize {
    usize::try_from(remaining).map_or(available, |remaining| remaining.min(available))
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

fn find_crlfcrlf(bytes: &[u8], from: usize) -> Option<usize> {
    bytes
        .get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + from)
}

/// Fields a sender must not put in trailers (RFC 9110 §6.5.1): framing,
/// routing and connection control. They are dropped, never relayed.
fn forbidden_in_trailers(name: &HeaderName) -> bool {
    [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::HOST,
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::CONTENT_ENCODING,
        header::CONTENT_TYPE,
        header::CONTENT_RANGE,
        header::AUTHORIZATION,
        header::SET_COOKIE,
        header::COOKIE,
    ]
    .contains(name)
        || name == "keep-alive"
}

/// Parses a complete trailer section (ending in CRLF CRLF).
fn parse_trailers(section: &[u8], max_trailers: usize) -> Result<HeaderMap, BodyError> {
    // Every LF ends a CRLF: a bare LF is a line end for some peers only.
    if section
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || section[i - 1] != b'\r'))
    {
        return Err(BodyError::MissingCrlf);
    }
    let mut fields = vec![httparse::EMPTY_HEADER; max_trailers];
    let parsed = match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((len, parsed))) if len == section.len() => parsed,
        Ok(_) => return Err(BodyError::Trailers),
        Err(httparse::Error::TooManyHeaders) => return Err(BodyError::TooManyTrailers),
        Err(_) => return Err(BodyError::Trailers),
    };
    let mut trailers = HeaderMap::with_capacity(parsed.len());
    for field in parsed.iter() {
        let name =
            HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| BodyError::Trailers)?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| BodyError::Trailers)?;
        if !forbidden_in_trailers(&name) {
            trailers.append(name, value);
        }
    }
    Ok(trailers)
}

/// A body written with more or fewer bytes than its framing says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// More data than the Content-Length announced.
    #[error("body longer than its content-length by {0} bytes")]
    TooLong(u64),
    /// The body ended short of its Content-Length.
    #[error("body ended {0} bytes short of its content-length")]
    TooShort(u64),
    /// Data after the body was finished.
    #[error("body already finished")]
    Finished,
}

/// Frames one message body for the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoder {
    kind: Encoding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Length {
        remaining: u64,
    },
    Chunked,
    /// The body ends when the connection closes (a response to an HTTP/1.0
    /// client that cannot take chunked).
    Close,
    Finished,
}

/// What goes on the wire around `len` bytes of data: `head`, the data,
/// `tail` — written as one vectored write so the data is not copied.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    head: [u8; 18],
    head_len: u8,
    /// `"\r\n"` after a chunk's data, empty otherwise.
    pub tail: &'static [u8],
}

impl Frame {
    const BARE: Frame = Frame {
        head: [0; 18],
        head_len: 0,
        tail: b"",
    };

    /// The chunk-size line to write before the data (empty when not
    /// chunked).
    pub fn head(&self) -> &[u8] {
        &self.head[..usize::from(self.head_len)]
    }

    fn chunk(len: usize) -> Frame {
        let mut frame = Frame {
            head: [0; 18],
            head_len: 0,
            tail: b"\r\n",
        };
        let mut digits = [0u8; 16];
        let mut n = len as u64;
        let mut count = 0;
        loop {
            digits[count] = b"0123456789abcdef"[(n & 0xf) as usize];
            count += 1;
            n >>= 4;
            if n == 0 {
                break;
            }
        }
        for (slot, digit) in frame.head.iter_mut().zip(digits[..count].iter().rev()) {
            *slot = *digit;
        }
        frame.head[count] = b'\r';
        frame.head[count + 1] = b'\n';
        frame.head_len = (count + 2) as u8;
        frame
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("head", &String::from_utf8_lossy(self.head()))
            .field("tail", &String::from_utf8_lossy(self.tail))
            .finish()
    }
}

/// The last chunk of a chunked body without trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

impl Encoder {
    /// A body of exactly `length` bytes.
    pub fn length(length: u64) -> Encoder {
        Encoder {
            kind: Encoding::Length { remaining: length },
        }
    }

    /// A chunked body.
    pub fn chunked() -> Encoder {
        Encoder {
            kind: Encoding::Chunked,
        }
    }

    /// A body delimited by closing the connection.
    pub fn close_delimited() -> Encoder {
        Encoder {
            kind: Encoding::Close,
        }
    }

    /// Chunked framing.
    pub fn is_chunked(&self) -> bool {
        self.kind == Encoding::Chunked
    }

    /// [`Encoder::finish`] has been called.
    pub fn is_finished(&self) -> bool {
        self.kind == Encoding::Finished
    }

    /// The framing around the next `len` bytes of data. Empty data gets an
    /// empty frame (a zero-size chunk would end the body).
    pub fn frame(&mut self, len: usize) -> Result<Frame, EncodeError> {
        match &mut self.kind {
            Encoding::Finished => Err(EncodeError::Finished),
            _ if len == 0 => Ok(Frame::BARE),
            Encoding::Length { remaining } => {
                let len = len as u64;
                if len > *remaining {
                    return Err(EncodeError::TooLong(len - *remaining));
                }
                *remaining -= len;
                Ok(Frame::BARE)
            }
            Encoding::Chunked => Ok(Frame::chunk(len)),
            Encoding::Close => Ok(Frame::BARE),
        }
    }

    /// Frames `data` into `dst` with a copy: for small data, or where a
    /// vectored write is not worth it.
    pub fn encode_into(&mut self, data: &[u8], dst: &mut BytesMut) -> Result<(), EncodeError> {
        let frame = self.frame(data.len())?;
        dst.reserve(frame.head().len() + data.len() + frame.tail.len());
        dst.put_slice(frame.head());
        dst.put_slice(data);
        dst.put_slice(frame.tail);
        Ok(())
    }

    /// Ends the body: for a chunked one, the last chunk and `trailers` go
    /// into `dst` (trailers of any other body are dropped: there is no place
    /// for them on the wire). A length-delimited body must be complete.
    pub fn finish(
        &mut self,
        trailers: Option<&HeaderMap>,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        match self.kind {
            Encoding::Finished => return Err(EncodeError::Finished),
            Encoding::Length { remaining } if remaining > 0 => {
                return Err(EncodeError::TooShort(remaining));
            }
            Encoding::Chunked => match trailers {
                Some(trailers) if !trailers.is_empty() => {
                    dst.put_slice(b"0\r\n");
                    for (name, value) in trailers {
                        if forbidden_in_trailers(name) {
                            continue;
                        }
                        dst.put_slice(name.as_str().as_bytes());
                        dst.put_slice(b": ");
                        dst.put_slice(value.as_bytes());
                        dst.put_slice(b"\r\n");
                    }
                    dst.put_slice(b"\r\n");
                }
                _ => dst.put_slice(LAST_CHUNK),
            },
            Encoding::Length { .. } | Encoding::Close => {}
        }
        self.kind = Encoding::Finished;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
