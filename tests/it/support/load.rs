//! A load of keep-alive clients, each doing acquire → release cycles on its own lock, that
//! counts every failure by kind and keeps every answer other than 200 whole (status,
//! headers, body), for a test that allows some answers (a 503 with `Retry-After`) and checks
//! their form. A response with `Connection: close` is followed by a new connection, and an
//! acquire or release answered otherwise than 200 by a new lock name (the old one may still
//! be held: a 503 leaves the effect unknown), as any correct client does.
//!
//! Nothing is lost: a release sent on a fresh connection (after an acquire answered with
//! `Connection: close`) counts like any other request, and a client thread that panics
//! fails the test that waits on the load or stops it, with the panic's message.

use std::net::SocketAddr;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::http::{cycle, Client, Reply};

/// What the clients saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Cycles completed with 200 + 200.
    pub ok: AtomicU64,
    /// A request was sent on a connection a worker had already served, and no whole
    /// response came back.
    pub broken_requests: Mutex<Vec<String>>,
    /// The first request on a new connection got no response (the connection was never
    /// taken by a worker).
    pub unserved_connections: Mutex<Vec<String>>,
    /// Answers other than 200.
    pub bad_statuses: Mutex<Vec<String>>,
    /// The same answers, whole.
    pub not_ok: Mutex<Vec<Reply>>,
    /// New connections refused or failed.
    pub connect_failures: AtomicU64,
    /// Client threads that panicked, with their messages.
    pub panics: Mutex<Vec<String>>,
}

impl Tally {
    /// Every failure, for assertion messages.
    pub fn failures(&self) -> Vec<String> {
        let mut all = self.broken_requests.lock().unwrap().clone();
        all.extend(self.unserved_connections.lock().unwrap().iter().cloned());
        all.extend(self.bad_statuses.lock().unwrap().iter().cloned());
        let refused = self.connect_failures.load(Ordering::Relaxed);
        if refused > 0 {
            all.push(format!("{refused} connection attempts failed"));
        }
        all.extend(self.panics.lock().unwrap().iter().map(|p| format!("a client panicked: {p}")));
        all
    }

    /// Panics (failing the test) if a client thread panicked.
    fn check_clients(&self) {
        let panics = self.panics.lock().unwrap().clone();
        assert!(panics.is_empty(), "a load client panicked: {panics:?}");
    }
}

/// The message of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(a panic without a message)".to_string())
}

/// Running clients.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// What they saw so far.
    pub tally: Arc<Tally>,
}

impl Load {
    /// Starts `clients` client threads against `addr`.
    pub fn start(addr: SocketAddr, clients: usize, prefix: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let threads = (0..clients)
            .map(|i| {
                let (stop, tally) = (Arc::clone(&stop), Arc::clone(&tally));
                let lock = format!("{prefix}-{i}");
                std::thread::spawn(move || {
                    let run = catch_unwind(AssertUnwindSafe(|| run_client(addr, &lock, &stop, &tally)));
                    if let Err(payload) = run {
                        // Recorded for `wait_progress`, then passed on to `join`.
                        tally.panics.lock().unwrap().push(format!("{lock}: {}", panic_message(payload.as_ref())));
                        resume_unwind(payload);
                    }
                })
            })
            .collect();
        Load { stop, threads, tally }
    }

    /// Cycles completed so far.
    pub fn ok(&self) -> u64 {
        self.tally.ok.load(Ordering::Relaxed)
    }

    /// Waits until at least `more` further cycles have completed (proof the service serves).
    /// Fails at once if a client panicked.
    pub fn wait_progress(&self, more: u64) {
        let target = self.ok() + more;
        let deadline = Instant::now() + super::DEADLINE;
        let mut pause = Duration::from_millis(1);
        while self.ok() < target {
            self.tally.check_clients();
            assert!(Instant::now() < deadline, "the load made no progress: {:?}", self.tally.failures());
            std::thread::sleep(pause);
            pause = (pause * 2).min(MAX_PAUSE);
        }
        self.tally.check_clients();
    }

    /// Stops the clients and returns the tally; fails the test, with the message, if a
    /// client thread panicked.
    pub fn stop(mut self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        let panics: Vec<String> = std::mem::take(&mut self.threads)
            .into_iter()
            .filter_map(|t| t.join().err())
            .map(|payload| panic_message(payload.as_ref()))
            .collect();
        assert!(panics.is_empty(), "a load client panicked: {panics:?}");
        Arc::clone(&self.tally)
    }
}

