//! `[[rooms]]`: waiting rooms (docs/api.md, "Waiting rooms"). Each entry is read, checked,
//! and turned into the declaration of its lock `room:<name>` (a FIFO semaphore whose limit
//! is the room's capacity), which joins `[[locks.declare]]` in `TableLimits::declared`: so
//! a room is a declared lock to the keeper, and counts against `MAX_DECLARATIONS`.
//!
//! Pure like the rest of `config`: a `secret_file` is only named here; the processes read it
//! (`process::key_files`). Every field of entry N can be overridden by the variable
//! `LEASEHOLD_ROOM_<NAME>_<FIELD>` (the room's name and the field upper-cased, `-` as `_`),
//! which is how a secret stays out of the file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::read::Reader;
use super::ConfigError;
use crate::core::lock::{
    Declaration, LockKind, QueueKind, TableLimits, MAX_ADMIT_BURST, MAX_ADMIT_PER_MINUTE, MAX_DECLARATIONS,
};
use crate::core::names::LockName;
use crate::core::seal::MIN_SECRET_BYTES;

pub use crate::core::names::ROOM_LOCK_PREFIX;
/// Longest room name.
pub const MAX_ROOM_NAME_BYTES: usize = 64;
/// Longest room secret.
pub const MAX_ROOM_SECRET_BYTES: usize = 1024;
/// Longest `origin` (as the longest return path).
pub const MAX_ORIGIN_BYTES: usize = 2048;
/// Longest page title.
pub const MAX_TITLE_BYTES: usize = 200;
/// Longest page message.
pub const MAX_MESSAGE_BYTES: usize = 2000;
/// Longest `max_session_ms`: 30 days (the session cookie's `Max-Age`).
pub const MAX_SESSION_MS: u64 = 30 * 24 * 3_600_000;
/// Default of `session_ttl_ms`.
pub const DEFAULT_SESSION_TTL_MS: u64 = 300_000;
/// Default of `max_session_ms`.
pub const DEFAULT_MAX_SESSION_MS: u64 = 3_600_000;
/// Default of `waiter_ttl_ms` for rooms.
pub const DEFAULT_ROOM_WAITER_TTL_MS: u64 = 30_000;
/// Default of `origin`.
pub const DEFAULT_ORIGIN: &str = "/";
/// Default of `title`.
pub const DEFAULT_TITLE: &str = "You are in line";
/// Default of `message`.
pub const DEFAULT_MESSAGE: &str =
    "This site is busy. Keep this page open: it moves you on by itself when it is your turn.";

/// The fields of a `[[rooms]]` entry.
pub const ROOM_FIELDS: &[&str] = &[
    "name",
    "capacity",
    "session_ttl_ms",
    "max_session_ms",
    "admit_per_minute",
    "admit_burst",
    "waiter_ttl_ms",
    "secret",
    "secret_file",
    "origin",
    "title",
    "message",
    "cookie_secure",
];

/// One waiting room.
#[derive(Clone, PartialEq, Eq)]
pub struct RoomConfig {
    /// 1 to 64 bytes of `a-z`, `0-9`, `_`, `-`.
    pub name: String,
    /// `room:<name>`.
    pub lock: LockName,
    /// Sessions at once (the lock's limit).
    pub capacity: u32,
    /// A session ends after this long without a gate check.
    pub session_ttl_ms: u64,
    /// A session ends this long after admission, active or not.
    pub max_session_ms: u64,
    /// New admissions per minute (0: no rate beyond capacity).
    pub admit_per_minute: u32,
    /// Admissions that may go out at once after a quiet spell.
    pub admit_burst: u32,
    /// A waiter not seen this long is dropped.
    pub waiter_ttl_ms: u64,
    /// Signs the room's cookies and ticket tokens (empty until a `secret_file` is read).
    pub secret: String,
    /// Where the secret is, still to be read (`process::key_files`).
    pub secret_file: Option<SecretFile>,
    /// Where an admitted visitor goes when no return path is known.
    pub origin: String,
    /// The waiting page's heading (plain text).
    pub title: String,
    /// The waiting page's message (plain text).
    pub message: String,
    /// The cookies' `Secure` attribute.
    pub cookie_secure: bool,
}

