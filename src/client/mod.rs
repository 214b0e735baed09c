//! The command-line client, a shell over the HTTP API:
//!
//! - `leasehold lock NAME [options] -- CMD ARGS…` waits for a lease in the lock's fair queue
//!   (up to `--wait`), runs CMD with `LEASEHOLD_FENCE`, `LEASEHOLD_TICKET` and
//!   `LEASEHOLD_LOCK` in its environment, renews the lease every third of its TTL, passes
//!   the signals it gets on to CMD, releases the lease when CMD ends, and stops CMD (SIGTERM,
//!   then SIGKILL after `--grace`) if the lease is lost. Its exit status is CMD's own, 75
//!   (or `--conflict-exit-code`) when the lock could not be had in time, 69 when the server
//!   cannot be reached; `--quiet` says nothing about a lock it could not have.
//! - `leasehold status [NAME] [--json]` and `leasehold release NAME TICKET`.
//! - `leasehold status --cluster [--json]` asks every server of the list for its
//!   `GET /readyz` at once and shows one row per server (`cluster.rs`); exit status 0 when
//!   one node leads and every node that answered names it, 69 otherwise.
//!
//! Every command speaks to `--server` (`http://` or `https://`, trusting `--cacert`'s CAs too)
//! through one `http::Http`, whose kept connection carries all of its calls: a `lock`
//! acquires, renews and releases over one connection.
//!
//! `lock` runs three helper threads (the renewer, one waiting for CMD, one receiving
//! signals), each reporting to the main thread over one channel; the main thread alone
//! acts on CMD.

pub mod args;
pub mod cluster;
pub mod http;

use std::process::{Command, ExitStatus};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;

use self::args::{LockArgs, ReleaseArgs, StatusArgs, Target, DEFAULT_TTL_MS, MIN_TTL_MS};
use self::http::{segment, ClientError, Http, Response};

/// The lock could not be had in time (sysexits `EX_TEMPFAIL`), unless `--conflict-exit-code`
/// says otherwise.
pub const EXIT_NOT_ACQUIRED: u8 = args::DEFAULT_CONFLICT_EXIT_CODE;
/// The server cannot be reached (sysexits `EX_UNAVAILABLE`); for `status --cluster`, the
/// cluster has no one leader that every node that answered names.
pub const EXIT_UNREACHABLE: u8 = 69;
/// Anything else that went wrong (a refusal by the server, say).
pub const EXIT_FAILURE: u8 = 1;
/// A bad command line or server URL.
pub const EXIT_USAGE: u8 = 2;
/// Signals passed on to CMD.
const FORWARDED: [i32; 6] = [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2];
/// Time allowed for quick calls (renew, release, status).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Time each node has to answer `status --cluster` (they are asked at once).
const READYZ_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest pause before trying an unavailable server again.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

fn fail(code: u8, message: impl std::fmt::Display) -> u8 {
    eprintln!("leasehold: {message}");
    code
}

fn client_failure(e: &ClientError) -> u8 {
    match e {
        ClientError::BadUrl(_) | ClientError::CaFile { .. } => fail(EXIT_USAGE, e),
        _ => fail(EXIT_UNREACHABLE, e),
    }
}

/// The client for a command's `target` (`--cacert`, or `LEASEHOLD_CACERT` through the
/// command line's parser), connecting within `connect_timeout`. On failure, the exit code
/// (the reason is printed).
fn connect(target: &Target, connect_timeout: Duration) -> Result<Http, u8> {
    Http::new(target, connect_timeout).map_err(|e| client_failure(&e))
}

/// A lease held by this process.
struct Held {
    ticket: String,
    fence: u64,
    /// When the lease ends by this process's clock unless renewed (the call's start + TTL).
    valid_until: Instant,
    /// Its TTL: `--ttl`, or the one the server gave (the lock's declared default, else the
    /// server's), renewed with it.
    ttl_ms: u64,
}

/// What the helper threads report.
enum Event {
    Exited(ExitStatus),
    Signal(i32),
    Lost(String),
}

