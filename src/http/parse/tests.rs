//! Parser tests: the malformed corpus, limits checked before buffering, and property tests
//! (any split of valid input gives the same requests; garbage never panics).

use super::*;
use crate::core::rand::SplitMix64;

const LIMITS: Limits = Limits { max_request_line_bytes: 8192, max_header_bytes: 1024, max_body_bytes: 4096 };

/// Feeds `input` in the given pieces the way a connection does, returning every request
/// (or the first error).
fn drive(pieces: &[&[u8]], limits: &Limits) -> Result<Vec<Request>, HttpError> {
    let mut parser = Parser::new();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match parser.parse(&buf, limits)? {
                Progress::NeedMore { consumed, .. } => {
                    buf.drain(..consumed);
                    break;
                }
                Progress::Done { request, consumed } => {
                    buf.drain(..consumed);
                    out.push(*request);
                }
            }
        }
    }
    Ok(out)
}

fn one(input: &str) -> Result<Vec<Request>, HttpError> {
    drive(&[input.as_bytes()], &LIMITS)
}

fn status_of(input: &str) -> u16 {
    one(input).expect_err("must be refused").status()
}

#[test]
fn get_with_keep_alive_and_auth_headers() {
    let reqs = one("GET /v1/locks/a?x=1 HTTP/1.1\r\nHost: h\r\nX-Api-Key: k1 \r\nx-ticket: T\r\n\r\n").unwrap();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!((r.method, r.target.as_str(), r.minor_version, r.keep_alive), (Method::Get, "/v1/locks/a?x=1", 1, true));
    assert_eq!(r.api_key.as_deref(), Some("k1"));
    assert_eq!(r.ticket.as_deref(), Some("T"));
}

