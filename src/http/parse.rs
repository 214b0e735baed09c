//! The HTTP/1.1 request parser: incremental, bounded, and strict where leniency lets one
//! request be read two ways (request smuggling).
//!
//! Input arrives in arbitrary pieces; [`Parser::parse`] is called with everything buffered
//! and not yet consumed, and says how many bytes it consumed. Whatever the split, the
//! requests that come out are the same. Limits are checked as soon as the bytes that break
//! them are in, never after buffering more:
//! - request line longer than `max_request_line_bytes` → 414;
//! - header section (after the request line) longer than `max_header_bytes`, or more than
//!   [`MAX_HEADERS`] fields → 431;
//! - declared or decoded body longer than `max_body_bytes` → 413 (from the declared length
//!   alone, before any of the body is read);
//! - two `Content-Length`s, a bad one, `Transfer-Encoding` with `Content-Length`, two
//!   `Transfer-Encoding`s, two `Host`s, or HTTP/1.1 without `Host` → 400;
//! - two `x-api-key` fields, or two `Authorization` fields (which key would decide?) → 400;
//! - an API key in `x-api-key` and another in `Authorization: Bearer` → 400 (the same key
//!   in both is one key);
//! - a transfer coding other than `chunked` → 501.
//!
//! Request targets (RFC 9112 §3.2): the origin form (`/path?query`) and the absolute form
//! (`http://host:port/path?query`, which a server must accept; it is reduced to its path
//! and query, since nothing here is routed by host). `OPTIONS *` and `CONNECT` are valid
//! HTTP that this server does not implement → 501; the asterisk and authority forms with
//! any other method, or another scheme → 400.
//!
//! Only the header fields the server uses are kept; the rest are checked for syntax and
//! dropped.

use std::fmt;

/// Most header fields in one request.
pub const MAX_HEADERS: usize = 64;
/// Longest chunk-size line (size plus extensions) of a chunked body.
pub const MAX_CHUNK_LINE_BYTES: usize = 1024;

/// Size limits of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line.
    pub max_request_line_bytes: usize,
    /// Longest header section (and trailer section of a chunked body).
    pub max_header_bytes: usize,
    /// Longest body.
    pub max_body_bytes: usize,
}

/// Why a request was refused; each maps to one status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// Malformed or ambiguous (400).
    BadRequest(&'static str),
    /// The header section is too large (431).
    HeaderTooLarge,
    /// The request line is too long (414).
    UriTooLong,
    /// The body is too large (413).
    BodyTooLarge {
        /// The limit.
        max: usize,
    },
    /// A transfer coding the server does not implement (501).
    NotImplemented(&'static str),
    /// An `Expect` other than `100-continue` (417).
    ExpectationFailed,
}

impl HttpError {
    /// The status code.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::HeaderTooLarge => 431,
            Self::UriTooLong => 414,
            Self::BodyTooLarge { .. } => 413,
            Self::NotImplemented(_) => 501,
            Self::ExpectationFailed => 417,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadRequest(why) => f.write_str(why),
            Self::HeaderTooLarge => f.write_str("the request header section is too large"),
            Self::UriTooLong => f.write_str("the request line is too long"),
            Self::BodyTooLarge { max } => write!(f, "the request body exceeds {max} bytes"),
            Self::NotImplemented(why) => f.write_str(why),
            Self::ExpectationFailed => f.write_str("only Expect: 100-continue is supported"),
        }
    }
}

impl std::error::Error for HttpError {}

/// Request methods the server tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// PATCH
    Patch,
    /// OPTIONS
    Options,
    /// Any other token.
    Other,
}

impl Method {
    fn from_token(token: &str) -> Self {
        match token {
            "GET" => Self::Get,
            "HEAD" => Self::Head,
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "DELETE" => Self::Delete,
            "PATCH" => Self::Patch,
            "OPTIONS" => Self::Options,
            _ => Self::Other,
        }
    }