/// `leasehold lock`: returns the exit code.
pub fn lock(args: LockArgs) -> u8 {
    // A renewal has two thirds of the TTL before the lease runs out: connecting may not take
    // them all (without `--ttl`, the server's default TTL is likely).
    let http = match connect(&args.target, Duration::from_millis(args.ttl_ms.unwrap_or(DEFAULT_TTL_MS) / 3)) {
        Ok(http) => http,
        Err(code) => return code,
    };
    let held = match acquire(&http, &args) {
        Ok(held) => held,
        Err(code) => return code,
    };
    let mut command = Command::new(&args.command[0]);
    command
        .args(&args.command[1..])
        .env("LEASEHOLD_FENCE", held.fence.to_string())
        .env("LEASEHOLD_TICKET", &held.ticket)
        .env("LEASEHOLD_LOCK", &args.name);
    let (events, inbox) = mpsc::channel();
    // Before the command starts, so no signal meant for it is missed.
    let mut signals = match Signals::new(FORWARDED) {
        Ok(signals) => signals,
        Err(e) => {
            release(&http, &args.name, &held.ticket);
            return fail(EXIT_FAILURE, format!("cannot catch signals: {e}"));
        }
    };
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            release(&http, &args.name, &held.ticket);
            let code = if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
            return fail(code, format!("cannot run {}: {e}", args.command[0]));
        }
    };
    let pid = Pid::from_raw(child.id() as i32);
    let signal_handle = signals.handle();
    let to_main = events.clone();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if to_main.send(Event::Signal(signal)).is_err() {
                break;
            }
        }
    });
    let to_main = events.clone();
    std::thread::spawn(move || {
        if let Ok(status) = child.wait() {
            let _ = to_main.send(Event::Exited(status));
        }
    });
    let (stop_renewing, stop) = mpsc::channel::<()>();
    let renewer = {
        let (http, name, ticket, ttl_ms) = (http.clone(), args.name.clone(), held.ticket.clone(), held.ttl_ms);
        std::thread::spawn(move || renew(&http, &name, &ticket, ttl_ms, held.valid_until, &stop, &events))
    };
    let mut lost = false;
    let mut kill_at: Option<Instant> = None;
    let status = loop {
        let event = match kill_at {
            None => inbox.recv().ok(),
            Some(at) => match inbox.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(event) => Some(event),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = kill(pid, Signal::SIGKILL);
                    kill_at = None;
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => None,
            },
        };
        match event {
            Some(Event::Exited(status)) => break Some(status),
            Some(Event::Signal(signal)) => {
                if let Ok(signal) = Signal::try_from(signal) {
                    let _ = kill(pid, signal);
                }
            }
            Some(Event::Lost(why)) => {
                eprintln!("leasehold: the lease on {} is lost ({why}); stopping the command", args.name);
                lost = true;
                let _ = kill(pid, Signal::SIGTERM);
                kill_at = Some(Instant::now() + Duration::from_millis(args.grace_ms));
            }
            None => break None,
        }
    };
    drop(stop_renewing);
    let _ = renewer.join();
    signal_handle.close();
    if !lost {
        release(&http, &args.name, &held.ticket);
    }
    match status {
        Some(status) => exit_code(status),
        None => fail(EXIT_FAILURE, "lost track of the command"),
    }
}

/// A command's exit status as this process's: its code, or 128 + the signal that ended it.
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.wrapping_add(signal as u8),
        (None, None) => EXIT_FAILURE,
    }
}

