//! Responses and their bytes on the wire. Header names are written exactly as given here
//! (clients of the Small Resource Server match `X-Ticket` case-sensitively).

use serde::Serialize;

/// The interim response sent when a client asked `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// The content type of event streams (their heads carry no length).
pub const EVENT_STREAM: &str = "text/event-stream";

/// One response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Further headers, written as given.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response with `value` as its body.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Self {
        // Serialising our own plain structs cannot fail; an empty object is the fallback.
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Self { status, content_type: "application/json", headers: Vec::new(), body }
    }

    /// A plain-text response.
    pub fn text(status: u16, content_type: &'static str, text: String) -> Self {
        Self { status, content_type, headers: Vec::new(), body: text.into_bytes() }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Appends the response's bytes to `out`; with `close`, it says `Connection: close`.
    pub fn encode(&self, close: bool, out: &mut Vec<u8>) {
        out.reserve(128 + self.body.len());
        self.encode_head(Some(self.body.len()), close, out);
        out.extend_from_slice(&self.body);
    }

    /// Appends the response to a `HEAD` request: the head `encode` would write (its
    /// `Content-Length` is the body's, and an event stream's head has none), no body.
    pub fn encode_head_only(&self, close: bool, out: &mut Vec<u8>) {
        let length = (self.content_type != EVENT_STREAM).then_some(self.body.len());
        self.encode_head(length, close, out);
    }

    /// Appends the head of a stream that lasts until the connection closes: no length,
    /// `Connection: close`, no body (the stream follows).
    pub fn encode_stream_head(&self, out: &mut Vec<u8>) {
        self.encode_head(None, true, out);
    }

    fn encode_head(&self, content_length: Option<usize>, close: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(b"HTTP/1.1 ");
        push_decimal(out, u64::from(self.status));
        out.push(b' ');
        out.extend_from_slice(reason(self.status).as_bytes());
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(self.content_type.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(length) = content_length {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(out, length as u64);
            out.extend_from_slice(b"\r\n");
        }
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends `n` in decimal (the hot path avoids the formatting machinery).
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// The reason phrase of a status code.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        303 => "See Other",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_status_headers_and_body_exactly() {
        let r = Response::json(202, &serde_json::json!({"unavailable": true})).with_header("X-Ticket", "abc");
        let mut out = Vec::new();
        r.encode(true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 20\r\nX-Ticket: abc\r\nConnection: close\r\n\r\n{\"unavailable\":true}"
        );
    }

    #[test]
    fn r12_head_only_has_the_length_of_the_body_it_leaves_out() {
        let r = Response::json(200, &serde_json::json!({"status": "ok"}));
        let mut full = Vec::new();
        r.encode(false, &mut full);
        let mut head = Vec::new();
        r.encode_head_only(false, &mut head);
        assert_eq!(full, [head.as_slice(), br#"{"status":"ok"}"#].concat());
        let stream = Response::text(200, EVENT_STREAM, String::new());
        let mut get = Vec::new();
        stream.encode_stream_head(&mut get);
        let mut head = Vec::new();
        stream.encode_head_only(false, &mut head);
        let text = String::from_utf8(head).unwrap();
        assert!(!text.contains("Content-Length"), "{text}");
        assert!(!text.contains("Connection: close"), "{text}");
        assert_eq!(text, String::from_utf8(get).unwrap().replace("Connection: close\r\n", ""));
    }

    #[test]
    fn every_status_the_server_sends_has_its_reason_phrase() {
        // The statuses of the status table, the waiting room's 303 and the few the
        // connection sends by itself (RFC 9110's phrases).
        for (status, phrase) in [
            (200, "OK"),
            (202, "Accepted"),
            (204, "No Content"),
            (303, "See Other"),
            (401, "Unauthorized"),
            (503, "Service Unavailable"),
        ] {
            assert_eq!(reason(status), phrase);
        }
        for code in crate::http::status::ErrorCode::ALL {
            assert_ne!(reason(code.parts().0), "Unknown", "{code:?}");
        }
    }

    #[test]
    fn decimals_are_written_exactly() {
        for n in [0u64, 7, 10, 99, 100, 12_345, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
    }
}