impl std::fmt::Debug for RoomConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("RoomConfig")
            .field("name", &self.name)
            .field("capacity", &self.capacity)
            .field("session_ttl_ms", &self.session_ttl_ms)
            .field("max_session_ms", &self.max_session_ms)
            .field("admit_per_minute", &self.admit_per_minute)
            .field("admit_burst", &self.admit_burst)
            .field("waiter_ttl_ms", &self.waiter_ttl_ms)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// A room secret in a file, as `key_file` of `[[auth.keys]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFile {
    /// The file (a relative path is in `$CREDENTIALS_DIRECTORY` when that is set).
    pub path: PathBuf,
    /// The setting that named it (`rooms[N].secret_file`), for problems.
    pub setting: String,
}

impl RoomConfig {
    /// The declaration of the room's lock: a FIFO semaphore of `capacity` permits whose
    /// leases last `session_ttl_ms` (the longest a gate check may renew them for), with the
    /// room's admission rate and waiter TTL. An admitted waiter that is not connected has
    /// `waiter_ttl_ms` to come back for its session (a page without JavaScript comes back
    /// with its next refresh, well within it).
    pub fn declaration(&self) -> Declaration {
        Declaration {
            kind: LockKind::Semaphore,
            limit: self.capacity,
            queue: QueueKind::Fifo,
            max_ttl_ms: Some(self.session_ttl_ms),
            default_ttl_ms: Some(self.session_ttl_ms),
            admit_per_minute: (self.admit_per_minute > 0).then_some(self.admit_per_minute),
            admit_burst: self.admit_burst,
            waiter_ttl_ms: Some(self.waiter_ttl_ms),
            claim_ms: Some(self.waiter_ttl_ms),
            ..Declaration::new(Some(self.lock.clone()), None)
        }
    }

    /// Sets the secret read from `secret_file`, checked as one written inline is.
    pub fn set_file_secret(&mut self, text: &str) -> Result<(), ConfigError> {
        let file = self.secret_file.take();
        let setting = file.as_ref().map_or_else(|| format!("room {}", self.name), |f| f.setting.clone());
        let secret = text.trim();
        if let Some(problem) = secret_problem(secret) {
            let path = file.map(|f| f.path.display().to_string()).unwrap_or_default();
            return Err(ConfigError::Invalid { key: setting, reason: format!("{path}: {problem}") });
        }
        self.secret = secret.to_string();
        Ok(())
    }
}

/// The variable that overrides `field` of room `name`.
pub fn room_variable(name: &str, field: &str) -> String {
    format!("LEASEHOLD_ROOM_{}_{}", name.to_ascii_uppercase().replace('-', "_"), field.to_ascii_uppercase())
}