    /// The method's name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Patch => "PATCH",
            Self::Options => "OPTIONS",
            Self::Other => "OTHER",
        }
    }
}

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The request target in origin form (path and query; an absolute-form target is
    /// reduced to these).
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Whether the connection may stay open after the response.
    pub keep_alive: bool,
    /// The API key: `x-api-key`, or the token of `Authorization: Bearer` (an
    /// `Authorization` of another scheme carries no key).
    pub api_key: Option<String>,
    /// `x-ticket`.
    pub ticket: Option<String>,
    /// `Last-Event-ID`.
    pub last_event_id: Option<String>,
    /// `Cookie` (several fields joined with `; `), for waiting rooms.
    pub cookie: Option<String>,
    /// `X-Original-URI` (set by a proxy's `auth_request`), for waiting rooms' return path.
    pub original_uri: Option<String>,
    /// `Origin` (a browser's cross-origin call: docs/api.md, "Browser access").
    pub origin: Option<String>,
    /// The client sent `Expect: 100-continue`.
    pub expect_continue: bool,
    /// The body (decoded if it was chunked).
    pub body: Vec<u8>,
}

/// What one call to [`Parser::parse`] achieved.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// More bytes are needed. `consumed` bytes of the input were used up (drop them);
    /// `send_continue` says a `100 Continue` is due now (the head is in, the body is not).
    NeedMore {
        /// Bytes used up.
        consumed: usize,
        /// Send `HTTP/1.1 100 Continue` now.
        send_continue: bool,
    },
    /// A whole request; `consumed` bytes of the input belonged to it.
    Done {
        /// The request.
        request: Box<Request>,
        /// Bytes used up.
        consumed: usize,
    },
}

#[derive(Debug, Default)]
enum State {
    /// Waiting for the end of the head; `scanned` bytes were searched already.
    #[default]
    Head,
    /// Reading a body of known length.
    Body { request: Box<Request>, remaining: usize },
    /// Reading a chunked body.
    Chunked { request: Box<Request>, chunk: Chunk, trailer_bytes: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line.
    Size,
    /// Chunk data with this much left.
    Data(usize),
    /// The line end after chunk data.
    DataEnd,
    /// Trailer lines until an empty one.
    Trailer,
}

/// An incremental request parser for one connection.
#[derive(Debug, Default)]
pub struct Parser {
    state: State,
    scanned: usize,
}

/// The end of the head (index just past the empty line), searching from `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(off) = buf.get(i..)?.iter().position(|&b| b == b'\n') {
        let nl = i + off;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// A complete line (through `\n`) at the start of `buf`: its length including the ending.
fn line_len(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n').map(|p| p + 1)
}

fn trim_line(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(v.len());
    let end = v.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(start, |p| p + 1);
    &v[start..end]
}

fn header_text(v: &[u8]) -> Result<String, HttpError> {
    std::str::from_utf8(trim_ows(v))
        .map(str::to_string)
        .map_err(|_| HttpError::BadRequest("a header value is not valid UTF-8"))
}

/// The token of an `Authorization` value of the `Bearer` scheme (RFC 6750 §2.1; the scheme
/// name in any case), `None` for another scheme. A `Bearer` without a token is an empty key,
/// as an empty `x-api-key` is.
fn bearer_token(value: &[u8]) -> Result<Option<String>, HttpError> {
    let value = trim_ows(value);
    let scheme_end = value.iter().position(|&b| b == b' ' || b == b'\t').unwrap_or(value.len());
    if !value[..scheme_end].eq_ignore_ascii_case(b"bearer") {
        return Ok(None);
    }
    header_text(&value[scheme_end..]).map(Some)
}

/// The origin form (path and query) of a request target, or why it is refused.
fn origin_form(method: &str, target: &str) -> Result<String, HttpError> {
    if method == "CONNECT" {
        return Err(HttpError::NotImplemented("CONNECT is not supported: this server is not a proxy"));
    }
    if target.starts_with('/') {
        return Ok(target.to_string());
    }
    if target == "*" {
        return Err(if method == "OPTIONS" {
            HttpError::NotImplemented("OPTIONS * is not supported")
        } else {
            HttpError::BadRequest("the asterisk form (*) is only for OPTIONS")
        });
    }
    let Some((scheme, rest)) = target.split_once("://") else {
        return Err(HttpError::BadRequest(
            "the request target must be a path starting with '/' or an absolute http URI",
        ));
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(HttpError::BadRequest("the request target's scheme must be http or https"));
    }
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    if authority.is_empty() || authority.contains('@') {
        return Err(HttpError::BadRequest("the request target's authority must be a host (and port), nothing else"));
    }
    // `http://host` and `http://host?q` name the path "/" (RFC 9112 §3.2.1).
    Ok(if path.starts_with('/') { path.to_string() } else { format!("/{path}") })
}

impl Parser {
    /// A parser at the start of a request.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether part of a request has been read (its head or body is incomplete).
    pub fn in_request(&self) -> bool {
        !matches!(self.state, State::Head) || self.scanned > 0
    }

