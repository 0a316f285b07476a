//! The decoder's and encoder's tests: bodies split at every byte, the
//! smuggling defences, limits, and framing written back out.

use super::*;

/// Everything a decoder made of `input`, fed as `parts`.
#[derive(Debug, PartialEq, Eq, Default)]
struct Out {
    data: Vec<u8>,
    trailers: Option<HeaderMap>,
    rest: Vec<u8>,
    ended: bool,
}

fn feed(mut decoder: Decoder, parts: &[&[u8]], eof: bool) -> Result<Out, BodyError> {
    let mut buf = BytesMut::new();
    let mut out = Out::default();
    for part in parts {
        buf.extend_from_slice(part);
        if out.ended {
            continue;
        }
        for _ in 0..10_000 {
            match decoder.decode(&mut buf)? {
                Decoded::Data(data) => {
                    assert!(!data.is_empty());
                    out.data.extend_from_slice(&data);
                }
                Decoded::Trailers(t) => {
                    assert!(out.trailers.is_none());
                    out.trailers = Some(t);
                }
                Decoded::End => {
                    out.ended = true;
                    break;
                }
                Decoded::NeedMore => break,
            }
        }
    }
    if !out.ended && eof {
        assert_eq!(decoder.eof()?, Decoded::End);
        out.ended = true;
    }
    if out.ended {
        assert!(decoder.is_done());
        assert_eq!(decoder.decode(&mut buf)?, Decoded::End);
    }
    out.rest = buf.to_vec();
    Ok(out)
}

/// The same result whether `input` comes whole, split at any one byte,
/// or one byte at a time.
fn every_split(decoder: &Decoder, input: &[u8], eof: bool) -> Result<Out, BodyError> {
    let whole = feed(decoder.clone(), &[input], eof);
    for at in 0..=input.len() {
        let (a, b) = input.split_at(at);
        assert_eq!(feed(decoder.clone(), &[a, b], eof), whole, "split at {at}");
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(feed(decoder.clone(), &bytes, eof), whole, "byte by byte");
    whole
}

fn trailers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_static(value));
    }
    map
}

#[test]
fn length_body_leaves_what_follows() {
    let out = every_split(&Decoder::length(5), b"helloHTTP/1.1", false).unwrap();
    assert_eq!(out.data, b"hello");
    assert!(out.ended);
    assert_eq!(out.rest, b"HTTP/1.1");
}

#[test]
fn zero_length_is_done_at_once() {
    let mut decoder = Decoder::length(0);
    assert!(decoder.is_done());
    let mut buf = BytesMut::from(&b"next"[..]);
    assert_eq!(decoder.decode(&mut buf), Ok(Decoded::End));
    assert_eq!(&buf[..], b"next");
    assert!(Decoder::empty().is_done());
}

#[test]
fn length_body_cut_short_is_incomplete() {
    assert_eq!(
        feed(Decoder::length(10), &[b"short"], true),
        Err(BodyError::Incomplete)
    );
}

#[test]
fn huge_length_streams() {
    let mut decoder = Decoder::length(u64::MAX);
    let mut buf = BytesMut::from(&b"abc"[..]);
    assert_eq!(
        decoder.decode(&mut buf),
        Ok(Decoded::Data(Bytes::from_static(b"abc")))
    );
    assert_eq!(decoder.exact_remaining(), Some(u64::MAX - 3));
}

#[test]
fn close_delimited_ends_at_eof() {
    let out = every_split(&Decoder::close_delimited(), b"all of it", true).unwrap();
    assert_eq!(out.data, b"all of it");
    assert!(out.ended);
    assert!(Decoder::close_delimited().is_close_delimited());
}

#[test]
fn data_is_split_off_without_copying() {
    let mut buf = BytesMut::from(&b"5\r\nhello\r\n0\r\n\r\n"[..]);
    let start = buf.as_ptr() as usize;
    let mut decoder = Decoder::chunked();
    let Ok(Decoded::Data(data)) = decoder.decode(&mut buf) else {
        panic!("no data");
    };
    assert_eq!(data.as_ptr() as usize, start + 3);
}

