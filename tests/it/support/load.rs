//! A load of keep-alive clients, each doing acquire → release cycles on its own lock, that
//! counts every failure by kind. A response with `Connection: close` is followed by a new
//! connection, as any correct client does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::http::{cycle, Client};

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
    /// New connections refused or failed.
    pub connect_failures: AtomicU64,
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
        all
    }
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
                std::thread::spawn(move || run_client(addr, &lock, &stop, &tally))
            })
            .collect();
        Load { stop, threads, tally }
    }

    /// Cycles completed so far.
    pub fn ok(&self) -> u64 {
        self.tally.ok.load(Ordering::Relaxed)
    }

    /// Waits until at least `more` further cycles have completed (proof the service serves).
    pub fn wait_progress(&self, more: u64) {
        let target = self.ok() + more;
        let deadline = std::time::Instant::now() + super::DEADLINE;
        while self.ok() < target {
            assert!(std::time::Instant::now() < deadline, "the load made no progress: {:?}", self.tally.failures());
            std::thread::yield_now();
        }
    }

    /// Stops the clients and returns the tally.
    pub fn stop(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.tally
    }
}

fn run_client(addr: SocketAddr, base: &str, stop: &AtomicBool, tally: &Tally) {
    let mut client: Option<Client> = None;
    // Responses received on the current connection.
    let mut served = 0u64;
    // After a failure the old lock may still be held: carry on with a new name.
    let mut round = 0;
    let mut lock = format!("{base}.{round}");
    while !stop.load(Ordering::Relaxed) {
        let c = match client.as_mut() {
            Some(c) => c,
            None => match Client::connect(addr) {
                Ok(c) => {
                    served = 0;
                    client.insert(c)
                }
                Err(_) => {
                    tally.connect_failures.fetch_add(1, Ordering::Relaxed);
                    // The server is stopping or restarting; try again.
                    std::thread::yield_now();
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
                    }
                    None if first.status == 200 => {
                        // Acquired on a closing connection: release on a new one.
                        let ticket = first.json()["ticket"].as_str().unwrap_or_default().to_string();
                        let released = Client::connect(addr)
                            .and_then(|mut fresh| {
                                fresh.post(&format!("/v1/locks/{lock}/release"), &format!(r#"{{"ticket":"{ticket}"}}"#))
                            })
                            .is_ok_and(|r| r.status == 200);
                        if released {
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
