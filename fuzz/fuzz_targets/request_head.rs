//! The HTTP/1 request codec on arbitrary bytes: the head parser never
//! panics, and either waits for more (only while under the size limit),
//! refuses with a 4xx, or yields one well-framed request whose body the
//! body decoder then takes off the rest without panicking or spinning.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice::http::h1::body::{Decoded, Decoder};
use sluice::http::h1::request::{self, Framing, HeadLimits};

const LIMITS: HeadLimits = HeadLimits {
    max_bytes: 4096,
    max_headers: 32,
};

fuzz_target!(|data: &[u8]| {
    let head = match request::parse(data, LIMITS) {
        Ok(None) => {
            assert!(data.len() <= LIMITS.max_bytes, "waited past the limit");
            return;
        }
        Err(err) => {
            let status = err.status().as_u16();
            assert!(status == 400 || status == 431, "{status}");
            return;
        }
        Ok(Some(head)) => head,
    };
    assert!(head.len <= data.len() && head.len <= LIMITS.max_bytes);
    assert!(
        head.parts.headers.is_empty(),
        "the fields are kept as they came"
    );
    let has = |name: &str| {
        head.fields
            .kept()
            .any(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
    };
    let mut decoder = match head.framing {
        Framing::Empty => return,
        Framing::Length(n) => {
            assert!(n > 0 && !has("transfer-encoding"));
            Decoder::length(n)
        }
        Framing::Chunked => {
            assert!(!has("content-length"));
            Decoder::chunked()
        }
    };
    let mut rest = BytesMut::from(&data[head.len..]);
    // Every step takes bytes or ends: at most one step per byte, plus the end.
    for _ in 0..=data.len() + 2 {
        match decoder.decode(&mut rest) {
            Ok(Decoded::Data(d)) => assert!(!d.is_empty()),
            Ok(Decoded::Trailers(_)) => {}
            Ok(Decoded::End) | Ok(Decoded::NeedMore) | Err(_) => return,
        }
    }
    panic!("the body decoder did not finish");
});
