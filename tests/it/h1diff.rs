//! Differential test: sluice's HTTP/1 response codec against hyper's
//! client. For each tricky response, both must agree on whether the head is
//! taken, its status, and the body the framing gives (or that the body is
//! broken). hyper runs as it did for sluice before: `client::conn::http1`,
//! here over an in-memory duplex fed the same bytes.
//!
//! Deliberate differences (see `sluice::http::h1`): trailer fields that may
//! not be trailers (Content-Length, Host, ...) are dropped, so trailers are
//! compared on `x-` fields only.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use sluice::http::h1::{Decoded, HeadLimits, parse_response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a client made of a response.
#[derive(Debug, PartialEq, Eq)]
enum View {
    /// The head was refused (or never completed).
    Rejected,
    /// A head, and a body read to its end.
    Whole {
        status: StatusCode,
        data: Vec<u8>,
        trailers: Vec<(String, String)>,
    },
    /// A head, then a body that broke off.
    Broken { status: StatusCode },
}

fn x_fields(map: Option<&http::HeaderMap>) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = map
        .into_iter()
        .flat_map(|m| m.iter())
        .filter(|(name, _)| name.as_str().starts_with("x-"))
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    fields.sort();
    fields
}

async fn hyper_view(bytes: &'static [u8], method: Method) -> View {
    let (client_io, mut server_io) = tokio::io::duplex(1 << 20);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(client_io))
            .await
            .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    tokio::spawn(async move {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match server_io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let _ = server_io.write_all(bytes).await;
        let _ = server_io.shutdown().await;
        // Hold the stream until the client is done with it.
        let _ = server_io.read(&mut buf).await;
    });
    let req = Request::builder()
        .method(method)
        .uri("/")
        .header("host", "x")
        .body(Empty::new())
        .unwrap();
    let within = Duration::from_secs(5);
    let response = match tokio::time::timeout(within, sender.send_request(req)).await {
        Ok(Ok(response)) => response,
        Ok(Err(_)) => return View::Rejected,
        Err(_) => panic!("hyper hung on {:?}", String::from_utf8_lossy(bytes)),
    };
    let status = response.status();
    match tokio::time::timeout(within, response.into_body().collect()).await {
        Ok(Ok(collected)) => View::Whole {
            status,
            trailers: x_fields(collected.trailers()),
            data: collected.to_bytes().to_vec(),
        },
        Ok(Err(_)) => View::Broken { status },
        Err(_) => panic!("hyper's body hung on {:?}", String::from_utf8_lossy(bytes)),
    }
}

fn sluice_view(response: &[u8], method: &Method) -> View {
    let mut buf = BytesMut::from(response);
    let limits = HeadLimits::default();
    let head = loop {
        match parse_response(&mut buf, method == Method::HEAD, &limits) {
            Ok(Some(head)) if head.is_interim() => continue,
            Ok(Some(head)) => break head,
            // Incomplete at the end of the stream, or malformed.
            Ok(None) | Err(_) => return View::Rejected,
        }
    };
    let mut decoder = head.framing.decoder();
    let mut data = Vec::new();
    let mut trailers = None;
    for _ in 0..10_000 {
        let step = match decoder.decode(&mut buf) {
            Ok(Decoded::NeedMore) => decoder.eof(),
            other => other,
        };
        match step {
            Ok(Decoded::Data(bytes)) => data.extend_from_slice(&bytes),
            Ok(Decoded::Trailers(t)) => trailers = Some(t),
            Ok(Decoded::End) => {
                return View::Whole {
                    status: head.status,
                    data,
                    trailers: x_fields(trailers.as_ref()),
                };
            }
            Ok(Decoded::NeedMore) => unreachable!("eof never needs more"),
            Err(_) => {
                return View::Broken {
                    status: head.status,
                };
            }
        }
    }
    panic!("the decoder did not end");
}

/// Responses that put the framing rules to the test.
const CASES: &[(&str, &[u8])] = &[
    ("GET", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"),
    ("GET", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello, and more"),
    ("GET", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel"),
    ("GET", b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\ncontent-length: 5\r\n\r\nhello"),
    ("GET", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!"),
    ("GET", b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello"),
    ("GET", b"HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\nhello"),
    ("GET", b"HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551615\r\n\r\nx"),
    ("GET", b"HTTP/1.1 200 OK\r\ncontent-length: 0x5\r\n\r\nhello"),
    ("GET", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ("GET", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: nonsense\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ("GET", b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nraw bytes to the close"),
    ("GET", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ("GET", b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ("GET", b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ("GET", b"HTTP/1.0 200 OK\r\n\r\nto the close"),
    ("GET", b"HTTP/1.1 200 OK\r\n\r\nto the close"),
    ("GET", b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"),
    ("GET", b"HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n"),
    ("HEAD", b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n"),
    ("HEAD", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
    ("GET", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    ("GET", b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    ("GET", b"HTTP/1.1 100 Continue\r\n\r\n"),
    ("GET", b"HTTP/1.1 200 OK\r\nx-folded: a\r\n b\r\ncontent-length: 0\r\n\r\n"),
    ("GET", b"HTTP/1.1 200 OK\r\ncontent-length : 2\r\n\r\nok"),
    ("GET", b"HTTP/1.1 200 OK\r\nbad name: 1\r\ncontent-length: 2\r\n\r\nok"),
    ("GET", b"HTTP/1.1 200\r\ncontent-length: 2\r\n\r\nok"),
    ("GET", b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok"),
    ("GET", b"HTTP/1.1 099 Odd\r\ncontent-length: 2\r\n\r\nok"),
    ("GET", b"HTTP/1.1 599 Whatever\r\ncontent-length: 2\r\n\r\nok"),
    ("GET", b"HTTP/2.0 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    ("GET", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n"),
    ("GET", b"garbage\r\n\r\n"),
    ("GET", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n1;a;b=\"c\"\r\n!\r\n0\r\n\r\n"),
    ("GET", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-sum: 1\r\nx-two: 2\r\n\r\n"),
    ("GET", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nA\r\n0123456789\r\n00\r\n\r\n"),
    ("GET", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5  \r\nhello\r\n0\r\n\r\n"),
    ("GET", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
    ("GET", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n"),
    ("GET", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n"),
    ("GET", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"),
    ("GET", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n"),
    ("GET", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n"),
    ("GET", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x\ny\r\nhello\r\n0\r\n\r\n"),
    ("GET", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10000000000000000\r\nx\r\n0\r\n\r\n"),
    ("GET", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"),
    ("GET", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel"),
    ("GET", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r"),
    ("GET", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nx-a: 1\r\n"),
];

#[tokio::test]
async fn response_framing_matches_hyper() {
    let mut differences = Vec::new();
    for (method, response) in CASES {
        let method: Method = method.parse().unwrap();
        let hyper = hyper_view(response, method.clone()).await;
        let sluice = sluice_view(response, &method);
        if hyper != sluice {
            differences.push(format!(
                "{method} {:?}\n  hyper:  {hyper:?}\n  sluice: {sluice:?}",
                String::from_utf8_lossy(response)
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}
