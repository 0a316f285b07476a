//! Header rewriting's tests: hop-by-hop removal, the fields sluice owns,
//! request ids, and the forwarding fields written in one pass and by a map
//! alike.

use super::*;

#[test]
fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONNECTION,
        HeaderValue::from_static("keep-alive, x-secret"),
    );
    headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    headers.insert("x-secret", HeaderValue::from_static("1"));
    headers.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
    headers.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    headers.insert("x-kept", HeaderValue::from_static("1"));
    headers.insert("proxy", HeaderValue::from_static("http://evil:8080"));
    headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
    headers.insert("proxyish", HeaderValue::from_static("kept"));
    strip_hop_by_hop(&mut headers);
    let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
    left.sort_unstable();
    assert_eq!(left, ["proxyish", "x-kept"]);
}

#[test]
fn every_hop_by_hop_header_is_known_by_its_text() {
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        assert_eq!(hop_by_hop_index(name.as_str()), Some(i), "{name}");
    }
    for other in [
        "host",
        "connections",
        "tee",
        "x-upgrade",
        "proxy-connection",
    ] {
        assert_eq!(hop_by_hop_index(other), None, "{other}");
    }
}

#[test]
fn connection_cannot_name_the_headers_sluice_owns() {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONNECTION,
        HeaderValue::from_static("X-Request-Id, host, forwarded, x-forwarded-for, x-other"),
    );
    for name in [
        "x-request-id",
        "host",
        "forwarded",
        "x-forwarded-for",
        "x-other",
    ] {
        headers.insert(name, HeaderValue::from_static("1"));
    }
    strip_hop_by_hop(&mut headers);
    let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
    left.sort_unstable();
    assert_eq!(
        left,
        ["forwarded", "host", "x-forwarded-for", "x-request-id"]
    );
}

#[test]
fn a_request_id_is_kept_only_when_sane() {
    for sane in [
        "abc-123",
        "0f8fad5b-d9cb-469f-a165-70867728950e",
        "a:b.c_d+e/f=@",
    ] {
        assert!(is_sane_request_id(sane.as_bytes()), "{sane}");
    }
    let long = "a".repeat(MAX_REQUEST_ID_BYTES + 1);
    for insane in ["", "a b", "a\"b", "<script>", "a,b", long.as_str()] {
        assert!(!is_sane_request_id(insane.as_bytes()), "{insane}");
    }
    let mut headers = HeaderMap::new();
    headers.append(X_REQUEST_ID, HeaderValue::from_static("one"));
    headers.append(X_REQUEST_ID, HeaderValue::from_static("two"));
    let id = request_id(ClientFields::Map(&headers));
    assert_eq!(id.len(), 32);
    headers.remove(X_REQUEST_ID);
    headers.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
    assert_eq!(request_id(ClientFields::Map(&headers)), "abc-123");
}

#[test]
fn http2_authority_and_host_must_agree() {
    let h2 = |uri: &str, host: Option<&str>| {
        let mut req = Request::get(uri).version(Version::HTTP_2);
        if let Some(host) = host {
            req = req.header(header::HOST, host);
        }
        let req = req.body(()).unwrap();
        check_host(&req, ClientFields::Map(req.headers()))
    };
    assert!(h2("http://a.example/x", None).is_ok());
    assert!(h2("http://a.example/x", Some("A.EXAMPLE")).is_ok());
    assert!(h2("http://a.example/x", Some("b.example")).is_err());
    assert!(h2("http://a.example:8080/x", Some("a.example")).is_err());
    assert!(h2("http://u:p@a.example/x", None).is_err());
    assert!(h2("/x", None).is_err(), "neither :authority nor Host");
    assert!(h2("/x", Some("a.example")).is_ok());
}

#[test]
fn a_plain_keep_alive_message_keeps_everything_else() {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
    headers.insert(header::DATE, HeaderValue::from_static("today"));
    strip_hop_by_hop(&mut headers);
    assert_eq!(headers.len(), 2);
    assert!(!headers.contains_key(header::CONNECTION));
}

#[test]
fn forwarding_headers_are_added_without_formatting_surprises() {
    let mut text = BytesMut::new();
    write_ip(&mut text, "10.0.255.7".parse().unwrap(), true).unwrap();
    assert_eq!(&text[..], b"10.0.255.7");
    text.clear();
    write_ip(&mut text, "2001:db8::1".parse().unwrap(), true).unwrap();
    assert_eq!(&text[..], b"\"[2001:db8::1]\"");
    text.clear();
    write_ip(&mut text, "2001:db8::1".parse().unwrap(), false).unwrap();
    assert_eq!(&text[..], b"2001:db8::1");
    let id = request_id(ClientFields::Map(&HeaderMap::new()));
    assert_eq!(id.len(), 32);
    assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
    assert_ne!(
        request_id(ClientFields::Map(&HeaderMap::new())),
        id,
        "each id made is new"
    );
}

