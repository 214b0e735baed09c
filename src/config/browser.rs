//! `[browser]`: what lets a web page use the API (docs/api.md, "Browser access" and
//! "Dashboard"): the secret that seals ticket tokens, the origins allowed to call the API
//! from a browser (CORS), how long a browser may cache a preflight answer, and how many
//! dashboard streams one worker carries. Pure like the rest of `config/`: values are read
//! through the [`Reader`] and checked, nothing else.

use super::read::Reader;
use crate::core::seal::MIN_SECRET_BYTES;

const SECTION: &str = "browser";
/// Default of `browser.cors_max_age_s`.
pub const DEFAULT_CORS_MAX_AGE_S: u64 = 600;
/// Largest `browser.cors_max_age_s` (a day: browsers cap it lower anyway).
pub const MAX_CORS_MAX_AGE_S: u64 = 86_400;
/// Most entries of `browser.cors_origins`.
pub const MAX_CORS_ORIGINS: usize = 64;
/// Longest origin in `browser.cors_origins`.
pub const MAX_ORIGIN_BYTES: usize = 256;
/// Longest `browser.secret`.
pub const MAX_BROWSER_SECRET_BYTES: usize = 1_024;
/// Default of `browser.max_dashboards`: dashboard streams (`GET /v1/ui/events`) one worker
/// carries at once.
pub const DEFAULT_MAX_DASHBOARDS: u64 = 16;
/// Largest `browser.max_dashboards`.
pub const MAX_DASHBOARDS: u64 = 1_024;

/// `[browser]`.
#[derive(Clone, PartialEq, Eq)]
pub struct BrowserConfig {
    /// Seals the ticket tokens of native acquire answers (`None`: no tokens).
    pub secret: Option<String>,
    /// Origins (`scheme://host[:port]`, lower-case) whose pages may call the API.
    pub cors_origins: Vec<String>,
    /// `Access-Control-Max-Age` of preflight answers.
    pub cors_max_age_s: u64,
    /// Dashboard streams one worker carries at once.
    pub max_dashboards: u64,
}

impl std::fmt::Debug for BrowserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("BrowserConfig")
            .field("secret", &self.secret.as_ref().map(|_| "…"))
            .field("cors_origins", &self.cors_origins)
            .field("cors_max_age_s", &self.cors_max_age_s)
            .field("max_dashboards", &self.max_dashboards)
            .finish()
    }
}

/// Reads and checks `[browser]`.
pub(super) fn validate_browser(r: &mut Reader<'_>) -> BrowserConfig {
    let secret = match r.string(SECTION, "secret", "LEASEHOLD_BROWSER_SECRET") {
        None => None,
        Some((_, text)) if text.is_empty() => None,
        Some((path, text)) if !(MIN_SECRET_BYTES..=MAX_BROWSER_SECRET_BYTES).contains(&text.len()) => {
            r.invalid(
                path,
                format!(
                    "must be {MIN_SECRET_BYTES} to {MAX_BROWSER_SECRET_BYTES} bytes long (it is {}); empty turns ticket tokens off",
                    text.len()
                ),
            );
            None
        }
        Some((_, text)) => Some(text),
    };
    let mut cors_origins: Vec<String> = Vec::new();
    if let Some((path, items)) = r.strings(SECTION, "cors_origins", "LEASEHOLD_CORS_ORIGINS") {
        if items.len() > MAX_CORS_ORIGINS {
            r.invalid(path.clone(), format!("has {} entries; at most {MAX_CORS_ORIGINS}", items.len()));
        }
        for item in items.iter().take(MAX_CORS_ORIGINS) {
            match check_origin(item) {
                Ok(origin) if cors_origins.contains(&origin) => r.invalid(path.clone(), format!("lists {item} twice")),
                Ok(origin) => cors_origins.push(origin),
                Err(why) => r.invalid(path.clone(), format!("{item:?} {why}")),
            }
        }
    }
    let cors_max_age_s =
        r.int(SECTION, "cors_max_age_s", "LEASEHOLD_CORS_MAX_AGE_S", DEFAULT_CORS_MAX_AGE_S, 0, MAX_CORS_MAX_AGE_S);
    let max_dashboards =
        r.int(SECTION, "max_dashboards", "LEASEHOLD_MAX_DASHBOARDS", DEFAULT_MAX_DASHBOARDS, 0, MAX_DASHBOARDS);
    BrowserConfig { secret, cors_origins, cors_max_age_s, max_dashboards }
}