/// Waits in the queue until granted or `--wait` runs out.
fn acquire(http: &Http, args: &LockArgs) -> Result<Held, u8> {
    let deadline = Instant::now() + Duration::from_millis(args.wait_ms);
    let path = format!("/v1/locks/{}/acquire", segment(&args.name));
    let mut ticket: Option<String> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut body = serde_json::json!({ "wait_ms": left.as_millis() as u64 });
        if let Some(ttl_ms) = args.ttl_ms {
            body["ttl_ms"] = ttl_ms.into();
        }
        // The queue kind and the permit count are left to the server unless given (FIFO
        // and 1, or what a `[[locks.declare]]` entry says), so a declared lock takes a
        // plain `leasehold lock` as it is.
        if args.wait_ms == 0 {
            body["queue"] = "none".into();
        }
        // A read/write lock has no permit count: its callers send a mode instead.
        if args.shared {
            body["mode"] = "shared".into();
        } else if args.exclusive {
            body["mode"] = "exclusive".into();
        } else {
            if let Some(limit) = args.limit {
                body["limit"] = limit.into();
            }
            if args.weight != 1 {
                body["weight"] = args.weight.into();
            }
        }
        if let Some(owner) = &args.owner {
            body["owner"] = owner.as_str().into();
        }
        if let Some(ticket) = &ticket {
            body["ticket"] = ticket.as_str().into();
        }
        let sent = Instant::now();
        let answer = http.call("POST", &path, Some(&body.to_string()), left + CALL_TIMEOUT);
        let out_of_time = Instant::now() >= deadline;
        match answer {
            Ok(r) if r.status == 200 => {
                let body = r.json();
                // The TTL granted: the server's clock on both ends of it.
                let granted_ms =
                    body["expires_at_ms"].as_u64().zip(body["at_ms"].as_u64()).map(|(e, a)| e.saturating_sub(a));
                return match (body["ticket"].as_str(), body["fence"].as_u64(), args.ttl_ms.or(granted_ms)) {
                    (Some(ticket), Some(fence), Some(ttl_ms)) if ttl_ms >= MIN_TTL_MS => Ok(Held {
                        ticket: ticket.to_string(),
                        fence,
                        valid_until: sent + Duration::from_millis(ttl_ms),
                        ttl_ms,
                    }),
                    (Some(ticket), Some(_), Some(ttl_ms)) => {
                        release(http, &args.name, ticket);
                        Err(fail(
                            EXIT_FAILURE,
                            format!("the lease's TTL of {ttl_ms}ms is too short to renew in time; give --ttl (at least {MIN_TTL_MS}ms)"),
                        ))
                    }
                    _ => {
                        Err(fail(EXIT_FAILURE, format!("unexpected answer from {}: {}", http.server(), r.error_text())))
                    }
                };
            }
            Ok(r) if r.status == 202 => {
                ticket = r.json()["ticket"].as_str().map(str::to_string).or(ticket);
                if out_of_time {
                    if let Some(ticket) = &ticket {
                        leave(http, &args.name, ticket);
                    }
                    return Err(not_acquired(args));
                }
            }
            Ok(r) if r.status == 409 && r.json()["error"] == "unavailable" => return Err(not_acquired(args)),
            Ok(r) if r.status == 503 || r.status == 429 => {
                if out_of_time {
                    return Err(fail(
                        EXIT_UNREACHABLE,
                        format!("{} is unavailable: {}", http.server(), r.error_text()),
                    ));
                }
                std::thread::sleep(RETRY_PAUSE.min(left)); // the server asked to come back later
            }
            Ok(r) => return Err(fail(EXIT_FAILURE, format!("{} refused the lock: {}", http.server(), r.error_text()))),
            Err(ClientError::BadUrl(reason)) => return Err(fail(EXIT_USAGE, reason)),
            Err(e) => {
                if out_of_time {
                    return Err(client_failure(&e));
                }
                std::thread::sleep(RETRY_PAUSE.min(left)); // the server may be restarting
            }
        }
    }
}

/// Someone else holds the lock past `--wait`: `--conflict-exit-code` (75 by default), and a
/// line on stderr unless `--quiet` (a cron job that skips a run then mails nothing).
fn not_acquired(args: &LockArgs) -> u8 {
    if args.quiet {
        return args.conflict_exit_code;
    }
    let waited = if args.wait_ms == 0 { String::new() } else { format!(" within {} ms", args.wait_ms) };
    fail(args.conflict_exit_code, format!("the lock {} could not be had{waited}", args.name))
}

/// Renews every third of the TTL until told to stop (the sender is dropped); reports a lease
/// the server no longer knows, or one that could not be renewed before it ran out.
fn renew(
    http: &Http,
    name: &str,
    ticket: &str,
    ttl_ms: u64,
    mut valid_until: Instant,
    stop: &mpsc::Receiver<()>,
    events: &mpsc::Sender<Event>,
) {
    let interval = Duration::from_millis(ttl_ms / 3);
    let path = format!("/v1/locks/{}/renew", segment(name));
    let body = serde_json::json!({ "ticket": ticket, "ttl_ms": ttl_ms }).to_string();
    let mut pause = interval;
    loop {
        match stop.recv_timeout(pause) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let sent = Instant::now();
        let left = valid_until.saturating_duration_since(sent);
        let lost = match http.call("POST", &path, Some(&body), left.max(Duration::from_millis(100))) {
            Ok(r) if r.status == 200 => {
                valid_until = sent + Duration::from_millis(ttl_ms);
                pause = interval;
                continue;
            }
            Ok(r) if r.status == 410 || r.status == 404 => Some(format!("the server says {}", r.error_text())),
            Ok(r) if Instant::now() >= valid_until => Some(format!("not renewed in time: {}", r.error_text())),
            Err(e) if Instant::now() >= valid_until => Some(format!("not renewed in time: {e}")),
            _ => None,
        };
        if let Some(why) = lost {
            let _ = events.send(Event::Lost(why));
            return;
        }
        // Try again soon, while the lease lasts.
        pause = (interval / 4).max(Duration::from_millis(50));
    }
}

