//! The frame codec: `u32` big-endian length, then that many bytes of JSON.
//!
//! The decoder checks a frame's length against its maximum as soon as the 4 length bytes
//! are in, before it waits for (or allocates) the body, so a peer cannot make a reader
//! allocate more than the maximum. A bad frame is an error for the caller to log before
//! closing that channel; nothing here panics on any input.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Size of the length prefix.
pub const LENGTH_BYTES: usize = 4;
/// Default largest frame body (a lock table page or a batch of events fits easily).
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 16 * 1024 * 1024;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The announced or encoded length is above the maximum.
    TooLarge {
        /// The length.
        len: u64,
        /// The maximum.
        max: u32,
    },
    /// The body is not the JSON expected.
    Json {
        /// What the JSON parser or serialiser said.
        reason: String,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { len, max } => write!(f, "frame of {len} bytes exceeds the maximum of {max}"),
            Self::Json { reason } => write!(f, "frame body is not valid: {reason}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Appends one frame holding `message` as JSON to `out`. On error `out` is left as it was.
pub fn encode<T: Serialize>(message: &T, max_bytes: u32, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_BYTES]);
    if let Err(e) = serde_json::to_writer(&mut *out, message) {
        out.truncate(start);
        return Err(FrameError::Json { reason: e.to_string() });
    }
    let len = out.len() - start - LENGTH_BYTES;
    if len > max_bytes as usize {
        out.truncate(start);
        return Err(FrameError::TooLarge { len: len as u64, max: max_bytes });
    }
    out[start..start + LENGTH_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Parses a frame body.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(body).map_err(|e| FrameError::Json { reason: e.to_string() })
}

/// Accumulates bytes from a stream and yields complete frame bodies.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Where the unread bytes start in `buf`.
    read: usize,
    max_bytes: u32,
}

impl FrameDecoder {
    /// A decoder refusing frames above `max_bytes`.
    pub fn new(max_bytes: u32) -> Self {
        Self { buf: Vec::new(), read: 0, max_bytes }
    }

    /// Adds bytes read from the stream. Bytes already returned are dropped first (at most
    /// one move of the unread tail per call, however many frames were read).
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.read > 0 {
            if self.read == self.buf.len() {
                self.buf.clear();
            } else {
                self.buf.drain(..self.read);
            }
            self.read = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.read
    }

    /// The next complete frame body, `None` if more bytes are needed, or an error if the
    /// next frame is too large (the channel should then be closed).
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let pending = &self.buf[self.read..];
        let Some(prefix) = pending.get(..LENGTH_BYTES) else { return Ok(None) };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        if len > self.max_bytes {
            return Err(FrameError::TooLarge { len: len.into(), max: self.max_bytes });
        }
        let end = LENGTH_BYTES + len as usize;
        if pending.len() < end {
            return Ok(None);
        }
        let start = self.read + LENGTH_BYTES;
        self.read += end;
        Ok(Some(&self.buf[start..start + len as usize]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::rand::SplitMix64;

    fn frames(messages: &[serde_json::Value]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            encode(m, DEFAULT_MAX_FRAME_BYTES, &mut out).unwrap();
        }
        out
    }

    fn decode_all(decoder: &mut FrameDecoder) -> Vec<serde_json::Value> {
        let mut got = Vec::new();
        while let Some(body) = decoder.next_frame().unwrap() {
            got.push(decode(body).unwrap());
        }
        got
    }

    #[test]
    fn arbitrary_splits_give_the_same_frames() {
        let messages: Vec<serde_json::Value> = (0..40)
            .map(|i| serde_json::json!({"id": i, "op": "acquire", "lock": "x".repeat(i * 7), "n": [i, i * 2]}))
            .collect();
        let bytes = frames(&messages);
        let mut rng = SplitMix64::new(11);
        for _ in 0..500 {
            let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
            let mut got = Vec::new();
            let mut at = 0;
            while at < bytes.len() {
                let step = 1 + rng.below(64.min(bytes.len() - at));
                decoder.feed(&bytes[at..at + step]);
                got.extend(decode_all(&mut decoder));
                at += step;
            }
            assert_eq!(got, messages);
            assert_eq!(decoder.buffered(), 0);
        }
    }

    #[test]
    fn oversize_is_refused_from_the_length_alone() {
        let mut decoder = FrameDecoder::new(1024);
        decoder.feed(&(1025u32).to_be_bytes());
        assert_eq!(decoder.next_frame(), Err(FrameError::TooLarge { len: 1025, max: 1024 }));
        assert_eq!(decoder.buffered(), 4, "nothing was allocated for the body");
        let mut out = vec![9];
        assert!(matches!(encode(&"y".repeat(2000), 1024, &mut out), Err(FrameError::TooLarge { .. })));
        assert_eq!(out, vec![9], "a refused encode leaves the buffer as it was");
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = SplitMix64::new(5);
        for _ in 0..2_000 {
            let len = rng.below(64);
            let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let mut decoder = FrameDecoder::new(48);
            decoder.feed(&bytes);
            for _ in 0..8 {
                match decoder.next_frame() {
                    Ok(Some(body)) => {
                        let _ = decode::<serde_json::Value>(body);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
