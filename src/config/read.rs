//! Reading raw values: walks the parsed TOML tree and the environment overrides, converts
//! each key to its type, and records every problem instead of stopping at the first, so
//! `check-config` can list them all. Also records every key it was asked for, which gives
//! the list of known keys (for unknown-key detection and the documentation test).

use std::collections::BTreeMap;

use super::error::ConfigError;
use crate::core::duration;

/// One known key: where it lives and which variable overrides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDoc {
    /// `section.key`.
    pub path: String,
    /// The environment variable that overrides it.
    pub env: &'static str,
}

/// A raw value and where it came from.
enum Raw<'a> {
    File(&'a toml::Value),
    Env(&'a str),
}

/// Collects values and problems from one file and one environment.
pub(super) struct Reader<'a> {
    root: &'a toml::Table,
    env: &'a BTreeMap<String, String>,
    pub(super) problems: Vec<ConfigError>,
    pub(super) keys: Vec<KeyDoc>,
}

impl<'a> Reader<'a> {
    pub(super) fn new(root: &'a toml::Table, env: &'a BTreeMap<String, String>) -> Self {
        Self { root, env, problems: Vec::new(), keys: Vec::new() }
    }

    /// Looks a key up: the environment wins over the file.
    fn raw(&mut self, section: &str, key: &str, env: &'static str) -> Option<(String, Raw<'a>)> {
        let path = format!("{section}.{key}");
        self.keys.push(KeyDoc { path: path.clone(), env });
        if let Some(text) = self.env.get(env) {
            return Some((format!("{path} (from {env})"), Raw::Env(text.as_str())));
        }
        let value = self.root.get(section)?.as_table()?.get(key)?;
        Some((path, Raw::File(value)))
    }

    /// Whether a key is given (by its variable or in the file), whatever its type; returns
    /// its name as problems show it. Does not record the key as known: the typed readers do.
    pub(super) fn given(&self, section: &str, key: &str, env: &'static str) -> Option<String> {
        let path = format!("{section}.{key}");
        if self.env.contains_key(env) {
            return Some(format!("{path} (from {env})"));
        }
        self.root.get(section)?.as_table()?.get(key).map(|_| path)
    }

    fn wrong_type(&mut self, key: String, expected: &'static str) {
        self.problems.push(ConfigError::WrongType { key, expected });
    }

    /// An integer in `min..=max`. A key whose name ends in `_ms` also takes a duration
    /// string (`"5s"`, `"1m30s"`; a bare number in a string or a variable is milliseconds).
    pub(super) fn int(&mut self, section: &str, key: &str, env: &'static str, default: u64, min: u64, max: u64) -> u64 {
        let Some((path, raw)) = self.raw(section, key, env) else {
            return default;
        };
        let is_ms = key.ends_with("_ms");
        let value = match raw {
            Raw::File(toml::Value::Integer(i)) => u64::try_from(*i).ok(),
            Raw::Env(text) => match text.trim().replace('_', "").parse::<u64>() {
                Ok(v) => Some(v),
                Err(_) if is_ms => return self.duration(path, text, default, min, max),
                Err(_) => None,
            },
            Raw::File(toml::Value::String(text)) if is_ms => return self.duration(path, text, default, min, max),
            Raw::File(_) => None,
        };
        match value {
            Some(v) => self.in_range(path, v, default, min, max),
            None if is_ms => {
                self.wrong_type(path, "a whole number of milliseconds or a duration string such as \"30s\"");
                default
            }
            None => {
                self.wrong_type(path, "a whole number");
                default
            }
        }
    }

    /// A duration string for an `_ms` key, in milliseconds.
    fn duration(&mut self, path: String, text: &str, default: u64, min: u64, max: u64) -> u64 {
        match duration::parse_ms(text, 1) {
            Ok(v) => self.in_range(path, v, default, min, max),
            Err(e) => {
                let reason = format!(
                    "{text:?} is not a duration: {e}; write milliseconds (5000) or a duration such as {}",
                    duration::DURATION_EXAMPLES
                );
                self.problems.push(ConfigError::Invalid { key: path, reason });
                default
            }
        }
    }

    fn in_range(&mut self, path: String, value: u64, default: u64, min: u64, max: u64) -> u64 {
        if (min..=max).contains(&value) {
            value
        } else {
            self.problems.push(ConfigError::OutOfRange { key: path, value, min, max });
            default
        }
    }

    /// A boolean (`true`/`false`; the environment also takes `1`/`0`).
    pub(super) fn bool(&mut self, section: &str, key: &str, env: &'static str, default: bool) -> bool {
        let Some((path, raw)) = self.raw(section, key, env) else {
            return default;
        };
        let value = match raw {
            Raw::File(toml::Value::Boolean(b)) => Some(*b),
            Raw::Env(text) => match text.trim() {
                "true" | "1" => Some(true),
                "false" | "0" => Some(false),
                _ => None,
            },
            Raw::File(_) => None,
        };
        value.unwrap_or_else(|| {
            self.wrong_type(path, "true or false");
            default
        })
    }

    /// A string; `None` (after recording a problem) when it has another type.
    pub(super) fn string(&mut self, section: &str, key: &str, env: &'static str) -> Option<(String, String)> {
        let (path, raw) = self.raw(section, key, env)?;
        match raw {
            Raw::File(toml::Value::String(s)) => Some((path, s.clone())),
            Raw::Env(text) => Some((path, text.to_string())),
            Raw::File(_) => {
                self.wrong_type(path, "a string");
                None
            }
        }
    }

