//! The upstream side of sluice's HTTP/1 codec on arbitrary bytes from a
//! backend: a response head (interim ones passed over) and its body, fed in
//! two pieces split anywhere. Never panics, always ends (every step either
//! consumes bytes, yields a frame or waits), never yields more body than
//! was given, and gives the same answer however the bytes are split.

#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice::http::h1::{Decoded, HeadLimits, parse_response};

#[derive(Arbitrary, Debug)]
struct Input {
    head_request: bool,
    split: u16,
    bytes: Vec<u8>,
}

/// What a client made of the bytes: the status and body (or where it
/// failed), the end of stream given after the last byte.
fn run(bytes: &[u8], split: usize, head_request: bool) -> (Option<u16>, Vec<u8>, bool) {
    let limits = HeadLimits::default();
    let mut buf = BytesMut::from(&bytes[..split]);
    let mut rest = Some(&bytes[split..]);
    let mut more = |buf: &mut BytesMut| match rest.take() {
        Some(rest) => {
            buf.extend_from_slice(rest);
            true
        }
        None => false,
    };
    let head = loop {
        match parse_response(&mut buf, head_request, &limits) {
            Ok(Some(head)) if head.is_interim() => continue,
            Ok(Some(head)) => break head,
            Ok(None) if more(&mut buf) => continue,
            Ok(None) | Err(_) => return (None, Vec::new(), false),
        }
    };
    let mut decoder = head.framing.decoder();
    let mut body = Vec::new();
    // Each step consumes at least a byte or ends: the input bounds them.
    for _ in 0..=bytes.len() + 2 {
        let step = match decoder.decode(&mut buf) {
            Ok(Decoded::NeedMore) if more(&mut buf) => continue,
            Ok(Decoded::NeedMore) => decoder.eof(),
            other => other,
        };
        match step {
            Ok(Decoded::Data(data)) => {
                assert!(!data.is_empty());
                body.extend_from_slice(&data);
            }
            Ok(Decoded::Trailers(_)) => {}
            Ok(Decoded::End) => return (Some(head.status.as_u16()), body, true),
            Ok(Decoded::NeedMore) => unreachable!("eof never waits"),
            Err(_) => return (Some(head.status.as_u16()), body, false),
        }
        assert!(body.len() <= bytes.len());
    }
    panic!("the decoder neither ended nor failed");
}

fuzz_target!(|input: Input| {
    let split = usize::from(input.split) % (input.bytes.len() + 1);
    let whole = run(&input.bytes, input.bytes.len(), input.head_request);
    let split = run(&input.bytes, split, input.head_request);
    assert_eq!(whole, split);
});