/// The fields `apply` leaves in a map, as sorted `name: value` lines
/// (one per value), and those `write_fields` writes, must agree, whether
/// it writes from a map or from an HTTP/1 head's fields (names sent in
/// odd casing; compared in lower case).
fn both_ways(pairs: &[(&str, &str)], forwarding: &Forwarding) -> [Vec<String>; 3] {
    let mut headers = HeaderMap::new();
    let mut raw = String::from("GET / HTTP/1.1\r\n");
    for (name, value) in pairs {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        raw.push_str(&format!("{}: {value}\r\n", odd_case(name)));
    }
    raw.push_str("\r\n");
    let head = crate::http::h1::request::complete(&raw);
    let default_host = HeaderValue::from_static("target:80");
    let lines = |fields: ClientFields<'_>| {
        let mut written = BytesMut::new();
        forwarding.write_fields(fields, &default_host, &mut written);
        let mut lines: Vec<String> = std::str::from_utf8(&written)
            .unwrap()
            .split_terminator("\r\n")
            .map(|line| {
                let (name, value) = line.split_once(": ").unwrap();
                format!("{}: {value}", name.to_ascii_lowercase())
            })
            .collect();
        lines.sort();
        lines
    };
    let written = lines(ClientFields::Map(&headers));
    let copied = lines(ClientFields::H1(&head.fields));
    forwarding.apply(&mut headers);
    if !headers.contains_key(header::HOST) {
        headers.insert(header::HOST, default_host.clone());
    }
    headers.remove(header::CONTENT_LENGTH);
    let mut applied: Vec<String> = headers
        .iter()
        .map(|(n, v)| format!("{}: {}", n, v.to_str().unwrap()))
        .collect();
    applied.sort();
    [written, copied, applied]
}

/// `x-forwarded-for` as `X-fORWARDED-fOR`.
fn odd_case(name: &str) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

#[test]
fn writing_the_fields_gives_what_applying_them_to_a_map_does() {
    let requests: [&[(&str, &str)]; 6] = [
        &[
            ("host", "a.example"),
            ("user-agent", "ab"),
            ("accept", "*/*"),
            ("connection", "keep-alive"),
        ],
        &[
            ("host", "a.example"),
            ("connection", "x-secret, close, X-Request-Id"),
            ("x-secret", "1"),
            ("x-request-id", "abc"),
            ("x-request-id", "def"),
            ("proxy-authorization", "Basic x"),
            ("te", "trailers"),
            ("content-length", "3"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
        ],
        &[
            ("x-forwarded-for", "203.0.113.9, 10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("forwarded", "for=203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "orig.example"),
            ("upgrade", "h2c"),
            ("keep-alive", "timeout=5"),
        ],
        &[("transfer-encoding", "chunked"), ("proxy", "http://evil")],
        &[],
        &[
            ("host", "b.example"),
            ("x-dup", "1"),
            ("connection", "keep-alive, X-Named, Expect"),
            ("x-dup", "2"),
            ("x-named", "s"),
            ("expect", "100-continue"),
            ("date", "d"),
            ("trailer", "x"),
            ("content-length", "0"),
            ("proxy-connection", "keep-alive"),
        ],
    ];
    for trusted in [false, true] {
        for (i, pairs) in requests.iter().enumerate() {
            for host in [None, Some(HeaderValue::from_static("routed.example:8080"))] {
                for upgrade in [None, Some(HeaderValue::from_static("websocket"))] {
                    let forwarding = Forwarding {
                        peer: Peer {
                            ip: "192.0.2.7".parse().unwrap(),
                            proto: "https",
                            trusted,
                        },
                        request_id: HeaderValue::from_static("id-1"),
                        host: host.clone(),
                        upgrade,
                        fields: None,
                    };
                    let [written, copied, applied] = both_ways(pairs, &forwarding);
                    assert_eq!(written, applied, "request {i}, trusted {trusted}");
                    assert_eq!(copied, applied, "request {i}, trusted {trusted}");
                }
            }
        }
    }
}

#[test]
fn host_text_is_rfc_3986_host_and_port_bytes() {
    for b in 0..=255u8 {
        let expected = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(&b);
        assert_eq!(is_host_text(&[b]), expected, "byte {b:#04x}");
    }
    assert!(is_host_text(b"[::1]:8080"));
    assert!(!is_host_text(b"user@host"));
    assert!(!is_host_text(b""));
}