#[test]
fn chunked_body_at_every_split() {
    let input =
        b"5\r\nhello\r\n1;name=value;x=\"q\"\r\n,\r\n0B \t ; ext\r\n 0123456789\r\n0\r\n\r\nNEXT";
    let out = every_split(&Decoder::chunked(), input, false).unwrap();
    assert_eq!(out.data, b"hello, 0123456789");
    assert_eq!(out.trailers, None);
    assert!(out.ended);
    assert_eq!(out.rest, b"NEXT");
}

#[test]
fn chunked_trailers_at_every_split() {
    let input = b"3\r\nabc\r\n0\r\nX-Checksum: 42\r\nX-Multi: a\r\nx-multi: b\r\n\r\nrest";
    let out = every_split(&Decoder::chunked(), input, false).unwrap();
    assert_eq!(out.data, b"abc");
    assert_eq!(
        out.trailers,
        Some(trailers(&[
            ("x-checksum", "42"),
            ("x-multi", "a"),
            ("x-multi", "b")
        ]))
    );
    assert_eq!(out.rest, b"rest");
}

#[test]
fn forbidden_trailers_are_dropped() {
    let input = b"0\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nHost: x\r\n\r\n";
    let out = every_split(&Decoder::chunked(), input, false).unwrap();
    assert!(out.ended);
    assert_eq!(out.trailers, None);
    let input = b"0\r\nContent-Length: 5\r\nX-Ok: 1\r\n\r\n";
    let out = every_split(&Decoder::chunked(), input, false).unwrap();
    assert_eq!(out.trailers, Some(trailers(&[("x-ok", "1")])));
}

#[test]
fn uppercase_hex_and_leading_zeros() {
    let input = b"000A\r\n0123456789\r\n00\r\n\r\n";
    let out = every_split(&Decoder::chunked(), input, false).unwrap();
    assert_eq!(out.data, b"0123456789");
    assert!(out.ended);
}

#[test]
fn chunk_sizes_that_overflow_are_refused() {
    // u64::MAX itself is a valid size (the data just never all comes).
    let mut decoder = Decoder::chunked();
    let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nab"[..]);
    assert!(matches!(decoder.decode(&mut buf), Ok(Decoded::Data(_))));
    assert_eq!(decoder.remaining_hint(), Some(u64::MAX - 2));
    for input in [&b"10000000000000000\r\n"[..], b"fffffffffffffffff\r\n"] {
        assert_eq!(
            every_split(&Decoder::chunked(), input, false),
            Err(BodyError::ChunkSizeOverflow)
        );
    }
}