impl Drop for Load {
    /// A test that fails before `stop` still ends its clients; one that never calls `stop`
    /// still fails if a client panicked.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Every thread is joined (no short circuit).
        let panicked = self.threads.drain(..).map(JoinHandle::join).filter(Result::is_err).count() > 0;
        if panicked && !std::thread::panicking() {
            self.tally.check_clients();
        }
    }
}

/// The longest pause between two looks at the load's progress, or between two connection
/// attempts while the server is not accepting: short against every deadline.
const MAX_PAUSE: Duration = Duration::from_millis(20);

fn run_client(addr: SocketAddr, base: &str, stop: &AtomicBool, tally: &Tally) {
    let mut client: Option<Client> = None;
    // Responses received on the current connection.
    let mut served = 0u64;
    // After a failure the old lock may still be held: carry on with a new name.
    let mut round = 0;
    let mut lock = format!("{base}.{round}");
    let mut retry_pause = Duration::from_millis(1);
    while !stop.load(Ordering::Relaxed) {
        let c = match client.as_mut() {
            Some(c) => c,
            None => match Client::connect(addr) {
                Ok(c) => {
                    served = 0;
                    retry_pause = Duration::from_millis(1);
                    client.insert(c)
                }
                Err(_) => {
                    tally.connect_failures.fetch_add(1, Ordering::Relaxed);
                    // The server is stopping or restarting; try again shortly.
                    std::thread::sleep(retry_pause);
                    retry_pause = (retry_pause * 2).min(MAX_PAUSE);
                    continue;
                }
            },
        };
        match cycle(c, &lock) {
            Ok((first, second)) => {
                served += 1;
                let mut close = first.closes();
                if first.status != 200 {
                    tally.bad_statuses.lock().unwrap().push(format!(
                        "acquire {}: {}",
                        first.status,
                        String::from_utf8_lossy(&first.body)
                    ));
                    tally.not_ok.lock().unwrap().push(first.clone());
                    round += 1;
                    lock = format!("{base}.{round}");
                }
                match second {
                    Some(r) if r.status == 200 => {
                        close |= r.closes();
                        if first.status == 200 {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(r) => {
                        close |= r.closes();
                        tally.bad_statuses.lock().unwrap().push(format!(
                            "release {}: {}",
                            r.status,
                            String::from_utf8_lossy(&r.body)
                        ));
                        tally.not_ok.lock().unwrap().push(r);
                        round += 1;
                        lock = format!("{base}.{round}");
                    }
                    None if first.status == 200 => {
                        // Acquired on a closing connection: release on a new one, and count
                        // its failure like any other.
                        let ticket = first.json()["ticket"].as_str().unwrap_or_default().to_string();
                        if release_on_a_fresh_connection(addr, &lock, &ticket, tally) {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            round += 1;
                            lock = format!("{base}.{round}");
                        }
                    }
                    None => {}
                }
                if close {
                    client = None;
                }
            }
            Err(e) => {
                let kind = if served > 0 { &tally.broken_requests } else { &tally.unserved_connections };
                kind.lock().unwrap().push(format!("{lock}: {e}"));
                client = None;
                round += 1;
                lock = format!("{base}.{round}");
            }
        }
    }
}

/// Releases `ticket` on a new connection; counts a failure by its kind and returns whether
/// the release succeeded.
fn release_on_a_fresh_connection(addr: SocketAddr, lock: &str, ticket: &str, tally: &Tally) -> bool {
    let mut fresh = match Client::connect(addr) {
        Ok(c) => c,
        Err(_) => {
            tally.connect_failures.fetch_add(1, Ordering::Relaxed);
            return false;
        }
    };
    match fresh.post(&format!("/v1/locks/{lock}/release"), &format!(r#"{{"ticket":"{ticket}"}}"#)) {
        Ok(r) if r.status == 200 => true,
        Ok(r) => {
            let body = String::from_utf8_lossy(&r.body);
            tally.bad_statuses.lock().unwrap().push(format!("release on a fresh connection {}: {body}", r.status));
            tally.not_ok.lock().unwrap().push(r);
            false
        }
        Err(e) => {
            tally.unserved_connections.lock().unwrap().push(format!("{lock}: release on a fresh connection: {e}"));
            false
        }
    }
}
