//! The courier process: makes the outbox's deliveries. It announces its capacity on its
//! channel to the keeper, takes the calls the keeper hands it, makes them on a small pool of
//! threads with [`Deliverer`] (blocking HTTP with timeouts), and reports each result. It
//! holds no state worth keeping: the keeper journals every call and every result, and hands
//! out again whatever was in flight when a courier or its channel went away.
//!
//! One mio loop reads the master's control channel, the fd channel (a new keeper channel
//! after a keeper restart) and the keeper channel; the pool's results come back over an
//! mpsc channel with a mio waker.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use super::channel::Channel;
use super::child::{self, Boot};
use super::delivery::{with_own_addresses, Attempt, Deliverer};
use crate::core::outbox::Delivery;
use crate::ipc::message::{FdRecord, FromKeeper, ToChild, ToKeeper, ToMaster};
use crate::sys::clock::wall_ms;

const CONTROL: Token = Token(0);
const FDS: Token = Token(1);
const KEEPER: Token = Token(2);
const RESULTS: Token = Token(3);

/// Runs the courier; returns the process exit code.
pub fn run(master_pid: i32) -> i32 {
    let boot = match child::boot("lh-courier", master_pid, CONTROL) {
        Ok(boot) => boot,
        Err(e) => {
            eprintln!("{}lh-courier: {e}", super::logging::stderr_prefix(log::Level::Error));
            return 1;
        }
    };
    match Courier::new(boot).and_then(|mut c| c.serve()) {
        Ok(code) => code,
        Err(e) => {
            log::error!("courier failed: {e}");
            1
        }
    }
}

struct Courier {
    poll: Poll,
    control: Channel,
    fds: OwnedFd,
    keeper: Option<Channel>,
    capacity: u32,
    jobs: mpsc::Sender<Delivery>,
    results: mpsc::Receiver<(String, Attempt)>,
}

impl Courier {
    fn new(boot: Boot) -> io::Result<Self> {
        let Boot { mut control, fds, config, .. } = boot;
        let poll = Poll::new()?;
        control.register(poll.registry())?;
        poll.registry().register(&mut SourceFd(&fds.as_raw_fd()), FDS, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), RESULTS)?);
        let outbox = &config.outbox;
        let deliverer = Arc::new(Deliverer::new(
            with_own_addresses(outbox.targets.clone()),
            Duration::from_millis(outbox.connect_timeout_ms),
            Duration::from_millis(outbox.timeout_ms),
            Some(outbox.secret.as_str()).filter(|s| !s.is_empty()),
        ));
        let (jobs, queue) = mpsc::channel::<Delivery>();
        let queue = Arc::new(Mutex::new(queue));
        let (report, results) = mpsc::channel();
        for i in 0..outbox.concurrency {
            let (queue, report, waker, deliverer) =
                (Arc::clone(&queue), report.clone(), Arc::clone(&waker), Arc::clone(&deliverer));
            std::thread::Builder::new().name(format!("delivery-{i}")).spawn(move || loop {
                // One job at a time per thread; the lock is held only to take it.
                let job = match queue.lock() {
                    Ok(queue) => queue.recv(),
                    Err(_) => return,
                };
                let Ok(job) = job else { return };
                let attempt = deliverer.deliver(&job, wall_ms() / 1_000);
                if report.send((job.id, attempt)).is_err() {
                    return;
                }
                let _ = waker.wake();
            })?;
        }
        Ok(Self { poll, control, fds, keeper: None, capacity: outbox.concurrency, jobs, results })
    }

    fn serve(&mut self) -> io::Result<i32> {
        self.control.send(&ToMaster::Ready).map_err(io::Error::other)?;
        self.control.flush_blocking(Duration::from_secs(1));
        log::info!("courier ready ({} deliveries at once)", self.capacity);
        let mut events = Events::with_capacity(64);
        loop {
            if let Err(e) = self.poll.poll(&mut events, Some(Duration::from_secs(1))) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            for event in events.iter() {
                match event.token() {
                    CONTROL => {
                        let messages = match child::read_control(&mut self.control) {
                            Ok(messages) => messages,
                            Err(code) => return Ok(code),
                        };
                        for message in messages {
                            match message {
                                // Calls in flight are abandoned: the keeper hands them out
                                // again (each keeps its Idempotency-Key).
                                ToChild::Drain | ToChild::Stop => {
                                    log::info!("stopping");
                                    return Ok(0);
                                }
                                other => log::debug!("ignoring {other:?}"),
                            }
                        }
                    }
                    FDS => self.on_fd_records(),
                    KEEPER => self.on_keeper(),
                    _ => {}
                }
            }
            self.on_results();
            if let Some(keeper) = self.keeper.as_mut() {
                if keeper.flush().is_err() {
                    self.keeper_lost();
                }
            }
            let _ = self.control.flush();
        }
    }

    fn on_fd_records(&mut self) {
        for (meta, fd) in child::read_records(self.fds.as_fd()) {
            let FdRecord::Keeper { generation } = meta else {
                log::error!("unexpected fd record for the courier: {meta:?}");
                continue;
            };
            self.keeper_lost();
            let made = Channel::new(StdUnixStream::from(fd), KEEPER).and_then(|mut c| {
                c.register(self.poll.registry())?;
                Ok(c)
            });
            match made {
                Ok(mut channel) => {
                    if channel.send(&ToKeeper::CourierReady { capacity: self.capacity }).is_ok() {
                        log::debug!("connected to keeper generation {generation}");
                        self.keeper = Some(channel);
                    }
                }
                Err(e) => log::error!("keeper channel unusable: {e}"),
            }
        }
    }

    fn keeper_lost(&mut self) {
        if let Some(mut old) = self.keeper.take() {
            old.deregister(self.poll.registry());
            // Results still to come are for the old keeper; the new one hands those calls
            // out again.
            log::debug!("keeper channel closed");
        }
    }

    fn on_keeper(&mut self) {
        let Some(keeper) = self.keeper.as_mut() else { return };
        if keeper.fill().is_err() {
            self.keeper_lost();
            return;
        }
        loop {
            let Some(keeper) = self.keeper.as_mut() else { return };
            match keeper.recv::<FromKeeper>() {
                Ok(Some(FromKeeper::Deliver { deliveries })) => {
                    for delivery in deliveries {
                        let _ = self.jobs.send(delivery);
                    }
                }
                Ok(Some(FromKeeper::Hello { .. } | FromKeeper::Cluster { .. })) => {}
                Ok(Some(other)) => log::warn!("unexpected message from the keeper: {other:?}"),
                Ok(None) => return,
                Err(e) => {
                    // The master says why at WARN (a keeper that died); this is its echo.
                    log::info!("keeper channel: {e}");
                    self.keeper_lost();
                    return;
                }
            }
        }
    }

    fn on_results(&mut self) {
        while let Ok((id, attempt)) = self.results.try_recv() {
            let Some(keeper) = self.keeper.as_mut() else { continue };
            let report = ToKeeper::Delivered {
                id,
                outcome: attempt.outcome,
                retry_after_ms: attempt.retry_after_ms,
                error: attempt.error,
                took_ms: attempt.took.as_millis() as u64,
            };
            if keeper.send(&report).is_err() {
                self.keeper_lost();
            }
        }
    }
}