fn release(http: &Http, name: &str, ticket: &str) {
    let path = format!("/v1/locks/{}/release", segment(name));
    let body = serde_json::json!({ "ticket": ticket }).to_string();
    match http.call("POST", &path, Some(&body), CALL_TIMEOUT) {
        Ok(r) if r.status == 200 => {}
        Ok(r) => eprintln!("leasehold: could not release {name}: {}", r.error_text()),
        Err(e) => eprintln!("leasehold: could not release {name} (it ends with its TTL): {e}"),
    }
}

fn leave(http: &Http, name: &str, ticket: &str) {
    let path = format!("/v1/locks/{}/tickets/{}", segment(name), segment(ticket));
    let _ = http.call("DELETE", &path, None, CALL_TIMEOUT);
}

/// `leasehold release NAME TICKET`.
pub fn release_command(args: ReleaseArgs) -> u8 {
    let http = match connect(&args.target, CALL_TIMEOUT) {
        Ok(http) => http,
        Err(code) => return code,
    };
    let path = format!("/v1/locks/{}/release", segment(&args.name));
    let body = serde_json::json!({ "ticket": args.ticket }).to_string();
    match http.call("POST", &path, Some(&body), CALL_TIMEOUT) {
        Ok(r) if r.status == 200 => {
            println!("released {}", args.name);
            0
        }
        Ok(r) => fail(EXIT_FAILURE, format!("cannot release {}: {}", args.name, r.error_text())),
        Err(e) => client_failure(&e),
    }
}

/// `leasehold status [NAME] [--json]` and `leasehold status --cluster [--json]`.
pub fn status(args: StatusArgs) -> u8 {
    let http = match connect(&args.target, CALL_TIMEOUT) {
        Ok(http) => http,
        Err(code) => return code,
    };
    if args.cluster {
        return cluster_status(&http, args.json);
    }
    let locks = match &args.name {
        Some(name) => match http.call("GET", &format!("/v1/locks/{}", segment(name)), None, CALL_TIMEOUT) {
            Ok(r) if r.status == 200 => vec![r.json()],
            Ok(r) if r.status == 404 => Vec::new(),
            Ok(r) => return refused(&http, &r),
            Err(e) => return client_failure(&e),
        },
        None => {
            let mut all = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let mut path = "/v1/locks?limit=1000".to_string();
                if let Some(after) = &after {
                    path.push_str(&format!("&after={}", segment(after)));
                }
                let page = match http.call("GET", &path, None, CALL_TIMEOUT) {
                    Ok(r) if r.status == 200 => r.json(),
                    Ok(r) => return refused(&http, &r),
                    Err(e) => return client_failure(&e),
                };
                all.extend(page["locks"].as_array().cloned().unwrap_or_default());
                match page["next_after"].as_str() {
                    Some(next) => after = Some(next.to_string()),
                    None => break,
                }
            }
            all
        }
    };
    if args.json {
        let out = match &args.name {
            Some(name) => locks.into_iter().next().unwrap_or_else(|| serde_json::json!({ "name": name, "free": true })),
            None => serde_json::json!({ "locks": locks }),
        };
        println!("{out}");
    } else {
        print!("{}", table(&locks, args.name.as_deref()));
    }
    0
}

/// `leasehold status --cluster`: every listed server's `/readyz`, one row each, in the
/// list's order; a server that cannot be asked is a row, not a failure.
fn cluster_status(http: &Http, json: bool) -> u8 {
    let answers: Vec<(String, cluster::Readyz)> = http
        .ask_each("GET", "/readyz", READYZ_TIMEOUT)
        .into_iter()
        .map(|(server, answer)| (server, cluster::readyz(&answer)))
        .collect();
    let rows: Vec<cluster::NodeRow> = answers.iter().map(|(server, answer)| cluster::row(server, answer)).collect();
    if json {
        println!("{}", cluster::json(&rows));
    } else {
        print!("{}", cluster::table(&rows));
    }
    let verdict = cluster::verdict(&answers);
    if verdict.is_led() {
        0
    } else {
        fail(EXIT_UNREACHABLE, verdict)
    }
}

fn refused(http: &Http, r: &Response) -> u8 {
    fail(EXIT_FAILURE, format!("{} refused: {}", http.server(), r.error_text()))
}

