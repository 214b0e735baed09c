//! The client subcommands' command lines, parsed into plain values. Pure: the environment's
//! `LEASEHOLD_URL` and `LEASEHOLD_KEY` come in as arguments (`LEASEHOLD_CACERT` is read by
//! the shell, `client::connect`, when `--cacert` is not given).

use std::fmt;
use std::path::PathBuf;

/// The server used when neither `--server` nor `LEASEHOLD_URL` says otherwise.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";
/// Default lease TTL of `leasehold lock`.
pub const DEFAULT_TTL_MS: u64 = 30_000;
/// Default time `leasehold lock` waits in the queue.
pub const DEFAULT_WAIT_MS: u64 = 0;
/// Default time between SIGTERM and SIGKILL when a lease is lost.
pub const DEFAULT_GRACE_MS: u64 = 10_000;

/// Why a command line was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgsError {
    /// An option the command does not know.
    UnknownOption(String),
    /// An option without its value.
    MissingValue(String),
    /// A value that does not parse.
    BadValue {
        /// The option.
        option: String,
        /// What was given.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// A required argument is missing.
    Missing(&'static str),
    /// More arguments than the command takes.
    Unexpected(String),
    /// Two things given together that do not go together.
    Conflict {
        /// The option.
        option: &'static str,
        /// What it was given with.
        with: String,
        /// Why they do not go together.
        reason: &'static str,
    },
}

impl fmt::Display for ArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownOption(o) => write!(f, "unknown option {o}"),
            Self::MissingValue(o) => write!(f, "{o} needs a value"),
            Self::BadValue { option, value, expected } => write!(f, "{option} {value:?}: expected {expected}"),
            Self::Missing(what) => write!(f, "missing {what}"),
            Self::Unexpected(a) => write!(f, "unexpected argument {a:?}"),
            Self::Conflict { option, with, reason } => write!(f, "{option} does not go with {with}: {reason}"),
        }
    }
}

impl std::error::Error for ArgsError {}

/// A client command's argument parser: the arguments, then `LEASEHOLD_URL` and
/// `LEASEHOLD_KEY` from the environment.
pub type Parser<A> = fn(&[&str], Option<&str>, Option<&str>) -> Result<A, ArgsError>;

/// Where the server is and how to present oneself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Base URL (`http://host:port` or `https://host`), or several separated by commas.
    pub server: String,
    /// API key, sent as `x-api-key`.
    pub key: Option<String>,
    /// PEM file of CA certificates to trust for `https://` besides the usual roots.
    pub cacert: Option<PathBuf>,
}

/// `leasehold lock NAME [options] -- CMD ARGS…`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockArgs {
    /// Server and key.
    pub target: Target,
    /// The lock.
    pub name: String,
    /// Lease TTL.
    pub ttl_ms: u64,
    /// How long to wait in the queue (0: try once).
    pub wait_ms: u64,
    /// Permits of the lock.
    pub limit: u32,
    /// Permits this run takes.
    pub weight: u32,
    /// Label shown to others.
    pub owner: Option<String>,
    /// SIGTERM to SIGKILL when the lease is lost.
    pub grace_ms: u64,
    /// The command and its arguments.
    pub command: Vec<String>,
}

/// `leasehold status [NAME] [--json]` or `leasehold status --cluster [--json]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusArgs {
    /// Server and key.
    pub target: Target,
    /// One lock, or all.
    pub name: Option<String>,
    /// The server's JSON instead of a table.
    pub json: bool,
    /// Where every listed node stands in the cluster, instead of locks.
    pub cluster: bool,
}

/// `leasehold release NAME TICKET`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseArgs {
    /// Server and key.
    pub target: Target,
    /// The lock.
    pub name: String,
    /// The lease's ticket.
    pub ticket: String,
}

/// Parses `30s`, `1m`, `500ms`, `2h` or a bare number of seconds into milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let scale = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// Splits the options shared by every client command off `args`: `--server URL`,
/// `--key KEY` (environment values as defaults), `--cacert FILE`. Returns the target and
/// what is left.
fn take_target<'a>(
    args: &[&'a str],
    env_url: Option<&str>,
    env_key: Option<&str>,
) -> Result<(Target, Vec<&'a str>), ArgsError> {
    let mut target = Target {
        server: env_url.unwrap_or(DEFAULT_SERVER).trim_end_matches('/').to_string(),
        key: env_key.map(str::to_string),
        cacert: None,
    };
    let mut rest = Vec::new();
    let mut i = 0;
    while i < args.len() {
        match args[i] {
            "--" => {
                rest.extend_from_slice(&args[i..]);
                break;
            }
            option @ ("--server" | "--key" | "--cacert") => {
                let value = args.get(i + 1).ok_or_else(|| ArgsError::MissingValue(option.into()))?;
                match option {
                    "--server" => target.server = value.trim_end_matches('/').to_string(),
                    "--key" => target.key = Some((*value).to_string()),
                    _ => target.cacert = Some(PathBuf::from(value)),
                }
                i += 2;
            }
            other => {
                rest.push(other);
                i += 1;
            }
        }
    }
    Ok((target, rest))
}