    /// One of `choices`; returns its index.
    pub(super) fn choice(
        &mut self,
        section: &str,
        key: &str,
        env: &'static str,
        choices: &[&str],
        default: usize,
    ) -> usize {
        let Some((path, text)) = self.string(section, key, env) else {
            return default;
        };
        match choices.iter().position(|c| *c == text.trim()) {
            Some(i) => i,
            None => {
                self.problems.push(ConfigError::Invalid {
                    key: path,
                    reason: format!("is {text:?}; it must be one of {}", choices.join(", ")),
                });
                default
            }
        }
    }

    /// A list of strings; the environment gives it comma-separated. A single string in the
    /// file counts as a list of one.
    pub(super) fn strings(&mut self, section: &str, key: &str, env: &'static str) -> Option<(String, Vec<String>)> {
        let (path, raw) = self.raw(section, key, env)?;
        let list = match raw {
            Raw::Env(text) => Some(text.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()),
            Raw::File(toml::Value::String(s)) => Some(vec![s.clone()]),
            Raw::File(toml::Value::Array(items)) => {
                items.iter().map(|v| v.as_str().map(str::to_string)).collect::<Option<Vec<_>>>()
            }
            Raw::File(_) => None,
        };
        match list {
            Some(list) => Some((path, list)),
            None => {
                self.wrong_type(path, "a string or a list of strings");
                None
            }
        }
    }

    /// The array of tables at `section.key` (file only).
    pub(super) fn tables(&mut self, section: &str, key: &str) -> Vec<(String, &'a toml::Table)> {
        let path = format!("{section}.{key}");
        self.keys.push(KeyDoc { path: path.clone(), env: "" });
        let Some(value) = self.root.get(section).and_then(|s| s.as_table()).and_then(|s| s.get(key)) else {
            return Vec::new();
        };
        let Some(items) = value.as_array() else {
            self.wrong_type(path, "an array of tables ([[section.key]])");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.as_table() {
                Some(t) => out.push((format!("{path}[{i}]"), t)),
                None => self.wrong_type(format!("{path}[{i}]"), "a table"),
            }
        }
        out
    }

    /// The top-level array of tables `[[key]]` (file only), entries named `key[N]`.
    pub(super) fn top_tables(&mut self, key: &str) -> Vec<(String, &'a toml::Table)> {
        self.keys.push(KeyDoc { path: key.to_string(), env: "" });
        let Some(value) = self.root.get(key) else { return Vec::new() };
        let Some(items) = value.as_array() else {
            self.wrong_type(key.to_string(), "an array of tables ([[key]])");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.as_table() {
                Some(t) => out.push((format!("{key}[{i}]"), t)),
                None => self.wrong_type(format!("{key}[{i}]"), "a table"),
            }
        }
        out
    }

    /// Field `key` of the entry at `path` of an array of tables, as an integer in
    /// `min..=max` (an `_ms` key also takes a duration string, as [`Reader::int`] does).
    /// `None` when absent, or after recording a problem, when it is not such a number.
    pub(super) fn entry_int(&mut self, path: &str, entry: &toml::Table, key: &str, min: u64, max: u64) -> Option<u64> {
        let value = entry.get(key)?;
        let path = format!("{path}.{key}");
        let is_ms = key.ends_with("_ms");
        let before = self.problems.len();
        let number = match value {
            toml::Value::Integer(i) => u64::try_from(*i).ok(),
            toml::Value::String(text) if is_ms => {
                let v = self.duration(path, text, min, min, max);
                return (self.problems.len() == before).then_some(v);
            }
            _ => None,
        };
        let Some(number) = number else {
            let expected = if is_ms {
                "a whole number of milliseconds or a duration string such as \"30s\""
            } else {
                "a whole number"
            };
            self.wrong_type(path, expected);
            return None;
        };
        let v = self.in_range(path, number, min, min, max);
        (self.problems.len() == before).then_some(v)
    }

    /// Field `key` of the entry at `path` of an array of tables, as a string. `None` when
    /// absent, or after recording a problem, when it is not a string.
    pub(super) fn entry_string(&mut self, path: &str, entry: &toml::Table, key: &str) -> Option<String> {
        match entry.get(key)? {
            toml::Value::String(s) => Some(s.clone()),
            _ => {
                self.wrong_type(format!("{path}.{key}"), "a string");
                None
            }
        }
    }

    /// Field `key` of the entry at `path` of an array of tables, as the index of one of
    /// `choices`. `None` when absent, or after recording a problem, when it is none of them.
    pub(super) fn entry_choice(
        &mut self,
        path: &str,
        entry: &toml::Table,
        key: &str,
        choices: &[&str],
    ) -> Option<usize> {
        let text = self.entry_string(path, entry, key)?;
        let found = choices.iter().position(|c| *c == text.trim());
        if found.is_none() {
            self.invalid(format!("{path}.{key}"), format!("is {text:?}; it must be one of {}", choices.join(", ")));
        }
        found
    }

    /// Records a problem found while validating.
    pub(super) fn invalid(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(ConfigError::Invalid { key: key.into(), reason: reason.into() });
    }

    /// Reports every section and key in the file that nobody asked for.
    pub(super) fn unknown_keys(&mut self) {
        let known: Vec<&str> = self.keys.iter().map(|k| k.path.as_str()).collect();
        for (section, value) in self.root {
            // A top-level array of tables (`[[rooms]]`) is read as a whole.
            if known.contains(&section.as_str()) {
                continue;
            }
            let Some(table) = value.as_table() else {
                self.problems.push(ConfigError::UnknownKey { key: section.clone() });
                continue;
            };
            if !known.iter().any(|k| k.split('.').next() == Some(section.as_str())) {
                self.problems.push(ConfigError::UnknownKey { key: format!("[{section}]") });
                continue;
            }
            for key in table.keys() {
                let path = format!("{section}.{key}");
                if !known.contains(&path.as_str()) {
                    self.problems.push(ConfigError::UnknownKey { key: path });
                }
            }
        }
    }
}