#[test]
fn connection_close_and_http_1_0_defaults() {
    assert!(!one("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").unwrap()[0].keep_alive);
    assert!(!one("GET / HTTP/1.0\r\n\r\n").unwrap()[0].keep_alive);
    assert!(one("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap()[0].keep_alive);
}

#[test]
fn post_with_content_length_and_pipelining() {
    let reqs =
        one("POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].body, b"hello");
    assert_eq!(reqs[1].target, "/b");
}

#[test]
fn chunked_body_is_decoded_with_extensions_and_trailers() {
    let reqs = one("POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n")
        .unwrap();
    assert_eq!(reqs[0].body, b"hello world");
}

#[test]
fn leading_empty_lines_are_ignored() {
    assert_eq!(one("\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n").unwrap().len(), 1);
}

#[test]
fn malformed_corpus_gets_the_right_status() {
    let huge_header = format!("GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n", "a".repeat(2000));
    let huge_uri = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "u".repeat(9000));
    let many_headers = format!("GET / HTTP/1.1\r\nHost: h\r\n{}\r\n", "A: b\r\n".repeat(MAX_HEADERS + 1));
    let cases: Vec<(&str, String, u16)> = vec![
        ("garbage request line", "\x00\x01\x02\x03 \r\n\r\n".into(), 400),
        ("missing version", "GET /\r\nHost: h\r\n\r\n".into(), 400),
        ("bad version", "GET / HTTP/2.0\r\nHost: h\r\n\r\n".into(), 400),
        ("space in target", "GET /a b HTTP/1.1\r\nHost: h\r\n\r\n".into(), 400),
        ("absolute target of another scheme", "GET ftp://x/ HTTP/1.1\r\nHost: h\r\n\r\n".into(), 400),
        ("absolute target with userinfo", "GET http://u@x/ HTTP/1.1\r\nHost: h\r\n\r\n".into(), 400),
        ("absolute target without host", "GET http:///a HTTP/1.1\r\nHost: h\r\n\r\n".into(), 400),
        ("relative target", "GET a/b HTTP/1.1\r\nHost: h\r\n\r\n".into(), 400),
        ("authority form", "GET example.com:80 HTTP/1.1\r\nHost: h\r\n\r\n".into(), 400),
        ("asterisk form", "GET * HTTP/1.1\r\nHost: h\r\n\r\n".into(), 400),
        ("options asterisk", "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n".into(), 501),
        ("connect", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".into(), 501),
        ("missing host", "GET / HTTP/1.1\r\n\r\n".into(), 400),
        ("duplicate host", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".into(), 400),
        (
            "duplicate content-length",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx".into(),
            400,
        ),
        (
            "conflicting content-length",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx".into(),
            400,
        ),
        ("content-length list", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 1\r\n\r\nx".into(), 400),
        ("negative content-length", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n".into(), 400),
        (
            "te and cl",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
            400,
        ),
        (
            "duplicate te",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
            400,
        ),
        ("te in http/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(), 400),
        ("unknown coding", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n".into(), 501),
        ("bad chunk size", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".into(), 400),
        (
            "chunk longer than size",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc\r\n".into(),
            400,
        ),
        ("header folding", "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n".into(), 400),
        ("bad header name", "GET / HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n".into(), 400),
        ("expectation", "POST / HTTP/1.1\r\nHost: h\r\nExpect: magic\r\n\r\n".into(), 417),
        ("huge header", huge_header, 431),
        ("too many headers", many_headers, 431),
        ("huge uri", huge_uri, 414),
        ("huge body", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4097\r\n\r\n".into(), 413),
        (
            "huge chunked body",
            format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n", 4097),
            413,
        ),
    ];
    for (what, input, status) in cases {
        assert_eq!(status_of(&input), status, "{what}");
    }
}

#[test]
fn limits_are_enforced_before_the_whole_input_is_buffered() {
    // A header section that never ends is refused once it passes the limit.
    let mut parser = Parser::new();
    let mut buf = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
    let mut refused_at = None;
    for i in 0..10_000 {
        buf.push(b'a');
        match parser.parse(&buf, &LIMITS) {
            Ok(Progress::NeedMore { consumed: 0, .. }) => {}
            Err(e) => {
                refused_at = Some((i, e));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let (at, e) = refused_at.expect("refused");
    assert_eq!(e, HttpError::HeaderTooLarge);
    assert!(at <= LIMITS.max_header_bytes, "refused only after {at} bytes");
    // A request line that never ends: 414 as soon as it is longer than the limit.
    let mut parser = Parser::new();
    let line = vec![b'G'; LIMITS.max_request_line_bytes + 3];
    assert_eq!(parser.parse(&line, &LIMITS), Err(HttpError::UriTooLong));
    // A declared body over the limit: refused from the head alone.
    let mut parser = Parser::new();
    let head = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 999999999999\r\n\r\n";
    assert_eq!(parser.parse(head, &LIMITS), Err(HttpError::BodyTooLarge { max: 4096 }));
}

#[test]
fn continue_is_due_when_the_head_arrives_without_its_body() {
    let mut parser = Parser::new();
    let head = b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
    assert_eq!(parser.parse(head, &LIMITS), Ok(Progress::NeedMore { consumed: head.len(), send_continue: true }));
    match parser.parse(b"abc", &LIMITS).unwrap() {
        Progress::Done { request, consumed } => {
            assert_eq!((request.body.as_slice(), consumed), (&b"abc"[..], 3));
        }
        other => panic!("{other:?}"),
    }
}

/// Valid requests of every shape, concatenated (a pipelined stream).
fn valid_stream() -> (Vec<u8>, usize) {
    let parts = [
        "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n".to_string(),
        "POST /v1/locks/x/acquire HTTP/1.1\r\nHost: a\r\nContent-Length: 14\r\nX-Api-Key: key\r\n\r\n{\"ttl_ms\":100}"
            .to_string(),
        "POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n"
            .to_string(),
        "\r\nGET /after-crlf HTTP/1.1\nHost: a\n\n".to_string(),
        "PUT /d HTTP/1.0\r\nContent-Length: 0\r\n\r\n".to_string(),
        format!("POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n{}", "z".repeat(1000)),
    ];
    (parts.concat().into_bytes(), parts.len())
}

#[test]
fn arbitrary_splits_give_the_same_requests() {
    let (stream, count) = valid_stream();
    let whole = drive(&[&stream], &LIMITS).unwrap();
    assert_eq!(whole.len(), count);
    let mut rng = SplitMix64::new(42);
    for _ in 0..2_000 {
        let mut pieces: Vec<&[u8]> = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let step = 1 + rng.below(40.min(stream.len() - at));
            pieces.push(&stream[at..at + step]);
            at += step;
        }
        assert_eq!(drive(&pieces, &LIMITS).unwrap(), whole);
    }
    // Byte by byte too.
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(drive(&bytes, &LIMITS).unwrap(), whole);
}

#[test]
fn garbage_and_mutations_never_panic() {
    let (stream, _) = valid_stream();
    let mut rng = SplitMix64::new(7);
    let alphabet = b"GETPOST /\r\n:0123456789abcdefxHTTP/1.;-, \t\x00\xff";
    for round in 0..20_000 {
        let input: Vec<u8> = if round % 2 == 0 {
            (0..rng.below(300)).map(|_| alphabet[rng.below(alphabet.len())]).collect()
        } else {
            let mut m = stream.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(m.len());
                m[i] = alphabet[rng.below(alphabet.len())];
            }
            m
        };
        let cut = rng.below(input.len() + 1);
        let _ = drive(&[&input[..cut], &input[cut..]], &LIMITS);
    }
}

#[test]
fn r12_duplicate_api_keys_are_refused_naming_the_header() {
    let e = one("GET / HTTP/1.1\r\nHost: h\r\nx-api-key: a\r\nX-API-KEY: b\r\n\r\n").unwrap_err();
    assert_eq!(e.status(), 400);
    assert!(e.to_string().contains("x-api-key"), "{e}");
    // Even the same key twice: the request is ambiguous in form, whatever its values.
    assert_eq!(status_of("GET / HTTP/1.1\r\nHost: h\r\nx-api-key: a\r\nx-api-key: a\r\n\r\n"), 400);
    assert_eq!(one("GET / HTTP/1.1\r\nHost: h\r\nx-api-key: a\r\n\r\n").unwrap()[0].api_key.as_deref(), Some("a"));
}

#[test]
fn a_bearer_token_is_the_api_key_by_the_same_rules_as_x_api_key() {
    let key = |headers: &str| one(&format!("GET / HTTP/1.1\r\nHost: h\r\n{headers}\r\n")).map(|r| r[0].api_key.clone());
    // The Bearer scheme in any case, one or more blanks before the token, blanks trimmed.
    for headers in ["Authorization: Bearer k1\r\n", "authorization: bearer   k1 \r\n", "AUTHORIZATION: BEARER\tk1\r\n"]
    {
        assert_eq!(key(headers), Ok(Some("k1".into())), "{headers:?}");
    }
    // The same key both ways is one key; without a token it is an empty key, as an empty
    // x-api-key is (and refused as a key that is not configured).
    assert_eq!(key("x-api-key: k1\r\nAuthorization: Bearer k1\r\n"), Ok(Some("k1".into())));
    assert_eq!(key("Authorization: Bearer\r\n"), Ok(Some(String::new())));
    // Another scheme carries no key; x-api-key still does.
    assert_eq!(key("Authorization: Basic a2V5Og==\r\n"), Ok(None));
    assert_eq!(key("Authorization: Bearerk1\r\n"), Ok(None));
    assert_eq!(key("Authorization: Basic a2V5Og==\r\nx-api-key: k2\r\n"), Ok(Some("k2".into())));
    // Two keys that differ, or two Authorization fields: which would decide? 400, naming
    // the headers, never the keys.
    for (headers, says) in [
        ("x-api-key: k1\r\nAuthorization: Bearer k2\r\n", "x-api-key and Authorization: Bearer carry different keys"),
        ("Authorization: Bearer k2\r\nx-api-key: k1\r\n", "x-api-key and Authorization: Bearer carry different keys"),
        ("Authorization: Bearer k1\r\nAuthorization: Bearer k1\r\n", "more than one Authorization header"),
        ("Authorization: Basic x\r\nAuthorization: Bearer k1\r\n", "more than one Authorization header"),
    ] {
        let e = key(headers).unwrap_err();
        assert_eq!((e.status(), e.to_string().as_str()), (400, says), "{headers:?}");
    }
    let not_utf8 = drive(&[b"GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer \xff\r\n\r\n"], &LIMITS);
    assert_eq!(not_utf8.map_err(|e| e.status()).err(), Some(400));
}

#[test]
fn r12_absolute_form_targets_are_reduced_to_path_and_query() {
    for (target, origin) in [
        ("http://example.com:8080/v1/locks?prefix=a", "/v1/locks?prefix=a"),
        ("HTTP://example.com/healthz", "/healthz"),
        ("https://[::1]:8443/v1/locks/a%2Fb", "/v1/locks/a%2Fb"),
        ("http://example.com", "/"),
        ("http://example.com?x=1", "/?x=1"),
    ] {
        let reqs = one(&format!("GET {target} HTTP/1.1\r\nHost: other\r\n\r\n")).unwrap();
        assert_eq!(reqs[0].target, origin, "{target}");
    }
    // Host stays required in HTTP/1.1 (RFC 9112 §3.2), even with an authority in the target.
    assert_eq!(status_of("GET http://example.com/ HTTP/1.1\r\n\r\n"), 400);
    assert_eq!(one("GET http://example.com/a HTTP/1.0\r\n\r\n").unwrap()[0].target, "/a");
}

/// Every way of cutting `input` in two, parsed as two reads.
fn every_split(input: &[u8]) -> Vec<Result<Vec<Request>, HttpError>> {
    (0..=input.len()).map(|cut| drive(&[&input[..cut], &input[cut..]], &LIMITS)).collect()
}

#[test]
fn r12_a_head_at_the_header_limit_parses_the_same_whatever_the_split() {
    // Found by the fuzzer: header fields of exactly `max_header_bytes` plus the empty line
    // were accepted when the head arrived whole but refused with 431 when a read ended
    // just before the empty line's last byte.
    let request_line = "GET / HTTP/1.1\r\n";
    let field = |len: usize| format!("Host: h\r\nX: {}\r\n", "a".repeat(len - "Host: h\r\nX: \r\n".len()));
    for ending in ["\r\n", "\n"] {
        let at_limit = format!("{request_line}{}{ending}", field(LIMITS.max_header_bytes));
        let whole = one(&at_limit).expect("fields of exactly the limit are accepted");
        assert_eq!(whole.len(), 1);
        for (cut, got) in every_split(at_limit.as_bytes()).into_iter().enumerate() {
            assert_eq!(got.as_ref(), Ok(&whole), "cut at {cut} of {ending:?}");
        }
        for extra in 1..=2 {
            let over = format!("{request_line}{}{ending}", field(LIMITS.max_header_bytes + extra));
            let whole = one(&over);
            for (cut, got) in every_split(over.as_bytes()).into_iter().enumerate() {
                assert_eq!(got, whole, "cut at {cut} of {extra} over, {ending:?}");
            }
        }
    }
    let crlf_over = format!("{request_line}{}\r\n", field(LIMITS.max_header_bytes + 1));
    assert_eq!(one(&crlf_over), Err(HttpError::HeaderTooLarge));
}