fn value<'a>(rest: &[&'a str], i: usize) -> Result<&'a str, ArgsError> {
    rest.get(i + 1).copied().ok_or_else(|| ArgsError::MissingValue(rest[i].into()))
}

fn duration(option: &str, text: &str) -> Result<u64, ArgsError> {
    parse_duration_ms(text).ok_or_else(|| ArgsError::BadValue {
        option: option.into(),
        value: text.into(),
        expected: "a duration such as 500ms, 30s, 5m or 1h",
    })
}

fn count(option: &str, text: &str) -> Result<u32, ArgsError> {
    text.parse().ok().filter(|&n| n > 0).ok_or_else(|| ArgsError::BadValue {
        option: option.into(),
        value: text.into(),
        expected: "a whole number of at least 1",
    })
}

/// Parses the arguments after `lock`.
pub fn parse_lock(args: &[&str], env_url: Option<&str>, env_key: Option<&str>) -> Result<LockArgs, ArgsError> {
    let (target, rest) = take_target(args, env_url, env_key)?;
    let mut lock = LockArgs {
        target,
        name: String::new(),
        ttl_ms: DEFAULT_TTL_MS,
        wait_ms: DEFAULT_WAIT_MS,
        limit: 1,
        weight: 1,
        owner: None,
        grace_ms: DEFAULT_GRACE_MS,
        command: Vec::new(),
    };
    let mut i = 0;
    while i < rest.len() {
        let option = rest[i];
        match option {
            "--" => {
                lock.command = rest[i + 1..].iter().map(|s| s.to_string()).collect();
                break;
            }
            "--ttl" => lock.ttl_ms = duration(option, value(&rest, i)?)?,
            "--wait" => lock.wait_ms = duration(option, value(&rest, i)?)?,
            "--grace" => lock.grace_ms = duration(option, value(&rest, i)?)?,
            "--limit" => lock.limit = count(option, value(&rest, i)?)?,
            "--weight" => lock.weight = count(option, value(&rest, i)?)?,
            "--owner" => lock.owner = Some(value(&rest, i)?.to_string()),
            o if o.starts_with('-') => return Err(ArgsError::UnknownOption(o.into())),
            name if lock.name.is_empty() => {
                lock.name = name.to_string();
                i += 1;
                continue;
            }
            other => return Err(ArgsError::Unexpected(other.into())),
        }
        i += 2;
    }
    if lock.name.is_empty() {
        return Err(ArgsError::Missing("the lock name"));
    }
    if lock.command.is_empty() {
        return Err(ArgsError::Missing("the command to run, after --"));
    }
    if lock.ttl_ms < 300 {
        return Err(ArgsError::BadValue {
            option: "--ttl".into(),
            value: format!("{}ms", lock.ttl_ms),
            expected: "at least 300ms (renewals go out every third of it)",
        });
    }
    Ok(lock)
}

/// Parses the arguments after `status`.
pub fn parse_status(args: &[&str], env_url: Option<&str>, env_key: Option<&str>) -> Result<StatusArgs, ArgsError> {
    let (target, rest) = take_target(args, env_url, env_key)?;
    let mut status = StatusArgs { target, name: None, json: false, cluster: false };
    for arg in rest {
        match arg {
            "--json" => status.json = true,
            "--cluster" => status.cluster = true,
            o if o.starts_with('-') => return Err(ArgsError::UnknownOption(o.into())),
            name if status.name.is_none() => status.name = Some(name.to_string()),
            other => return Err(ArgsError::Unexpected(other.into())),
        }
    }
    if let (true, Some(name)) = (status.cluster, &status.name) {
        return Err(ArgsError::Conflict {
            option: "--cluster",
            with: format!("the lock name {name:?}"),
            reason: "it lists the nodes of --server, not locks",
        });
    }
    Ok(status)
}