    /// Parses as much of `input` (everything buffered and not consumed yet) as it can.
    /// After an error the connection must be closed: the parser's state is undefined.
    pub fn parse(&mut self, input: &[u8], limits: &Limits) -> Result<Progress, HttpError> {
        match std::mem::take(&mut self.state) {
            State::Head => self.parse_head(input, limits),
            State::Body { mut request, remaining } => {
                let take = remaining.min(input.len());
                request.body.extend_from_slice(&input[..take]);
                if take == remaining {
                    return Ok(Progress::Done { request, consumed: take });
                }
                self.state = State::Body { request, remaining: remaining - take };
                Ok(Progress::NeedMore { consumed: take, send_continue: false })
            }
            State::Chunked { request, chunk, trailer_bytes } => {
                self.parse_chunked(request, chunk, trailer_bytes, input, 0, limits)
            }
        }
    }

    fn parse_head(&mut self, input: &[u8], limits: &Limits) -> Result<Progress, HttpError> {
        // Empty lines before a request line are ignored (RFC 9112 §2.2).
        let skip = input.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(input.len());
        if skip > 0 && self.scanned == 0 {
            return match self.parse_head(&input[skip..], limits)? {
                Progress::NeedMore { consumed, send_continue } => {
                    Ok(Progress::NeedMore { consumed: consumed + skip, send_continue })
                }
                Progress::Done { request, consumed } => Ok(Progress::Done { request, consumed: consumed + skip }),
            };
        }
        let first_line = line_len(input);
        match first_line {
            Some(n) if n > limits.max_request_line_bytes + 2 => return Err(HttpError::UriTooLong),
            None if input.len() > limits.max_request_line_bytes + 2 => return Err(HttpError::UriTooLong),
            _ => {}
        }
        let Some(head_end) = find_head_end(input, self.scanned.saturating_sub(2)) else {
            if let Some(n) = first_line {
                // A whole head may take `max_header_bytes + 2` (the empty line's CRLF, checked
                // below); one not ended yet needs at least one more byte, so only past
                // `max + 1` can no ending fit. A stricter bound here made the answer depend
                // on where a read happened to stop.
                if input.len() - n > limits.max_header_bytes + 1 {
                    return Err(HttpError::HeaderTooLarge);
                }
            }
            self.scanned = input.len();
            return Ok(Progress::NeedMore { consumed: 0, send_continue: false });
        };
        self.scanned = 0;
        if head_end - first_line.unwrap_or(0) > limits.max_header_bytes + 2 {
            return Err(HttpError::HeaderTooLarge);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&input[..head_end]) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err(HttpError::BadRequest("malformed request head")),
            Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeaderTooLarge),
            Err(httparse::Error::Version) => {
                return Err(HttpError::BadRequest("unsupported or malformed HTTP version"))
            }
            Err(httparse::Error::Token) => return Err(HttpError::BadRequest("malformed request line")),
            Err(httparse::Error::HeaderName | httparse::Error::HeaderValue) => {
                return Err(HttpError::BadRequest("malformed header field"))
            }
            Err(_) => return Err(HttpError::BadRequest("malformed request head")),
        }
        let (Some(method), Some(target), Some(minor_version)) = (parsed.method, parsed.path, parsed.version) else {
            return Err(HttpError::BadRequest("malformed request line"));
        };
        let target = origin_form(method, target)?;
        let mut request = Box::new(Request {
            method: Method::from_token(method),
            target,
            minor_version,
            keep_alive: minor_version == 1,
            api_key: None,
            ticket: None,
            last_event_id: None,
            cookie: None,
            original_uri: None,
            origin: None,
            expect_continue: false,
            body: Vec::new(),
        });
        let (mut hosts, mut lengths, mut codings, mut keys, mut authorizations) = (0, 0, 0, 0, 0);
        let mut bearer: Option<String> = None;
        let mut content_length: Option<usize> = None;
        let mut chunked = false;
        for h in parsed.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("content-length") {
                lengths += 1;
                let v = trim_ows(h.value);
                if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                    return Err(HttpError::BadRequest("invalid Content-Length"));
                }
                // At most 19 digits: always fits in a u64.
                let n = v.iter().fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
                content_length = Some(usize::try_from(n).unwrap_or(usize::MAX));
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                codings += 1;
                if !trim_ows(h.value).eq_ignore_ascii_case(b"chunked") {
                    return Err(HttpError::NotImplemented("only the chunked transfer coding is supported"));
                }
                chunked = true;
            } else if name.eq_ignore_ascii_case("host") {
                hosts += 1;
            } else if name.eq_ignore_ascii_case("connection") {
                for token in h.value.split(|&b| b == b',').map(trim_ows) {
                    if token.eq_ignore_ascii_case(b"close") {
                        request.keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && minor_version == 0 {
                        request.keep_alive = true;
                    }
                }
            } else if name.eq_ignore_ascii_case("expect") {
                if !trim_ows(h.value).eq_ignore_ascii_case(b"100-continue") {
                    return Err(HttpError::ExpectationFailed);
                }
                request.expect_continue = true;
            } else if name.eq_ignore_ascii_case("x-api-key") {
                keys += 1;
                request.api_key = Some(header_text(h.value)?);
            } else if name.eq_ignore_ascii_case("authorization") {
                authorizations += 1;
                bearer = bearer_token(h.value)?;
            } else if name.eq_ignore_ascii_case("x-ticket") {
                request.ticket = Some(header_text(h.value)?);
            } else if name.eq_ignore_ascii_case("last-event-id") {
                request.last_event_id = Some(header_text(h.value)?);
            } else if name.eq_ignore_ascii_case("cookie") {
                // Other sites' cookies on the same domain may be any bytes: never a 400.
                let value = String::from_utf8_lossy(trim_ows(h.value)).into_owned();
                request.cookie = Some(match request.cookie.take() {
                    Some(before) => format!("{before}; {value}"),
                    None => value,
                });
            } else if name.eq_ignore_ascii_case("x-original-uri") && request.original_uri.is_none() {
                request.original_uri = Some(String::from_utf8_lossy(trim_ows(h.value)).into_owned());
            } else if name.eq_ignore_ascii_case("origin") {
                // Not UTF-8: no origin any list names (no CORS headers), not a refusal.
                request.origin = header_text(h.value).ok();
            }
        }
        if lengths > 1 {
            return Err(HttpError::BadRequest("more than one Content-Length"));
        }
        if codings > 1 {
            return Err(HttpError::BadRequest("more than one Transfer-Encoding"));
        }
        if chunked && content_length.is_some() {
            return Err(HttpError::BadRequest("both Transfer-Encoding and Content-Length"));
        }
        if chunked && minor_version == 0 {
            return Err(HttpError::BadRequest("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if hosts > 1 {
            return Err(HttpError::BadRequest("more than one Host"));
        }
        if keys > 1 {
            return Err(HttpError::BadRequest("more than one x-api-key header"));
        }
        if authorizations > 1 {
            return Err(HttpError::BadRequest("more than one Authorization header"));
        }
        match (&request.api_key, bearer) {
            (Some(key), Some(token)) if *key != token => {
                return Err(HttpError::BadRequest("x-api-key and Authorization: Bearer carry different keys"));
            }
            (None, token @ Some(_)) => request.api_key = token,
            _ => {}
        }
        if hosts == 0 && minor_version == 1 {
            return Err(HttpError::BadRequest("missing Host header"));
        }
        if chunked {
            let continue_due = request.expect_continue;
            return match self.parse_chunked(request, Chunk::Size, 0, input, head_end, limits)? {
                Progress::NeedMore { consumed, .. } => Ok(Progress::NeedMore { consumed, send_continue: continue_due }),
                done => Ok(done),
            };
        }
        let length = content_length.unwrap_or(0);
        if length > limits.max_body_bytes {
            return Err(HttpError::BodyTooLarge { max: limits.max_body_bytes });
        }
        let available = input.len() - head_end;
        if available >= length {
            request.body = input[head_end..head_end + length].to_vec();
            return Ok(Progress::Done { request, consumed: head_end + length });
        }
        request.body.reserve_exact(length);
        request.body.extend_from_slice(&input[head_end..]);
        let send_continue = request.expect_continue && available == 0;
        self.state = State::Body { request, remaining: length - available };
        Ok(Progress::NeedMore { consumed: input.len(), send_continue })
    }

    /// Decodes chunked body bytes from `input[at..]`.
    fn parse_chunked(
        &mut self,
        mut request: Box<Request>,
        mut chunk: Chunk,
        mut trailer_bytes: usize,
        input: &[u8],
        mut at: usize,
        limits: &Limits,
    ) -> Result<Progress, HttpError> {
        loop {
            let rest = &input[at..];
            match chunk {
                Chunk::Size => {
                    let Some(n) = line_len(rest) else {
                        if rest.len() > MAX_CHUNK_LINE_BYTES {
                            return Err(HttpError::BadRequest("chunk size line too long"));
                        }
                        break;
                    };
                    if n > MAX_CHUNK_LINE_BYTES {
                        return Err(HttpError::BadRequest("chunk size line too long"));
                    }
                    let line = trim_line(&rest[..n]);
                    let digits_end = line.iter().position(|&b| !b.is_ascii_hexdigit()).unwrap_or(line.len());
                    let (digits, ext) = line.split_at(digits_end);
                    if digits.is_empty() || digits.len() > 15 || !(ext.is_empty() || ext.starts_with(b";")) {
                        return Err(HttpError::BadRequest("invalid chunk size"));
                    }
                    let size =
                        digits.iter().fold(0usize, |acc, &d| acc * 16 + (d as char).to_digit(16).unwrap_or(0) as usize);
                    if request.body.len() + size > limits.max_body_bytes {
                        return Err(HttpError::BodyTooLarge { max: limits.max_body_bytes });
                    }
                    at += n;
                    chunk = if size == 0 { Chunk::Trailer } else { Chunk::Data(size) };
                }
                Chunk::Data(left) => {
                    if rest.is_empty() {
                        break;
                    }
                    let take = left.min(rest.len());
                    request.body.extend_from_slice(&rest[..take]);
                    at += take;
                    chunk = if take == left { Chunk::DataEnd } else { Chunk::Data(left - take) };
                }
                Chunk::DataEnd => {
                    match rest {
                        [b'\n', ..] => at += 1,
                        [b'\r', b'\n', ..] => at += 2,
                        [] | [b'\r'] => break,
                        _ => return Err(HttpError::BadRequest("chunk data is longer than its size")),
                    }
                    chunk = Chunk::Size;
                }
                Chunk::Trailer => {
                    let Some(n) = line_len(rest) else {
                        if trailer_bytes + rest.len() > limits.max_header_bytes {
                            return Err(HttpError::HeaderTooLarge);
                        }
                        break;
                    };
                    trailer_bytes += n;
                    if trailer_bytes > limits.max_header_bytes {
                        return Err(HttpError::HeaderTooLarge);
                    }
                    at += n;
                    if trim_line(&rest[..n]).is_empty() {
                        return Ok(Progress::Done { request, consumed: at });
                    }
                }
            }
        }
        self.state = State::Chunked { request, chunk, trailer_bytes };
        Ok(Progress::NeedMore { consumed: at, send_continue: false })
    }
}

#[cfg(test)]
mod tests;