/// Whether `name` may name a room: 1 to 64 bytes of `a-z`, `0-9`, `_`, `-` (it is part of
/// cookie names and of paths, so nothing there needs escaping).
pub fn valid_room_name(name: &str) -> bool {
    (1..=MAX_ROOM_NAME_BYTES).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn secret_problem(secret: &str) -> Option<String> {
    if secret.len() < MIN_SECRET_BYTES || secret.len() > MAX_ROOM_SECRET_BYTES {
        Some(format!("a room secret has {MIN_SECRET_BYTES} to {MAX_ROOM_SECRET_BYTES} bytes"))
    } else {
        None
    }
}

/// Whether `text` is a return path a visitor may be sent to: a path on this site that
/// starts with one `/` (not `//`, not `/\`, which browsers read as another host), of
/// visible ASCII only (no control bytes, no spaces), at most 2048 bytes.
pub fn valid_return_path(text: &str) -> bool {
    let b = text.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_ORIGIN_BYTES
        && b[0] == b'/'
        && !matches!(b.get(1), Some(b'/' | b'\\'))
        && b.iter().all(|c| (0x21..0x7f).contains(c))
}

/// Whether `text` may be a room's `origin`: a return path, or an absolute `http`/`https`
/// URL of visible ASCII at most 2048 bytes.
fn valid_origin(text: &str) -> bool {
    if valid_return_path(text) {
        return true;
    }
    let lower = text.to_ascii_lowercase();
    let rest = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
        && text.len() <= MAX_ORIGIN_BYTES
        && text.bytes().all(|c| (0x21..0x7f).contains(&c))
}

/// The entry with its variables applied: each `LEASEHOLD_ROOM_<NAME>_<FIELD>` replaces its
/// field (numbers and booleans parsed as such, so they are checked as the file's are).
fn with_variables(entry: &toml::Table, env: &BTreeMap<String, String>) -> (toml::Table, Vec<String>) {
    let mut merged = entry.clone();
    let mut used = Vec::new();
    let Some(name) = entry.get("name").and_then(toml::Value::as_str) else { return (merged, used) };
    for field in ROOM_FIELDS.iter().filter(|f| **f != "name") {
        let var = room_variable(name, field);
        let Some(text) = env.get(&var) else { continue };
        let value = match *field {
            "cookie_secure" => match text.trim() {
                "true" | "1" => toml::Value::Boolean(true),
                "false" | "0" => toml::Value::Boolean(false),
                other => toml::Value::String(other.to_string()),
            },
            "capacity" | "admit_per_minute" | "admit_burst" | "session_ttl_ms" | "max_session_ms" | "waiter_ttl_ms" => {
                match text.trim().replace('_', "").parse::<i64>() {
                    Ok(n) => toml::Value::Integer(n),
                    Err(_) => toml::Value::String(text.trim().to_string()),
                }
            }
            _ => toml::Value::String(text.clone()),
        };
        merged.insert((*field).to_string(), value);
        used.push(var);
    }
    (merged, used)
}

/// Reads `[[rooms]]`, checks each entry, and adds each room's declaration to
/// `limits.declared` (after `[[locks.declare]]`'s). Returns the rooms and the variables
/// that overrode their fields (known variables, not worth a warning).
pub(super) fn validate_rooms(
    r: &mut Reader<'_>,
    env: &BTreeMap<String, String>,
    limits: &mut TableLimits,
) -> (Vec<RoomConfig>, Vec<String>) {
    let entries = r.top_tables("rooms");
    let mut rooms: Vec<RoomConfig> = Vec::new();
    let mut variables = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (path, entry) in entries {
        let (entry, used) = with_variables(entry, env);
        variables.extend(used);
        let Some(room) = room(r, &path, &entry, limits, env) else { continue };
        if let Some(first) = seen.get(&room.name) {
            r.invalid(format!("{path}.name"), format!("names room {:?} again ({first} did)", room.name));
            continue;
        }
        if let Some(i) = limits.declared.iter().position(|d| d.name.as_ref() == Some(&room.lock)) {
            r.invalid(
                format!("{path}.name"),
                format!(
                    "the room's lock {:?} is declared already (locks.declare[{i}]); a room declares it",
                    room.lock.as_str()
                ),
            );
            continue;
        }
        seen.insert(room.name.clone(), path);
        rooms.push(room);
    }
    if limits.declared.len() + rooms.len() > MAX_DECLARATIONS {
        r.invalid(
            "rooms",
            format!(
                "{} rooms and {} declared locks: together at most {MAX_DECLARATIONS} (each room declares its lock)",
                rooms.len(),
                limits.declared.len()
            ),
        );
        return (Vec::new(), variables);
    }
    limits.declared.extend(rooms.iter().map(RoomConfig::declaration));
    (rooms, variables)
}

/// One `[[rooms]]` entry at `path`, or `None` after recording its problems.
fn room(
    r: &mut Reader<'_>,
    path: &str,
    entry: &toml::Table,
    limits: &TableLimits,
    env: &BTreeMap<String, String>,
) -> Option<RoomConfig> {
    let before = r.problems.len();
    for field in entry.keys() {
        if !ROOM_FIELDS.contains(&field.as_str()) {
            r.invalid(format!("{path}.{field}"), format!("unknown key (a room has {})", ROOM_FIELDS.join(", ")));
        }
    }
    let name = r.entry_string(path, entry, "name");
    let name = match name {
        Some(n) if valid_room_name(&n) => n,
        Some(n) => {
            r.invalid(format!("{path}.name"), format!("{n:?} is not a room name: 1 to 64 of a-z, 0-9, _ and -"));
            String::new()
        }
        None => {
            if !entry.contains_key("name") {
                r.invalid(format!("{path}.name"), "is required");
            }
            String::new()
        }
    };
    let int = |r: &mut Reader<'_>, key: &str, min: u64, max: u64| r.entry_int(path, entry, key, min, max);
    let capacity = int(r, "capacity", 1, limits.max_limit.into());
    if capacity.is_none() && !entry.contains_key("capacity") {
        r.invalid(format!("{path}.capacity"), "is required (sessions at once)");
    }
    let session_ttl_ms =
        int(r, "session_ttl_ms", limits.min_ttl_ms, limits.max_ttl_ms).unwrap_or(DEFAULT_SESSION_TTL_MS);
    if !entry.contains_key("session_ttl_ms") && !(limits.min_ttl_ms..=limits.max_ttl_ms).contains(&session_ttl_ms) {
        r.invalid(
            format!("{path}.session_ttl_ms"),
            format!(
                "the default ({session_ttl_ms}) lies outside locks.min_ttl_ms ({}) to locks.max_ttl_ms ({}): set it",
                limits.min_ttl_ms, limits.max_ttl_ms
            ),
        );
    }
    let max_session_ms = int(r, "max_session_ms", 1000, MAX_SESSION_MS).unwrap_or(DEFAULT_MAX_SESSION_MS);
    if max_session_ms < session_ttl_ms {
        r.invalid(
            format!("{path}.max_session_ms"),
            format!("({max_session_ms}) must not be less than session_ttl_ms ({session_ttl_ms})"),
        );
    }
    let admit_per_minute = int(r, "admit_per_minute", 0, MAX_ADMIT_PER_MINUTE.into()).unwrap_or(0) as u32;
    let admit_burst = int(r, "admit_burst", 1, MAX_ADMIT_BURST.into()).unwrap_or(1) as u32;
    let waiter_ttl_ms = int(r, "waiter_ttl_ms", 1000, 3_600_000).unwrap_or(DEFAULT_ROOM_WAITER_TTL_MS);
    let secret = r.entry_string(path, entry, "secret");
    let secret_file = r.entry_string(path, entry, "secret_file");
    let (secret, secret_file) = match (secret, secret_file) {
        (Some(_), Some(_)) => {
            r.invalid(format!("{path}.secret_file"), "must not be given with secret: the secret is one or the other");
            (String::new(), None)
        }
        (Some(s), None) => {
            if let Some(problem) = secret_problem(&s) {
                r.invalid(format!("{path}.secret"), problem);
            }
            (s, None)
        }
        (None, Some(f)) if !f.trim().is_empty() => {
            let file = SecretFile { path: super::key_file_path(&f, env), setting: format!("{path}.secret_file") };
            (String::new(), Some(file))
        }
        (None, Some(_)) => {
            r.invalid(format!("{path}.secret_file"), "must name a file");
            (String::new(), None)
        }
        (None, None) => {
            if !entry.contains_key("secret") && !entry.contains_key("secret_file") {
                r.invalid(
                    format!("{path}.secret"),
                    format!(
                        "is required (or secret_file): {MIN_SECRET_BYTES} bytes or more that sign the room's cookies"
                    ),
                );
            }
            (String::new(), None)
        }
    };
    let origin = r.entry_string(path, entry, "origin").unwrap_or_else(|| DEFAULT_ORIGIN.to_string());
    if !valid_origin(&origin) {
        r.invalid(
            format!("{path}.origin"),
            format!("{origin:?} is neither a path starting with one / nor an http(s) URL (visible ASCII, at most {MAX_ORIGIN_BYTES} bytes)"),
        );
    }
    let text = |r: &mut Reader<'_>, key: &str, default: &str, max: usize| {
        let value = r.entry_string(path, entry, key).unwrap_or_else(|| default.to_string());
        if value.trim().is_empty() || value.len() > max || value.chars().any(char::is_control) {
            r.invalid(format!("{path}.{key}"), format!("must be 1 to {max} bytes of text without control characters"));
        }
        value
    };
    let title = text(r, "title", DEFAULT_TITLE, MAX_TITLE_BYTES);
    let message = text(r, "message", DEFAULT_MESSAGE, MAX_MESSAGE_BYTES);
    let cookie_secure = match entry.get("cookie_secure") {
        None => true,
        Some(toml::Value::Boolean(b)) => *b,
        Some(_) => {
            r.invalid(format!("{path}.cookie_secure"), "must be true or false");
            true
        }
    };
    if r.problems.len() > before {
        return None;
    }
    let lock = LockName::parse(&format!("{ROOM_LOCK_PREFIX}{name}")).ok()?;
    let room = RoomConfig {
        name,
        lock,
        capacity: capacity? as u32,
        session_ttl_ms,
        max_session_ms,
        admit_per_minute,
        admit_burst,
        waiter_ttl_ms,
        secret,
        secret_file,
        origin,
        title,
        message,
        cookie_secure,
    };
    if let Err(problem) = room.declaration().check(limits) {
        r.invalid(path.to_string(), format!("its lock cannot be declared: {problem}"));
        return None;
    }
    Some(room)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn problems(text: &str) -> Vec<String> {
        Config::load(Some(text), &[]).unwrap_err().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn room_with_every_field_is_read_and_declares_its_lock() {
        let text = format!(
            r#"
[[rooms]]
name = "shop"
capacity = 10
session_ttl_ms = "5m"
max_session_ms = 7200000
admit_per_minute = 60
admit_burst = 5
waiter_ttl_ms = 20000
secret = "{SECRET}"
origin = "https://shop.example/"
title = "Shop <queue>"
message = "Wait & see"
cookie_secure = false
"#
        );
        let c = Config::load(Some(&text), &[]).unwrap();
        let room = &c.rooms[0];
        assert_eq!((room.name.as_str(), room.lock.as_str(), room.capacity), ("shop", "room:shop", 10));
        assert_eq!((room.session_ttl_ms, room.max_session_ms, room.waiter_ttl_ms), (300_000, 7_200_000, 20_000));
        assert_eq!((room.admit_per_minute, room.admit_burst, room.cookie_secure), (60, 5, false));
        assert_eq!((room.title.as_str(), room.message.as_str()), ("Shop <queue>", "Wait & see"));
        let d = c.locks.table.declared.iter().find(|d| d.name.as_ref() == Some(&room.lock)).unwrap();
        assert_eq!((d.limit, d.queue, d.admit_per_minute, d.admit_burst), (10, QueueKind::Fifo, Some(60), 5));
        assert_eq!((d.default_ttl_ms, d.max_ttl_ms, d.waiter_ttl_ms), (Some(300_000), Some(300_000), Some(20_000)));
        assert!(!format!("{c:?}").contains(SECRET), "Debug never shows a room secret");
    }

    #[test]
    fn room_defaults_apply_and_no_rooms_is_the_default() {
        assert!(Config::defaults().rooms.is_empty());
        let c = Config::load(Some(&format!("[[rooms]]\nname = \"a-1_b\"\ncapacity = 1\nsecret = \"{SECRET}\"\n")), &[])
            .unwrap();
        let room = &c.rooms[0];
        assert_eq!((room.session_ttl_ms, room.max_session_ms, room.admit_per_minute), (300_000, 3_600_000, 0));
        assert_eq!((room.origin.as_str(), room.cookie_secure, room.title.as_str()), ("/", true, DEFAULT_TITLE));
        assert_eq!(c.locks.table.declared[0].admit_per_minute, None, "0: no rate");
    }

    #[test]
    fn room_variables_override_fields_and_are_not_warned_about() {
        let text = "[[rooms]]\nname = \"my-shop\"\ncapacity = 1\nsecret_file = \"/nowhere\"\n";
        let other = "ffffffffffffffffffffffffffffffffffff";
        let vars = env(&[
            ("LEASEHOLD_ROOM_MY_SHOP_SECRET_FILE", ""),
            ("LEASEHOLD_ROOM_MY_SHOP_CAPACITY", "7"),
            ("LEASEHOLD_ROOM_MY_SHOP_COOKIE_SECURE", "0"),
        ]);
        // An empty secret_file names no file: a problem.
        let p = Config::load(Some(text), &vars).unwrap_err();
        assert!(p[0].to_string().contains("rooms[0].secret_file"), "{p:?}");
        let text = format!("[[rooms]]\nname = \"my-shop\"\ncapacity = 1\nsecret = \"{SECRET}\"\n");
        let vars = env(&[
            ("LEASEHOLD_ROOM_MY_SHOP_SECRET", other),
            ("LEASEHOLD_ROOM_MY_SHOP_CAPACITY", "7"),
            ("LEASEHOLD_ROOM_MY_SHOP_COOKIE_SECURE", "0"),
        ]);
        let c = Config::load(Some(&text), &vars).unwrap();
        assert_eq!((c.rooms[0].secret.as_str(), c.rooms[0].capacity, c.rooms[0].cookie_secure), (other, 7, false));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let c = Config::load(Some(&text), &env(&[("LEASEHOLD_ROOM_OTHER_SECRET", other)])).unwrap();
        assert_eq!(c.warnings.len(), 1, "a variable for no room is warned about");
    }

    #[test]
    fn room_problems_name_the_entry_and_field() {
        let text = format!(
            r#"
[[rooms]]
name = "Shop"
capacity = 0
secret = "short"
[[rooms]]
name = "ok"
capacity = 1
secret = "{SECRET}"
session_ttl_ms = 60000
max_session_ms = 1000
origin = "//evil.example/"
[[rooms]]
name = "ok"
capacity = 1
secret = "{SECRET}"
colour = "red"
[[rooms]]
capacity = 1
[[rooms]]
name = "t"
capacity = 1
secret = "{SECRET}"
secret_file = "/x"
title = ""
cookie_secure = "yes"
"#
        );
        let p = problems(&text);
        for want in [
            "rooms[0].name",
            "rooms[0].capacity",
            "rooms[0].secret",
            "rooms[1].max_session_ms",
            "rooms[1].origin",
            "rooms[2].colour",
            "rooms[3].name: is required",
            "rooms[3].secret: is required",
            "rooms[4].secret_file",
            "rooms[4].title",
            "rooms[4].cookie_secure",
        ] {
            assert!(p.iter().any(|l| l.starts_with(want)), "no problem {want:?} in {p:#?}");
        }
        // The second "ok" is named again only when the first was valid: here it was not.
        let twice = format!("[[rooms]]\nname = \"a\"\ncapacity = 1\nsecret = \"{SECRET}\"\n").repeat(2);
        assert!(problems(&twice)[0].contains(r#"rooms[1].name: names room "a" again (rooms[0] did)"#));
        let declared = format!(
            "[[locks.declare]]\nname = \"room:a\"\n[[rooms]]\nname = \"a\"\ncapacity = 1\nsecret = \"{SECRET}\"\n"
        );
        assert!(problems(&declared)[0].contains("declared already (locks.declare[0])"), "{:?}", problems(&declared));
        let over = format!("[locks]\nmax_limit = 5\n[[rooms]]\nname = \"a\"\ncapacity = 6\nsecret = \"{SECRET}\"\n");
        assert!(problems(&over)[0].starts_with("rooms[0].capacity"), "{:?}", problems(&over));
    }

    #[test]
    fn return_paths_are_relative_paths_on_this_site_only() {
        for ok in ["/", "/a/b?c=d&e=%2F", "/x#frag"] {
            assert!(valid_return_path(ok), "{ok}");
        }
        let long = format!("/{}", "a".repeat(MAX_ORIGIN_BYTES));
        for bad in [
            "",
            "//evil.example/",
            "/\\evil.example",
            "https://evil.example/",
            "javascript:alert(1)",
            "a/b",
            "/a b",
            "/a\r\nSet-Cookie: x=y",
            "/a\t",
            "/é",
            long.as_str(),
        ] {
            assert!(!valid_return_path(bad), "{bad:?}");
        }
        assert!(valid_origin("https://shop.example/") && valid_origin("http://h:8080") && valid_origin("/"));
        assert!(!valid_origin("https://") && !valid_origin("ftp://x/") && !valid_origin("https:///x"));
    }

    #[test]
    fn room_names_are_lower_case_ascii_words() {
        for ok in ["a", "shop", "my-shop_2", &"a".repeat(64)] {
            assert!(valid_room_name(ok), "{ok}");
        }
        for bad in ["", "Shop", "a b", "a.b", "a:b", "é", &"a".repeat(65)] {
            assert!(!valid_room_name(bad), "{bad}");
        }
        assert_eq!(room_variable("my-shop", "secret"), "LEASEHOLD_ROOM_MY_SHOP_SECRET");
    }
}
