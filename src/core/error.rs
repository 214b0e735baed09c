//! The core's one error enum: malformed input the lease table refuses before it changes
//! anything. Business outcomes (held, queued, lease lost…) are replies, not errors.

use std::fmt;

/// Why the core refused an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// A lock name, data key, owner label or callback URL is malformed.
    InvalidName {
        /// Which field (`lock name`, `data key`, `owner`, `callback`).
        field: &'static str,
        /// What rule it broke.
        reason: &'static str,
    },
    /// A ticket is not 22 URL-safe characters encoding 128 bits.
    InvalidTicket,
    /// A number is outside the range the table accepts.
    OutOfRange {
        /// Which field (`ttl_ms`, `limit`, `weight`).
        field: &'static str,
        /// The value given.
        value: u64,
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
    /// A data write would exceed the lock's data limits.
    DataTooLarge {
        /// Which limit (`max_data_keys`, `max_data_bytes`).
        limit: &'static str,
        /// The limit's value.
        max: u64,
    },
    /// Two fields of a request cannot go together (e.g. `mode` with a lottery queue).
    Incompatible {
        /// Why, as one lower-case sentence.
        reason: &'static str,
    },
    /// A sealed token (a waiting room's cookie, a ticket token) does not open.
    Unsealed {
        /// Why, completing "the token …".
        reason: &'static str,
    },
    /// An exported state cannot be imported because it breaks a table invariant.
    InvalidState {
        /// The first broken rule found.
        reason: String,
    },
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidName { field, reason } => write!(f, "{field} {reason}"),
            Self::InvalidTicket => f.write_str("ticket must be 22 URL-safe characters as issued by the server"),
            Self::OutOfRange { field, value, min, max } => {
                write!(f, "{field} is {value}; it must be between {min} and {max}")
            }
            Self::DataTooLarge { limit, max } => write!(f, "data write exceeds {limit} ({max})"),
            Self::Incompatible { reason } => f.write_str(reason),
            Self::Unsealed { reason } => write!(f, "the token {reason}"),
            Self::InvalidState { reason } => write!(f, "state cannot be imported: {reason}"),
        }
    }
}

impl std::error::Error for CoreError {}