/// An origin as a browser sends it in `Origin`: `http` or `https`, `://`, a host (a name,
/// an IPv4 address or a bracketed IPv6 address) and an optional port, nothing after it.
/// Returned lower-case (browsers send scheme and host lower-case). Wildcards are refused:
/// every allowed origin is named.
pub fn check_origin(text: &str) -> Result<String, &'static str> {
    if text.len() > MAX_ORIGIN_BYTES {
        return Err("is too long for an origin");
    }
    if text.contains('*') {
        return Err("is a wildcard; name each origin (https://app.example)");
    }
    let lower = text.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .ok_or("is not an origin: it must start with https:// or http://")?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err("is not an origin: scheme, host and port only, no path, not even a trailing /");
    }
    let (host_ok, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (addr, after) = v6.split_once(']').ok_or("has an unclosed [")?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or("has something after its host that is not a port")?),
            };
            (addr.parse::<std::net::Ipv6Addr>().is_ok(), port)
        }
        None => {
            let (host, port) = match rest.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            };
            let ok = !host.is_empty()
                && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                && !host.starts_with(['.', '-']);
            (ok, port)
        }
    };
    if !host_ok {
        return Err("has a host that is not a name or an address");
    }
    if let Some(port) = port {
        if port.is_empty()
            || port.len() > 5
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u16>().is_err()
        {
            return Err("has a port that is not a number from 0 to 65535");
        }
    }
    Ok(lower)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};

    fn load(text: &str) -> Result<Config, Vec<ConfigError>> {
        Config::load(Some(text), &[])
    }

    #[test]
    fn browser_defaults_turn_everything_off() {
        let b = Config::defaults().browser;
        assert_eq!(b.secret, None);
        assert!(b.cors_origins.is_empty());
        assert_eq!((b.cors_max_age_s, b.max_dashboards), (DEFAULT_CORS_MAX_AGE_S, DEFAULT_MAX_DASHBOARDS));
    }

    #[test]
    fn browser_keys_are_read_from_the_file_and_the_environment() {
        let secret = "s".repeat(32);
        let c = load(&format!(
            "[browser]\nsecret = \"{secret}\"\ncors_origins = [\"https://App.example\", \"http://127.0.0.1:8000\", \"http://[::1]:3000\"]\ncors_max_age_s = 5\nmax_dashboards = 2\n"
        ))
        .unwrap();
        assert_eq!(c.browser.secret.as_deref(), Some(secret.as_str()));
        assert_eq!(c.browser.cors_origins, ["https://app.example", "http://127.0.0.1:8000", "http://[::1]:3000"]);
        assert_eq!((c.browser.cors_max_age_s, c.browser.max_dashboards), (5, 2));
        let env = [
            ("LEASEHOLD_BROWSER_SECRET".to_string(), "t".repeat(40)),
            ("LEASEHOLD_CORS_ORIGINS".to_string(), "https://a.example, https://b.example".to_string()),
            ("LEASEHOLD_CORS_MAX_AGE_S".to_string(), "60".to_string()),
            ("LEASEHOLD_MAX_DASHBOARDS".to_string(), "0".to_string()),
        ];
        let c = Config::load(None, &env).unwrap();
        assert_eq!(c.browser.secret.as_deref().map(str::len), Some(40));
        assert_eq!(c.browser.cors_origins, ["https://a.example", "https://b.example"]);
        assert_eq!((c.browser.cors_max_age_s, c.browser.max_dashboards), (60, 0));
        assert!(!format!("{:?}", c.browser).contains("ttt"), "Debug never shows the secret");
    }

    #[test]
    fn browser_secret_shorter_than_32_bytes_is_refused() {
        let problems = load("[browser]\nsecret = \"short\"\n").unwrap_err();
        assert!(problems.iter().any(|p| p.to_string().contains("browser.secret")), "{problems:?}");
        assert_eq!(load("[browser]\nsecret = \"\"\n").unwrap().browser.secret, None);
    }

    #[test]
    fn browser_origins_must_be_exact_origins() {
        for bad in [
            "*",
            "https://*.example",
            "app.example",
            "ftp://app.example",
            "https://app.example/",
            "https://app.example/path",
            "https://user@app.example",
            "https://app.example:99999",
            "https://app.example:",
            "https://",
            "https://[nope]",
            "https://a b",
        ] {
            assert!(check_origin(bad).is_err(), "{bad}");
            let problems = load(&format!("[browser]\ncors_origins = [\"{bad}\"]\n")).unwrap_err();
            assert!(problems.iter().any(|p| p.to_string().contains("browser.cors_origins")), "{bad}: {problems:?}");
        }
        let twice = load("[browser]\ncors_origins = [\"https://a.example\", \"https://A.example\"]\n").unwrap_err();
        assert!(twice[0].to_string().contains("twice"), "{twice:?}");
        assert_eq!(check_origin("https://[::1]:8443"), Ok("https://[::1]:8443".into()));
    }
}
