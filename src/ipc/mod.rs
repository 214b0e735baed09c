//! Inter-process messages: every channel between master, workers, keeper and courier is a
//! Unix stream of frames (4-byte big-endian length, then one JSON object). Pure: this module
//! turns bytes into frames and frames into bytes; the process shells own the sockets.
//! docs/architecture.md, "How the processes talk", puts the channels together.

pub mod frame;
pub mod message;
pub mod overview;

pub use frame::{FrameDecoder, FrameError};
