//! The configuration layer's one error enum. Each variant names the key (with the variable
//! it came from, when it came from the environment) so an operator can fix it at once.

use std::fmt;

/// One problem in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The file is not valid TOML.
    Syntax {
        /// 1-based line of the error.
        line: usize,
        /// What the parser said.
        message: String,
    },
    /// A section or key that leasehold does not know (often a typo).
    UnknownKey {
        /// `section.key`.
        key: String,
    },
    /// A value of the wrong type.
    WrongType {
        /// `section.key`.
        key: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A number outside its allowed range.
    OutOfRange {
        /// `section.key`.
        key: String,
        /// The value given.
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// A value that is well typed but not acceptable.
    Invalid {
        /// `section.key`.
        key: String,
        /// Why, as the rest of a sentence that starts with the key.
        reason: String,
    },
}

impl ConfigError {
    /// The key the problem is about (`(file)` for syntax errors).
    pub fn key(&self) -> &str {
        match self {
            Self::Syntax { .. } => "(file)",
            Self::UnknownKey { key }
            | Self::WrongType { key, .. }
            | Self::OutOfRange { key, .. }
            | Self::Invalid { key, .. } => key,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax { line, message } => write!(f, "line {line}: {message}"),
            Self::UnknownKey { key } => write!(f, "{key}: unknown key"),
            Self::WrongType { key, expected } => write!(f, "{key}: must be {expected}"),
            Self::OutOfRange { key, value, min, max } => {
                write!(f, "{key}: {value} is out of range; it must be between {min} and {max}")
            }
            Self::Invalid { key, reason } => write!(f, "{key}: {reason}"),
        }
    }
}

impl std::error::Error for ConfigError {}
