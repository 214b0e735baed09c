//! The keeper's sync thread (`fsync = "always"`): runs one `fdatasync` at a time on a
//! copy of the journal's descriptor while the keeper's loop goes on with the next turns,
//! and wakes the loop when it ends. What may be answered after it is decided by
//! [`super::held`]; this file only carries syncs out (docs/architecture.md, "Durability").

use std::fs::File;
use std::io;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Registry, Token, Waker};

/// The token the sync thread wakes the keeper's loop with.
pub(super) const SYNCED: Token = Token(6);

/// How one sync ended: the last turn it covers, and its time or its error.
pub(super) type Ended = (u64, io::Result<Duration>);

/// The thread, and the two ways to talk to it.
pub(super) struct Syncer {
    requests: Option<Sender<(u64, File)>>,
    ended: Receiver<Ended>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the thread; it wakes `registry`'s poll with [`SYNCED`].
    pub(super) fn start(registry: &Registry) -> io::Result<Syncer> {
        let waker = Arc::new(Waker::new(registry, SYNCED)?);
        let (requests, jobs) = mpsc::channel::<(u64, File)>();
        let (done, ended) = mpsc::channel::<Ended>();
        let thread = std::thread::Builder::new().name("lh-keeper-sync".into()).spawn(move || {
            for (covers, file) in jobs {
                let started = Instant::now();
                let result = file.sync_data().map(|()| started.elapsed());
                if done.send((covers, result)).is_err() {
                    return;
                }
                // A keeper that is gone no longer polls: nothing to wake.
                let _ = waker.wake();
            }
        })?;
        Ok(Syncer { requests: Some(requests), ended, thread: Some(thread) })
    }

    /// Syncs `file` (a copy of the journal's descriptor); the result says `covers`.
    pub(super) fn begin(&self, covers: u64, file: File) -> io::Result<()> {
        let requests = self.requests.as_ref().ok_or_else(|| io::Error::other("the sync thread stopped"))?;
        requests.send((covers, file)).map_err(|_| io::Error::other("the sync thread is gone"))
    }

    /// The syncs that have ended since the last call.
    pub(super) fn ended(&self) -> Vec<Ended> {
        self.ended.try_iter().collect()
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        // The thread ends once its queue is closed and its sync in flight has ended.
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