/// The human view of `status`: one row per lock, holders as `owner (fence N, S s left)`; a
/// read/write lock shows `rw` for its count and each holder's mode, and a lock declared in
/// the server's configuration says so after its name, with its admission rate if it has one
/// (`room (declared 60/min)`).
fn table(locks: &[serde_json::Value], name: Option<&str>) -> String {
    if locks.is_empty() {
        return match name {
            Some(name) => format!("{name}: free (nobody holds it or waits for it)\n"),
            None => "no locks are held or waited for\n".to_string(),
        };
    }
    let mut rows = vec![["LOCK", "USED/LIMIT", "QUEUE", "WAITING", "HOLDERS"].map(str::to_string)];
    for lock in locks {
        let holders: Vec<String> = lock["holders"]
            .as_array()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        let who = h["owner"].as_str().unwrap_or("-");
                        let left_s = h["expires_in_ms"].as_u64().unwrap_or(0).div_ceil(1000);
                        let mode = h["mode"].as_str().map(|m| format!("{m}, ")).unwrap_or_default();
                        format!("{who} ({mode}fence {}, {left_s} s left)", h["fence"])
                    })
                    .collect()
            })
            .unwrap_or_default();
        let name = lock["name"].as_str().unwrap_or("?");
        rows.push([
            match lock.get("declared") {
                Some(d) => match d["admit_per_minute"].as_u64() {
                    Some(rate) => format!("{name} (declared {rate}/min)"),
                    None => format!("{name} (declared)"),
                },
                None => name.to_string(),
            },
            if lock["kind"] == "rw" {
                format!("{} rw", lock["used"])
            } else {
                format!("{}/{}", lock["used"], lock["limit"])
            },
            lock["queue"].as_str().unwrap_or("?").to_string(),
            lock["queue_length"].to_string(),
            holders.join(", "),
        ]);
    }
    aligned(&rows)
}

/// The tables of `status`: one line per row, every column but the last padded to its widest
/// cell, two spaces apart (the last is left as it is: it may be long).
fn aligned<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N - 1).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        for (c, width) in widths.iter().enumerate() {
            out.push_str(&format!("{:<width$}  ", row[c]));
        }
        out.push_str(&row[N - 1]);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_table_lines_up_and_says_when_nothing_is_there() {
        let locks = vec![
            serde_json::json!({"name":"nightly","limit":1,"used":1,"queue":"fifo","queue_length":2,
                "holders":[{"owner":"host-a","fence":7,"expires_in_ms":29001}]}),
            serde_json::json!({"name":"pool","limit":3,"used":0,"queue":"lottery","queue_length":0,"holders":[]}),
            serde_json::json!({"name":"config","kind":"rw","limit":0,"used":2,"queue":"fifo","queue_length":1,
                "holders":[{"owner":"r1","fence":8,"expires_in_ms":1000,"mode":"shared"},
                           {"owner":"r2","fence":9,"expires_in_ms":1000,"mode":"shared"}]}),
            serde_json::json!({"name":"room","limit":500,"used":3,"queue":"fifo","queue_length":40,"holders":[],
                "declared":{"name":"room","limit":500,"queue":"fifo","admit_per_minute":60,"admit_burst":1}}),
            serde_json::json!({"name":"pool-2","limit":3,"used":0,"queue":"lottery","queue_length":0,"holders":[],
                "declared":{"prefix":"pool-","limit":3,"queue":"lottery","admit_burst":1}}),
        ];
        let text = table(&locks, None);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6);
        assert!(
            lines[3].starts_with(
                "config                  2 rw        fifo     1        r1 (shared, fence 8, 1 s left), r2 (shared"
            ),
            "{text}"
        );
        assert!(lines[0].starts_with("LOCK                    USED/LIMIT  QUEUE    WAITING  HOLDERS"), "{text}");
        assert!(
            lines[1].starts_with("nightly                 1/1         fifo     2        host-a (fence 7, 30 s left)"),
            "{text}"
        );
        assert!(lines[2].starts_with("pool                    0/3         lottery  0"), "{text}");
        assert!(lines[4].starts_with("room (declared 60/min)  3/500       fifo     40"), "{text}");
        assert!(lines[5].starts_with("pool-2 (declared)       0/3         lottery  0"), "{text}");
        assert_eq!(table(&[], Some("x")), "x: free (nobody holds it or waits for it)\n");
        assert_eq!(table(&[], None), "no locks are held or waited for\n");
    }

    #[test]
    fn exit_codes_follow_the_command() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
    }
}