#[test]
fn bad_chunk_sizes_are_refused() {
    for input in [
        &b"g\r\n"[..],
        b"\r\n",
        b";ext\r\n",
        b" 5\r\n",
        b"-1\r\n",
        b"0x5\r\n",
        b"+5\r\n",
        b"5 5\r\n",
        b"5\r\nhello\r\n\xff\r\n",
    ] {
        assert_eq!(
            every_split(&Decoder::chunked(), input, false),
            Err(BodyError::ChunkSize),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn missing_crlf_is_refused() {
    for input in [
        &b"5\nhello\r\n0\r\n\r\n"[..],
        b"5\r\nhelloX\r\n0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"5\r\nhello\rX0\r\n\r\n",
        b"5;a\nb\r\nhello\r\n",
        b"0\r\n\n",
        b"0\r\n\rX",
        b"0\r\nX-A: 1\nX-B: 2\r\n\r\n",
        b"0\r\nX-A: 1\r\n\n\r\n\r\n",
    ] {
        assert_eq!(
            every_split(&Decoder::chunked(), input, false),
            Err(BodyError::MissingCrlf),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn bad_trailers_are_refused() {
    for input in [
        &b"0\r\nno colon\r\n\r\n"[..],
        b"0\r\nBad Name: x\r\n\r\n",
        b"0\r\n: empty\r\n\r\n",
        b"0\r\nX-A: 1\r\n folded\r\n\r\n",
    ] {
        assert_eq!(
            every_split(&Decoder::chunked(), input, false),
            Err(BodyError::Trailers),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn chunk_line_is_bounded() {
    let limits = DecoderLimits {
        max_chunk_line: 16,
        ..DecoderLimits::default()
    };
    let decoder = Decoder::chunked().with_limits(limits);
    // 15 bytes then the LF: within.
    let ok = b"1;abcdefghijkl\r\nx\r\n0\r\n\r\n";
    assert!(every_split(&decoder, ok, false).unwrap().ended);
    let long = b"1;abcdefghijklm\r\nx\r\n0\r\n\r\n";
    assert_eq!(
        every_split(&decoder, long, false),
        Err(BodyError::ChunkLineTooLong)
    );
    // Leading zeros count too: the line is bounded, not just the value.
    let zeros = b"000000000000000000001\r\nx\r\n";
    assert_eq!(
        every_split(&decoder, zeros, false),
        Err(BodyError::ChunkLineTooLong)
    );
    // Without a limit of our own, the default still ends a line that
    // never does.
    let mut endless = Decoder::chunked();
    let mut buf = BytesMut::from(&b"1;"[..]);
    buf.extend_from_slice(&[b'a'; 5000]);
    assert_eq!(endless.decode(&mut buf), Err(BodyError::ChunkLineTooLong));
}

#[test]
fn extensions_are_bounded_over_the_body() {
    let limits = DecoderLimits {
        max_extensions: 20,
        ..DecoderLimits::default()
    };
    let decoder = Decoder::chunked().with_limits(limits);
    let two = b"1;aaaaaaaa\r\nx\r\n1;bbbbbbbb\r\nx\r\n0\r\n\r\n";
    assert!(every_split(&decoder, two, false).unwrap().ended);
    let three = b"1;aaaaaaaa\r\nx\r\n1;bbbbbbbb\r\nx\r\n1;cccccccc\r\nx\r\n0\r\n\r\n";
    assert_eq!(
        every_split(&decoder, three, false),
        Err(BodyError::ExtensionsTooLong)
    );
}

#[test]
fn trailers_are_bounded() {
    let limits = DecoderLimits {
        max_trailer_bytes: 32,
        max_trailers: 2,
        ..DecoderLimits::default()
    };
    let decoder = Decoder::chunked().with_limits(limits);
    // 28 bytes of section.
    let fits = b"0\r\nX-A: 1234567890123\r\nB: 1\r\n\r\n";
    assert_eq!(
        every_split(&decoder, fits, false)
            .unwrap()
            .trailers
            .map(|t| t.len()),
        Some(2)
    );
    let large = b"0\r\nX-A: 12345678901234567890123456789\r\n\r\n";
    assert_eq!(
        every_split(&decoder, large, false),
        Err(BodyError::TrailersTooLarge)
    );
    let many = b"0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    assert_eq!(
        every_split(&decoder, many, false),
        Err(BodyError::TooManyTrailers)
    );
    // A section that never ends is refused once past the bound.
    let mut endless = Decoder::chunked().with_limits(limits);
    let mut buf = BytesMut::from(&b"0\r\nX: "[..]);
    assert_eq!(endless.decode(&mut buf), Ok(Decoded::NeedMore));
    buf.extend_from_slice(&[b'a'; 40]);
    assert_eq!(endless.decode(&mut buf), Err(BodyError::TrailersTooLarge));
}

#[test]
fn chunked_cut_anywhere_is_incomplete() {
    let input = b"5\r\nhello\r\n0\r\nX: 1\r\n\r\n";
    for at in 0..input.len() {
        assert_eq!(
            feed(Decoder::chunked(), &[&input[..at]], true),
            Err(BodyError::Incomplete),
            "cut at {at}"
        );
    }
}

#[test]
fn hints() {
    let mut decoder = Decoder::chunked();
    assert_eq!(decoder.remaining_hint(), None);
    let mut buf = BytesMut::from(&b"a\r\nabc"[..]);
    assert!(matches!(decoder.decode(&mut buf), Ok(Decoded::Data(_))));
    assert_eq!(decoder.remaining_hint(), Some(7));
    assert_eq!(decoder.exact_remaining(), None);
    assert_eq!(Decoder::length(9).exact_remaining(), Some(9));
}

fn wire(encoder: &mut Encoder, parts: &[&[u8]], trailers: Option<&HeaderMap>) -> Vec<u8> {
    let mut out = BytesMut::new();
    for part in parts {
        let frame = encoder.frame(part.len()).unwrap();
        out.extend_from_slice(frame.head());
        out.extend_from_slice(part);
        out.extend_from_slice(frame.tail);
    }
    encoder.finish(trailers, &mut out).unwrap();
    out.to_vec()
}

#[test]
fn chunked_encoding() {
    let mut encoder = Encoder::chunked();
    assert!(encoder.is_chunked());
    let out = wire(&mut encoder, &[b"hello", b"", &[b'x'; 300]], None);
    let mut expected = b"5\r\nhello\r\n12c\r\n".to_vec();
    expected.extend_from_slice(&[b'x'; 300]);
    expected.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_eq!(out, expected);
    assert!(encoder.is_finished());
    assert_eq!(encoder.frame(1), Err(EncodeError::Finished));
}

#[test]
fn chunk_head_of_the_largest_size() {
    let frame = Frame::chunk(usize::MAX);
    assert_eq!(frame.head().len(), usize::BITS as usize / 4 + 2);
    assert!(frame.head().ends_with(b"\r\n"));
    assert_eq!(Frame::chunk(0).head(), b"0\r\n");
}

#[test]
fn chunked_trailers_round_trip() {
    let sent = trailers(&[("x-checksum", "42"), ("x-multi", "a"), ("x-multi", "b")]);
    let mut with_forbidden = sent.clone();
    with_forbidden.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
    let out = wire(&mut Encoder::chunked(), &[b"abc"], Some(&with_forbidden));
    let decoded = every_split(&Decoder::chunked(), &out, false).unwrap();
    assert_eq!(decoded.data, b"abc");
    assert_eq!(decoded.trailers, Some(sent));
    assert!(decoded.rest.is_empty());
    // Empty trailers: a plain last chunk.
    let out = wire(&mut Encoder::chunked(), &[], Some(&HeaderMap::new()));
    assert_eq!(out, LAST_CHUNK);
}

#[test]
fn round_trip_random_splits() {
    // Deterministic pseudo-random data and frame sizes.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..50 {
        let parts: Vec<Vec<u8>> = (0..next() % 8)
            .map(|_| (0..next() % 40).map(|_| next() as u8).collect())
            .collect();
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let out = wire(&mut Encoder::chunked(), &refs, None);
        let decoded = every_split(&Decoder::chunked(), &out, false).unwrap();
        assert_eq!(decoded.data, parts.concat());
    }
}

#[test]
fn length_encoding_checks_the_count() {
    let mut encoder = Encoder::length(5);
    let mut dst = BytesMut::new();
    encoder.encode_into(b"hel", &mut dst).unwrap();
    assert_eq!(encoder.frame(3), Err(EncodeError::TooLong(1)));
    assert_eq!(
        encoder.finish(None, &mut dst),
        Err(EncodeError::TooShort(2))
    );
    encoder.encode_into(b"lo", &mut dst).unwrap();
    encoder
        .finish(Some(&trailers(&[("x", "1")])), &mut dst)
        .unwrap();
    assert_eq!(&dst[..], b"hello");
}

#[test]
fn close_delimited_encoding_is_raw() {
    let mut encoder = Encoder::close_delimited();
    let out = wire(&mut encoder, &[b"ab", b"cd"], None);
    assert_eq!(out, b"abcd");
}
