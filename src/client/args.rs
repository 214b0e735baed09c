//! The client subcommands' options (`lock`, `status`, `release`), declared with clap's
//! derive and parsed into these plain values; `crate::cli` puts them in the whole command
//! line. Parsing only: nothing here calls a server. `--server` and `--key` fall back to
//! `LEASEHOLD_URL` and `LEASEHOLD_KEY`, `--cacert` to `LEASEHOLD_CACERT` (clap reads them); durations go through
//! [`crate::core::duration`], the parser the configuration's `_ms` keys use too.

use std::path::PathBuf;

use clap::Args;

use crate::core::duration::{self, DURATION_EXAMPLES};

/// The server used when neither `--server` nor `LEASEHOLD_URL` says otherwise.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";
/// Default lease TTL of `leasehold lock`.
pub const DEFAULT_TTL_MS: u64 = 30_000;
/// Default time `leasehold lock` waits in the queue.
pub const DEFAULT_WAIT_MS: u64 = 0;
/// Default time between SIGTERM and SIGKILL when a lease is lost.
pub const DEFAULT_GRACE_MS: u64 = 10_000;
/// Shortest `--ttl`: renewals go out every third of it, and each needs a round trip.
pub const MIN_TTL_MS: u64 = 300;
/// Default exit status of `leasehold lock` when someone else holds the lock past `--wait`
/// (sysexits `EX_TEMPFAIL`).
pub const DEFAULT_CONFLICT_EXIT_CODE: u8 = 75;

/// Where the server is and how to present oneself.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct Target {
    /// Server URL, or the nodes of a cluster as a comma-separated list (a request follows
    /// the leader they name)
    #[arg(long, value_name = "URL", env = "LEASEHOLD_URL", default_value = DEFAULT_SERVER, value_parser = server_url)]
    pub server: String,
    /// API key, sent as x-api-key
    #[arg(long, value_name = "KEY", env = "LEASEHOLD_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// PEM file of CA certificates to trust for https:// besides the usual roots (a private CA)
    #[arg(long, value_name = "FILE", env = "LEASEHOLD_CACERT")]
    pub cacert: Option<PathBuf>,
}

/// `leasehold lock [options] NAME -- CMD ARGS…`
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct LockArgs {
    /// The lock
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The command to run while the lease is held, and its arguments (after --)
    #[arg(value_name = "CMD", last = true, required = true)]
    pub command: Vec<String>,
    /// Lease TTL (500ms, 30s, 5m, 1h; a bare number is seconds), renewed every third of it
    /// (default: the lock's declared default, else the server's, 30s unless configured)
    #[arg(long = "ttl", value_name = "DURATION", value_parser = ttl)]
    pub ttl_ms: Option<u64>,
    /// How long to wait in the lock's FIFO queue (0: try once)
    #[arg(short = 'w', long = "wait", value_name = "DURATION", default_value = "0s", value_parser = duration_ms)]
    pub wait_ms: u64,
    /// Permits of the lock, a semaphore above 1 (default: as the server declares the lock, else 1)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    /// Permits this run takes
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub weight: u32,
    /// Hold a read/write lock shared, beside other --shared runs (a reader)
    #[arg(long, conflicts_with_all = ["exclusive", "limit", "weight"])]
    pub shared: bool,
    /// Hold a read/write lock alone (a writer); plain runs of a read/write lock are writers too
    #[arg(long, conflicts_with_all = ["limit", "weight"])]
    pub exclusive: bool,
    /// Label shown to others as the holder
    #[arg(long, value_name = "LABEL")]
    pub owner: Option<String>,
    /// Time from SIGTERM to SIGKILL when the lease is lost
    #[arg(long = "grace", value_name = "DURATION", default_value = "10s", value_parser = duration_ms)]
    pub grace_ms: u64,
    /// Print nothing when the lock is held by someone else (errors are still printed)
    #[arg(short, long)]
    pub quiet: bool,
    /// Exit status when the lock is held by someone else past --wait (CMD does not run)
    #[arg(short = 'E', long, value_name = "CODE", default_value_t = DEFAULT_CONFLICT_EXIT_CODE)]
    pub conflict_exit_code: u8,
    /// Server and key.
    #[command(flatten)]
    pub target: Target,
}

/// `leasehold status [NAME] [--json]` or `leasehold status --cluster [--json]`
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct StatusArgs {
    /// One lock (all of them without it)
    #[arg(value_name = "NAME", conflicts_with = "cluster")]
    pub name: Option<String>,
    /// The server's JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// Where every node of --server stands (GET /readyz of each, at once, 2 s each) instead
    /// of locks
    #[arg(long)]
    pub cluster: bool,
    /// Server and key.
    #[command(flatten)]
    pub target: Target,
}

/// `leasehold release NAME TICKET`
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ReleaseArgs {
    /// The lock
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The lease's ticket (it may start with '-': tickets are base64url)
    #[arg(value_name = "TICKET", allow_hyphen_values = true)]
    pub ticket: String,
    /// Server and key.
    #[command(flatten)]
    pub target: Target,
}

/// A time option: `500ms`, `30s`, `5m`, `1h`, `1m30s`, or a bare number of seconds.
fn duration_ms(text: &str) -> Result<u64, String> {
    duration::parse_ms(text, 1_000).map_err(|e| format!("not a duration ({e}); write one such as {DURATION_EXAMPLES}"))
}

/// `--ttl`: a duration of at least [`MIN_TTL_MS`].
fn ttl(text: &str) -> Result<u64, String> {
    let ms = duration_ms(text)?;
    if ms < MIN_TTL_MS {
        return Err(format!("at least {MIN_TTL_MS}ms (renewals go out every third of it)"));
    }
    Ok(ms)
}

/// `--server`: taken as given, less trailing slashes (the client adds paths).
fn server_url(text: &str) -> Result<String, String> {
    Ok(text.trim_end_matches('/').to_string())
}