/// Parses the arguments after `release`.
pub fn parse_release(args: &[&str], env_url: Option<&str>, env_key: Option<&str>) -> Result<ReleaseArgs, ArgsError> {
    let (target, rest) = take_target(args, env_url, env_key)?;
    let release =
        |name: &str, ticket: &str| ReleaseArgs { target: target.clone(), name: name.into(), ticket: ticket.into() };
    match rest.as_slice() {
        // After `--`, both words are taken as they are.
        ["--", name, ticket] => Ok(release(name, ticket)),
        [o, ..] if o.starts_with('-') => Err(ArgsError::UnknownOption(o.to_string())),
        [] | [_] => Err(ArgsError::Missing("the lock name and the ticket")),
        // The ticket is the second word whatever it starts with: tickets are base64url, so
        // one in 64 starts with '-'.
        [name, ticket] => Ok(release(name, ticket)),
        [_, _, extra, ..] => Err(ArgsError::Unexpected(extra.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_refuse_the_rest() {
        assert_eq!(parse_duration_ms("30s"), Some(30_000));
        assert_eq!(parse_duration_ms("1m"), Some(60_000));
        assert_eq!(parse_duration_ms("250ms"), Some(250));
        assert_eq!(parse_duration_ms("2h"), Some(7_200_000));
        assert_eq!(parse_duration_ms("45"), Some(45_000));
        for bad in ["", "s", "1.5s", "10d", "-1s", "99999999999999999999s"] {
            assert_eq!(parse_duration_ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn lock_takes_options_in_any_order_and_the_command_verbatim() {
        let a = parse_lock(
            &[
                "--ttl",
                "10s",
                "nightly",
                "--wait",
                "1m",
                "--server",
                "http://h:9/",
                "--limit",
                "2",
                "--",
                "sh",
                "-c",
                "--x",
            ],
            Some("http://env:1"),
            Some("k"),
        )
        .unwrap();
        assert_eq!(a.name, "nightly");
        assert_eq!((a.ttl_ms, a.wait_ms, a.limit, a.weight), (10_000, 60_000, 2, 1));
        assert_eq!(a.target, Target { server: "http://h:9".into(), key: Some("k".into()), cacert: None });
        assert_eq!(a.command, ["sh", "-c", "--x"]);
        let defaults = parse_lock(&["n", "--", "true"], None, None).unwrap();
        assert_eq!((defaults.target.server.as_str(), defaults.target.cacert.as_ref()), (DEFAULT_SERVER, None));
        let tls = parse_lock(&["--cacert", "/ca.pem", "n", "--server", "https://h", "--", "true"], None, None).unwrap();
        assert_eq!((tls.target.server.as_str(), tls.target.cacert), ("https://h", Some(PathBuf::from("/ca.pem"))));
        assert_eq!(parse_status(&["--cacert"], None, None).unwrap_err(), ArgsError::MissingValue("--cacert".into()));
        assert_eq!((defaults.ttl_ms, defaults.wait_ms, defaults.grace_ms), (30_000, 0, 10_000));
    }

    #[test]
    fn lock_refuses_what_it_cannot_run() {
        let err = |args: &[&str]| parse_lock(args, None, None).unwrap_err();
        assert_eq!(err(&["--", "true"]), ArgsError::Missing("the lock name"));
        assert_eq!(err(&["n"]), ArgsError::Missing("the command to run, after --"));
        assert_eq!(err(&["n", "--"]), ArgsError::Missing("the command to run, after --"));
        assert_eq!(err(&["n", "--bogus", "--", "true"]), ArgsError::UnknownOption("--bogus".into()));
        assert_eq!(err(&["n", "--ttl"]), ArgsError::MissingValue("--ttl".into()));
        assert!(matches!(err(&["n", "--limit", "0", "--", "true"]), ArgsError::BadValue { .. }));
        assert!(matches!(err(&["n", "--ttl", "100ms", "--", "true"]), ArgsError::BadValue { .. }));
        assert_eq!(err(&["n", "m", "--", "true"]), ArgsError::Unexpected("m".into()));
    }

    #[test]
    fn status_cluster_takes_no_lock_name() {
        let s = parse_status(&["--cluster", "--server", "http://a:1,http://b:2"], None, None).unwrap();
        assert_eq!((s.cluster, s.json, s.name), (true, false, None));
        assert_eq!(s.target.server, "http://a:1,http://b:2");
        let s = parse_status(&["--json", "--cluster"], Some("http://env:1"), None).unwrap();
        assert_eq!((s.cluster, s.json, s.target.server.as_str()), (true, true, "http://env:1"));
        assert!(!parse_status(&["a"], None, None).unwrap().cluster);
        for args in [&["--cluster", "nightly"][..], &["nightly", "--cluster"][..]] {
            let err = parse_status(args, None, None).unwrap_err();
            assert_eq!(
                err.to_string(),
                "--cluster does not go with the lock name \"nightly\": it lists the nodes of --server, not locks",
                "{args:?}"
            );
        }
    }

    #[test]
    fn status_and_release_take_their_arguments() {
        let s = parse_status(&["--json", "a"], None, None).unwrap();
        assert_eq!((s.name.as_deref(), s.json), (Some("a"), true));
        assert_eq!(parse_status(&[], None, None).unwrap().name, None);
        assert!(parse_status(&["a", "b"], None, None).is_err());
        let r = parse_release(&["a", "T"], None, Some("k")).unwrap();
        assert_eq!((r.name.as_str(), r.ticket.as_str(), r.target.key.as_deref()), ("a", "T", Some("k")));
        assert!(parse_release(&["a"], None, None).is_err());
        assert!(parse_release(&["a", "T", "x"], None, None).is_err());
        // A ticket may start with '-'; after `--`, so may the lock's name.
        assert_eq!(parse_release(&["a", "-Tx"], None, None).unwrap().ticket, "-Tx");
        let r = parse_release(&["--", "-n", "-T"], None, None).unwrap();
        assert_eq!((r.name.as_str(), r.ticket.as_str()), ("-n", "-T"));
    }
}
