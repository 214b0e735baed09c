//! The worker process: one mio loop serving HTTP/1.1 on its connections.
//!
//! Connections come from its own SO_REUSEPORT listeners (inherited from the master, which
//! keeps them open across respawns and reloads) or, in fd-passing mode, from the master over
//! the fd channel. Each connection's bytes go through the pure [`Conn`] state machine; each
//! request is routed, authorised, and either answered at once or sent to the keeper with a
//! request id (many in flight on one channel). Writes to the keeper and to clients are
//! batched: everything a loop turn produced leaves in one write per socket.
//!
//! The worker decides no status itself: [`admit`] refuses what the route table and the
//! access rules refuse, [`api`] plans and shapes the rest, and the few situations only the
//! worker sees (no keeper channel, a request too large for a frame, a keeper lost with
//! requests in flight) are named answers in [`crate::http::status`]. Without a keeper
//! channel (the keeper is restarting) lock routes answer `keeper_unavailable`, and the
//! worker asks the master for a new channel by itself.
//!
//! With `server.access_log`, every request the worker answers is one INFO line (target
//! `access`): method, target as [`loggable_target`] shows it, status, body bytes, µs from
//! the loop turn it arrived in to its answer, the client's address. What the connection
//! answers by itself (a malformed request, a timeout) is not a routed request and has none.

mod dashboard;
mod transport;

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::rc::Rc;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::channel::{Channel, ChannelError};
use super::child::{self, Boot};
use super::delivery::with_own_addresses;
use super::tls::ListenerTls;
use crate::config::{Config, MAX_REQUEST_LINE_BYTES};
use crate::core::names::{LockName, Ticket};
use crate::http::access::loggable_target;
use crate::http::admit::admit_as;
use crate::http::api::{self, ApiSettings, Finish, Plan};
use crate::http::auth::{self, Access, Credentials};
use crate::http::browser::{self, BrowserRules};
use crate::http::conn::{Conn, ConnConfig, Seq, Status};
use crate::http::parse::{Limits, Method, Request};
use crate::http::response::Response;
use crate::http::rooms::{self, Rooms};
use crate::http::status;
use crate::ipc::frame::FrameError;
use crate::ipc::message::{
    ClusterStatus, FdRecord, FromKeeper, LockOp, LockReply, TicketEvent, ToChild, ToKeeper, ToMaster,
};
use crate::metrics::{Histogram, RequestCount, RouteLatency, WorkerSnapshot};
use crate::sys::clock::Monotonic;
use crate::sys::signals::{Signal, SignalSource};
use transport::Transport;

const SIGNALS: Token = Token(0);
const CONTROL: Token = Token(1);
const FDS: Token = Token(2);
const KEEPER: Token = Token(3);
const LISTENER_BASE: usize = 16;
const CONN_BASE: usize = 1 << 16;
/// How often connection deadlines are checked while there are connections.
const TICK_MS: u64 = 100;
/// Least time between two rate-limited warnings.
const WARN_INTERVAL_MS: u64 = 10_000;
/// Bytes read from a client per `read` call.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Runs a worker; returns the process exit code.
pub fn run(slot: u32, master_pid: i32) -> i32 {
    let name = format!("lh-worker-{slot}");
    let boot = match child::boot(&name, master_pid, CONTROL) {
        Ok(boot) => boot,
        Err(e) => {
            eprintln!("{}{name}: {e}", super::logging::stderr_prefix(log::Level::Error));
            return 1;
        }
    };
    match Worker::new(slot, boot).and_then(|mut w| w.serve()) {
        Ok(code) => code,
        Err(e) => {
            log::error!("worker failed: {e}");
            1
        }
    }
}

/// Settings derived from the configuration.
struct Settings {
    conn: ConnConfig,
    access: Access,
    max_connections: usize,
    api: ApiSettings,
    /// An event stream idle this long gets a `: ping` comment (`http.event_ping_ms`).
    event_ping_ms: u64,
    /// One INFO line per answered request (`server.access_log`).
    access_log: bool,
    /// The waiting rooms (`[[rooms]]`).
    rooms: Rooms,
    /// Ticket tokens and CORS (`[browser]`).
    browser: BrowserRules,
    /// Dashboard streams this worker carries at once (`browser.max_dashboards`).
    max_dashboards: u64,
    /// The answer to `GET /ui`, made once.
    ui_page: Response,
    /// The TLS listeners' configuration (`[tls]`), when there are any.
    tls: Option<ListenerTls>,
    /// Listeners from this index on speak TLS (`server.listen` comes first).
    first_tls_listener: usize,
    /// The answer to plain HTTP on a TLS listener.
    plain_http_on_tls: Rc<[u8]>,
}

impl Settings {
    /// The settings; reads `[tls]`'s files (the master checked them, but they may have
    /// changed since: then this worker does not start, and the reload that started it fails).
    fn from_config(config: &Config) -> io::Result<Self> {
        let tls = match &config.tls.files {
            None => None,
            Some(files) => Some(ListenerTls::load(files, config.tls.client_auth).map_err(|problems| {
                let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
                io::Error::other(format!("[tls]: {}", list.join("; ")))
            })?),
        };
        Ok(Self {
            tls,
            first_tls_listener: config.server.listen.len(),
            plain_http_on_tls: status::plain_http_on_tls().into(),
            conn: ConnConfig {
                limits: Limits {
                    max_request_line_bytes: MAX_REQUEST_LINE_BYTES,
                    max_header_bytes: config.http.max_header_bytes as usize,
                    max_body_bytes: config.http.max_body_bytes as usize,
                },
                header_timeout_ms: config.http.header_timeout_ms,
                keepalive_timeout_ms: config.http.keepalive_timeout_ms,
                max_unsent_bytes: usize::try_from(config.http.max_unsent_bytes).unwrap_or(usize::MAX),
            },
            access: Access::new(config.auth.keys.clone(), config.auth.insecure_anonymous)
                .with_clients(config.tls.clients.clone()),
            max_connections: config.server.max_connections as usize,
            event_ping_ms: config.http.event_ping_ms,
            access_log: config.server.access_log,
            rooms: Rooms::new(config),
            browser: BrowserRules::new(&config.browser),
            max_dashboards: config.browser.max_dashboards,
            ui_page: browser::ui_page(!config.auth.keys.is_empty() || !config.auth.key_files.is_empty()),
            api: ApiSettings {
                compat_lease_ttl_ms: config.locks.compat_lease_ttl_ms,
                targets: with_own_addresses(config.outbox.targets.clone()),
            },
        })
    }
}

struct Client {
    stream: Transport,
    /// The subject CN of the client certificate of a TLS connection, once read (at its
    /// first request, after the handshake).
    certificate_cn: Option<Option<Rc<str>>>,
    /// Since when a connection that is done waits for TLS to send its last bytes.
    flushing_since_ms: Option<u64>,
    conn: Conn,
    /// Unique for the worker's life: tells a reused slot from the connection a reply was for.
    id: u64,
    /// The client's address (for the access log).
    peer: Option<SocketAddr>,
    peer_loopback: bool,
    /// Handed over by the master (its close is reported for least-connections).
    passed: bool,
    /// Reading stopped with bytes possibly left in the socket (pipeline full).
    read_pending: bool,
    shut_down: bool,
    /// Requests of this connection the keeper may answer late (cancelled if it closes).
    waits: Vec<u64>,
    /// The event stream this connection carries, if any.
    events: Option<EventStream>,
    /// A dashboard stream: the id of its next event.
    dashboard: Option<u64>,
}

/// An open event stream.
struct EventStream {
    lock: LockName,
    ticket: Ticket,
    next_id: u64,
    last_write_ms: u64,
}

/// What a keeper answer is for.
enum Purpose {
    /// An HTTP response, shaped by `finish`. `waits`: the lock of an acquire the keeper may
    /// answer late (a lease granted to a client that left is released).
    Answer { finish: Finish, waits: Option<LockName> },
    /// The first answer of an event stream.
    Stream { lock: LockName, ticket: Ticket, first_event_id: u64 },
    /// Nothing to answer (a clean-up the worker sent itself).
    Nothing,
    /// The keeper's overview for the dashboard streams.
    Overview,
}

/// A request in flight to the keeper.
struct Pending {
    slot: usize,
    client_id: u64,
    seq: Seq,
    label: &'static str,
    started_us: u64,
    purpose: Purpose,
    /// Where the request stands while it waits in a queue (the keeper says so when it
    /// starts waiting): its answer if the wait must end early.
    queued: Option<LockReply>,
}

/// How soon a client whose wait was ended early (a drain, its keeper or leader lost) is
/// told to ask again, in seconds.
const WAIT_AGAIN_AFTER_S: &str = "1";

/// What the access log says of a request once it is answered (kept only while
/// `server.access_log` is on).
struct AccessEntry {
    method: Method,
    /// The target as [`loggable_target`] shows it.
    target: String,
    peer: Option<SocketAddr>,
}

/// A `/metrics` request waiting for the master.
struct PendingMetrics {
    slot: usize,
    client_id: u64,
    seq: Seq,
    started_us: u64,
}

#[derive(Default)]
struct Stats {
    requests: Vec<(&'static str, u16, u64)>,
    latency: Vec<(&'static str, Histogram)>,
    connections_total: u64,
}

impl Stats {
    /// Counts a response; `latency_us` is `None` for a request that waited in a queue (its
    /// time is the client's `wait_ms`, not the server's latency: see `metrics`).
    fn record(&mut self, label: &'static str, status: u16, latency_us: Option<u64>) {
        match self.requests.iter_mut().find(|(l, s, _)| *s == status && *l == label) {
            Some(row) => row.2 += 1,
            None => self.requests.push((label, status, 1)),
        }
        let Some(latency_us) = latency_us else { return };
        match self.latency.iter_mut().find(|(l, _)| *l == label) {
            Some((_, h)) => h.observe(latency_us),
            None => {
                let mut h = Histogram::default();
                h.observe(latency_us);
                self.latency.push((label, h));
            }
        }
    }
}

struct Worker {
    slot: u32,
    poll: Poll,
    signals: SignalSource,
    control: Channel,
    fds: OwnedFd,
    listeners: Vec<TcpListener>,
    keeper: Option<Channel>,
    keeper_generation: u64,
    /// Cluster mode: where this node stands, as its keeper last said.
    cluster: Option<ClusterStatus>,
    clients: Vec<Option<Client>>,
    free: Vec<usize>,
    open: usize,
    next_client_id: u64,
    pending: HashMap<u64, Pending>,
    metrics_pending: HashMap<u64, PendingMetrics>,
    /// Connections streaming events, by the ticket they watch.
    streams: HashMap<(LockName, Ticket), Vec<(usize, u64)>>,
    next_request_id: u64,
    settings: Settings,
    clock: Monotonic,
    stats: Stats,
    closed_passed: u32,
    draining: bool,
    /// Clients with output to write at the end of the turn.
    dirty: Vec<usize>,
    read_buf: Vec<u8>,
    /// The whole answer to a connection over `max_connections`.
    overloaded: Vec<u8>,
    /// An accept failed (out of descriptors): try again on the next tick.
    accept_retry: bool,
    last_warning_ms: Option<u64>,
    /// The clock read once per loop turn (µs): timeouts and request start times use it.
    turn_us: u64,
    /// Requests the access log owes a line, by connection id and sequence number.
    access: HashMap<(u64, Seq), AccessEntry>,
    /// The origin whose CORS headers a request's answer carries, by connection id and
    /// sequence number.
    cors: HashMap<(u64, Seq), String>,
    /// The dashboard streams (`dashboard.rs`).
    dashboards: dashboard::Dashboards,
}

impl Worker {
    fn new(slot: u32, boot: Boot) -> io::Result<Self> {
        let Boot { mut control, fds, listeners, config, .. } = boot;
        let poll = Poll::new()?;
        let mut signals = SignalSource::new(&[Signal::SIGTERM])?;
        poll.registry().register(signals.source(), SIGNALS, Interest::READABLE)?;
        control.register(poll.registry())?;
        poll.registry().register(&mut SourceFd(&fds.as_raw_fd()), FDS, Interest::READABLE)?;
        let mut mio_listeners = Vec::new();
        for (i, fd) in listeners.into_iter().enumerate() {
            let std_listener = std::net::TcpListener::from(fd);
            std_listener.set_nonblocking(true)?;
            let mut l = TcpListener::from_std(std_listener);
            poll.registry().register(&mut l, Token(LISTENER_BASE + i), Interest::READABLE)?;
            mio_listeners.push(l);
        }
        Ok(Self {
            slot,
            poll,
            signals,
            control,
            fds,
            listeners: mio_listeners,
            keeper: None,
            keeper_generation: 0,
            cluster: None,
            clients: Vec::new(),
            free: Vec::new(),
            open: 0,
            next_client_id: 1,
            pending: HashMap::new(),
            metrics_pending: HashMap::new(),
            streams: HashMap::new(),
            next_request_id: 1,
            settings: Settings::from_config(&config)?,
            clock: Monotonic::new(),
            stats: Stats::default(),
            closed_passed: 0,
            draining: false,
            dirty: Vec::new(),
            read_buf: vec![0; READ_CHUNK_BYTES],
            overloaded: status::at_connection_limit(),
            accept_retry: false,
            last_warning_ms: None,
            turn_us: 0,
            access: HashMap::new(),
            cors: HashMap::new(),
            dashboards: dashboard::Dashboards::default(),
        })
    }

    fn serve(&mut self) -> io::Result<i32> {
        self.turn_us = self.clock.now_us();
        // The master queues our keeper channel before our start frame: take it now, so we
        // are ready with a keeper (no `keeper_unavailable` right after READY).
        self.on_fd_records();
        self.control.send(&ToMaster::Ready).map_err(io::Error::other)?;
        self.flush_control();
        log::debug!("worker {} ready ({} listeners)", self.slot, self.listeners.len());
        let mut events = Events::with_capacity(1024);
        let mut next_tick = self.clock.now_ms() + TICK_MS;
        loop {
            let now = self.clock.now_ms();
            let timeout = if !self.dirty.is_empty() {
                Some(Duration::ZERO)
            } else if self.open > 0 || self.accept_retry {
                Some(Duration::from_millis(next_tick.saturating_sub(now)))
            } else {
                None
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            self.turn_us = self.clock.now_us();
            for event in events.iter() {
                match event.token() {
                    SIGNALS => {
                        if self.signals.pending().contains(&Signal::SIGTERM) {
                            log::info!("SIGTERM");
                            self.start_drain();
                        }
                    }
                    CONTROL => {
                        if let Some(code) = self.on_control() {
                            return Ok(code);
                        }
                    }
                    FDS => self.on_fd_records(),
                    KEEPER => self.on_keeper(),
                    Token(t) if (LISTENER_BASE..CONN_BASE).contains(&t) => self.on_accept(t - LISTENER_BASE),
                    Token(t) => {
                        self.on_client_event(t - CONN_BASE, event.is_readable(), event.is_writable(), event.is_error())
                    }
                }
            }
            let now = self.turn_ms();
            if now >= next_tick {
                self.on_tick(now);
                next_tick = now + TICK_MS;
            }
            self.end_turn();
            if self.draining && self.open == 0 && self.pending.is_empty() {
                return Ok(self.exit_drained());
            }
        }
    }

    /// Writes everything this turn produced.
    fn turn_ms(&self) -> u64 {
        self.turn_us / 1000
    }

    fn end_turn(&mut self) {
        if let Some(k) = self.keeper.as_mut() {
            if let Err(e) = k.flush() {
                self.keeper_lost(&e);
            }
        }
        // Writing can read and answer more (a pipeline with room again): repeat a few times;
        // whatever is still dirty after that makes the next poll return at once.
        for _ in 0..8 {
            if self.dirty.is_empty() {
                break;
            }
            let mut dirty = std::mem::take(&mut self.dirty);
            dirty.sort_unstable();
            dirty.dedup();
            for &slot in &dirty {
                self.write_client(slot);
            }
            if self.keeper.as_ref().is_some_and(Channel::has_output) {
                if let Some(Err(e)) = self.keeper.as_mut().map(Channel::flush) {
                    self.keeper_lost(&e);
                }
            }
        }
        if self.closed_passed > 0 {
            let n = std::mem::take(&mut self.closed_passed);
            let _ = self.control.send(&ToMaster::Closed { connections: n });
        }
        self.flush_control();
    }

    fn flush_control(&mut self) {
        if let Err(e) = self.control.flush() {
            // The master is gone; the control read will see it and exit.
            log::debug!("control channel: {e}");
        }
    }

    fn exit_drained(&mut self) -> i32 {
        let _ = self.control.send(&ToMaster::WorkerMetrics { id: 0, snapshot: self.snapshot() });
        self.control.flush_blocking(Duration::from_secs(1));
        log::info!("worker {} drained", self.slot);
        0
    }

    /// Returns an exit code when the worker must stop now.
    fn on_control(&mut self) -> Option<i32> {
        let messages = match child::read_control(&mut self.control) {
            Ok(messages) => messages,
            Err(code) => return Some(code),
        };
        for message in messages {
            match message {
                ToChild::Drain => self.start_drain(),
                ToChild::Collect { id } => {
                    let snapshot = self.snapshot();
                    let _ = self.control.send(&ToMaster::WorkerMetrics { id, snapshot });
                }
                ToChild::MetricsText { id, text } if self.dashboards.is_metrics(id) => self.on_processes(&text),
                ToChild::MetricsText { id, text } => {
                    if let Some(p) = self.metrics_pending.remove(&id) {
                        let response = api::metrics_page(text);
                        self.finish(p.slot, p.client_id, p.seq, "metrics", p.started_us, &response);
                    }
                }
                other => log::warn!("ignoring an unexpected control message: {other:?}"),
            }
        }
        None
    }

    fn on_fd_records(&mut self) {
        for (meta, fd) in child::read_records(self.fds.as_fd()) {
            self.on_fd_record(meta, fd);
        }
    }

    fn on_fd_record(&mut self, meta: FdRecord, fd: OwnedFd) {
        match meta {
            FdRecord::Client | FdRecord::TlsClient => {
                let tls = matches!(meta, FdRecord::TlsClient);
                let std_stream = std::net::TcpStream::from(fd);
                if let Err(e) = std_stream.set_nonblocking(true) {
                    log::warn!("passed connection unusable: {e}");
                    self.closed_passed += 1;
                    return;
                }
                let peer = std_stream.peer_addr().ok();
                self.add_client(TcpStream::from_std(std_stream), peer, true, tls);
            }
            FdRecord::Keeper { generation } => {
                if let Some(mut old) = self.keeper.take() {
                    old.deregister(self.poll.registry());
                    self.fail_pending(&status::keeper_replaced_in_flight());
                }
                match Channel::new(StdUnixStream::from(fd), KEEPER).and_then(|mut c| {
                    c.register(self.poll.registry())?;
                    Ok(c)
                }) {
                    Ok(channel) => {
                        self.keeper = Some(channel);
                        self.keeper_generation = generation;
                        log::debug!("connected to keeper generation {generation}");
                    }
                    Err(e) => log::error!("keeper channel unusable: {e}"),
                }
            }
            FdRecord::Worker { .. } | FdRecord::Courier => log::error!("unexpected fd record for a worker: {meta:?}"),
        }
    }

    fn on_keeper(&mut self) {
        let Some(k) = self.keeper.as_mut() else { return };
        if let Err(e) = k.fill() {
            self.keeper_lost(&e);
            return;
        }
        loop {
            let Some(k) = self.keeper.as_mut() else { return };
            match k.recv::<FromKeeper>() {
                Ok(Some(FromKeeper::Hello { generation })) => self.keeper_generation = generation,
                Ok(Some(FromKeeper::Reply { id, reply })) => self.on_reply(id, &reply),
                Ok(Some(FromKeeper::Waiting { id, reply })) => self.on_waiting(id, reply),
                Ok(Some(FromKeeper::Event { lock, ticket, event })) => self.on_event(lock, ticket, &event),
                Ok(Some(FromKeeper::Deliver { .. })) => log::error!("the keeper sent deliveries to a worker"),
                Ok(Some(FromKeeper::Cluster { status })) => self.cluster = Some(status),
                Ok(None) => return,
                Err(e) => {
                    self.keeper_lost(&e);
                    return;
                }
            }
        }
    }

    /// The client of `slot` if it is still the one with `client_id`.
    fn client(&mut self, slot: usize, client_id: u64) -> Option<&mut Client> {
        self.clients.get_mut(slot).and_then(Option::as_mut).filter(|c| c.id == client_id)
    }

    /// Request `id` waits in a queue: where it stands is kept for an early answer, given at
    /// once if this worker is draining.
    fn on_waiting(&mut self, id: u64, reply: LockReply) {
        let Some(p) = self.pending.get_mut(&id) else { return };
        p.queued = Some(reply);
        if self.draining {
            self.end_wait_early(id);
        }
    }

    /// Ends the wait of request `id` now: its client gets where it stands (its ticket, so it
    /// keeps its place) with `Retry-After`, and the keeper stops the wait (the waiter stays
    /// queued under the presence rules).
    fn end_wait_early(&mut self, id: u64) {
        let Some(p) = self.pending.remove(&id) else { return };
        if let Some(c) = self.client(p.slot, p.client_id) {
            c.waits.retain(|&w| w != id);
        }
        if let Some(k) = self.keeper.as_mut() {
            let _ = k.send(&ToKeeper::Cancel { id });
        }
        self.answer_early(p);
    }

    /// Answers a waiting request with where it stood, if the keeper said; `false` (nothing
    /// done) otherwise.
    fn answer_early(&mut self, p: Pending) -> bool {
        let (Some(queued), Purpose::Answer { finish, .. }) = (&p.queued, &p.purpose) else { return false };
        if self.client(p.slot, p.client_id).is_none() {
            return true;
        }
        let response = self.shape_answer(finish, queued).with_header("Retry-After", WAIT_AGAIN_AFTER_S);
        self.finish_wait(&p, &response);
        true
    }

    fn on_reply(&mut self, id: u64, reply: &LockReply) {
        let Some(p) = self.pending.remove(&id) else { return };
        let alive = match self.client(p.slot, p.client_id) {
            Some(c) => {
                c.waits.retain(|&w| w != id);
                true
            }
            None => false,
        };
        // The link to the leader broke while the request waited: it is still queued there
        // (its wait was committed before the keeper said so), and its client keeps its place.
        if matches!(reply, LockReply::Unknown { .. }) && p.queued.is_some() {
            self.answer_early(p);
            return;
        }
        match p.purpose {
            Purpose::Nothing => {}
            Purpose::Overview => self.on_overview(reply),
            Purpose::Answer { ref finish, ref waits } => {
                if alive {
                    let response = self.shape_answer(finish, reply);
                    if p.queued.is_some() {
                        self.finish_wait(&p, &response);
                    } else {
                        self.finish(p.slot, p.client_id, p.seq, p.label, p.started_us, &response);
                    }
                } else if let Some(lock) = waits {
                    // Granted while its client was leaving: it was never told, so it gives
                    // the lease back rather than hold it for nobody.
                    let lease = match reply {
                        LockReply::Held { lease, .. } | LockReply::CompatData { lease: Some(lease), .. } => Some(lease),
                        _ => None,
                    };
                    if let Some(lease) = lease {
                        self.send_to_keeper(LockOp::Release { lock: lock.clone(), ticket: lease.ticket });
                    }
                }
            }
            Purpose::Stream { lock, ticket, first_event_id } => {
                let first = api::first_event(&lock, reply);
                if !alive {
                    if first.is_some() {
                        self.send_unwatch(lock, ticket);
                    }
                    return;
                }
                let Some((name, data)) = first else {
                    let response = shape(&Finish::TicketStatus(lock), reply);
                    self.finish(p.slot, p.client_id, p.seq, p.label, p.started_us, &response);
                    return;
                };
                let now = self.turn_ms();
                let event = api::sse_event(first_event_id, name, &data);
                let head = self.cors_head(p.client_id, p.seq, api::stream_head());
                self.record(p.label, head.status, p.started_us);
                self.log_access(p.client_id, p.seq, head.status, 0, p.started_us);
                let cfg = self.settings.conn;
                let Some(c) = self.client(p.slot, p.client_id) else { return };
                c.conn.respond_stream(p.seq, &head, now);
                c.conn.stream_push(&event, now, &cfg);
                let next_id = first_event_id.saturating_add(1);
                c.events = Some(EventStream { lock: lock.clone(), ticket, next_id, last_write_ms: now });
                self.streams.entry((lock, ticket)).or_default().push((p.slot, p.client_id));
                self.dirty.push(p.slot);
            }
        }
    }

    fn on_event(&mut self, lock: LockName, ticket: Ticket, event: &TicketEvent) {
        let key = (lock, ticket);
        let Some(watchers) = self.streams.get(&key).cloned() else { return };
        let (name, data, terminal) = api::stream_event(&key.0, event);
        let now = self.turn_ms();
        let cfg = self.settings.conn;
        for (slot, client_id) in watchers {
            let Some(c) = self.client(slot, client_id) else { continue };
            let Some(s) = c.events.as_mut() else { continue };
            let bytes = api::sse_event(s.next_id, name, &data);
            // Ids start at most at MAX_LAST_EVENT_ID + 1: no stream lives to see this saturate.
            s.next_id = s.next_id.saturating_add(1);
            s.last_write_ms = now;
            c.conn.stream_push(&bytes, now, &cfg);
            if terminal {
                c.conn.stream_end(now);
            }
            self.dirty.push(slot);
        }
        // Ended streams are unwatched when their connections close.
    }

    /// Sends an operation whose answer nobody waits for.
    fn send_to_keeper(&mut self, op: LockOp) {
        let Some(k) = self.keeper.as_mut() else { return };
        let id = self.next_request_id;
        self.next_request_id += 1;
        if k.send(&ToKeeper::Request { id, op }).is_ok() {
            let purpose = Purpose::Nothing;
            self.pending.insert(
                id,
                Pending { slot: usize::MAX, client_id: 0, seq: 0, label: "", started_us: 0, purpose, queued: None },
            );
        }
    }

    fn send_unwatch(&mut self, lock: LockName, ticket: Ticket) {
        if let Some(k) = self.keeper.as_mut() {
            let _ = k.send(&ToKeeper::Unwatch { lock, ticket });
        }
    }

    fn keeper_lost(&mut self, why: &ChannelError) {
        let Some(mut k) = self.keeper.take() else { return };
        k.deregister(self.poll.registry());
        self.cluster = None;
        // The master logs the keeper's death at WARN; each worker's echo of it is INFO.
        log::info!("keeper channel lost ({why}); refusing keeper requests until the master sends a new one");
        self.fail_pending(&status::keeper_lost_in_flight());
        let _ = self.control.send(&ToMaster::NeedKeeper { lost_generation: self.keeper_generation });
    }

    /// Answers every request in flight with `response` and ends every event stream (they
    /// were the lost keeper's; their clients reconnect with `Last-Event-ID`).
    fn fail_pending(&mut self, response: &Response) {
        for (_, p) in std::mem::take(&mut self.pending) {
            match p.purpose {
                Purpose::Nothing => continue,
                Purpose::Overview => {
                    self.dashboards.overview_failed();
                    continue;
                }
                Purpose::Answer { .. } | Purpose::Stream { .. } => {}
            }
            if p.queued.is_some() {
                // A waiting request: its client keeps its place (the new keeper's start
                // records end the old channel's waits; the waiter stays queued).
                if let Some(c) = self.client(p.slot, p.client_id) {
                    c.waits.clear();
                }
                self.answer_early(p);
                continue;
            }
            if let Some(c) = self.client(p.slot, p.client_id) {
                c.waits.clear();
            }
            self.finish(p.slot, p.client_id, p.seq, p.label, p.started_us, response);
        }
        let now = self.turn_ms();
        for (_, watchers) in std::mem::take(&mut self.streams) {
            for (slot, client_id) in watchers {
                if let Some(c) = self.client(slot, client_id) {
                    c.events = None;
                    c.conn.stream_end(now);
                    self.dirty.push(slot);
                }
            }
        }
    }

    fn start_drain(&mut self) {
        if self.draining {
            return;
        }
        self.draining = true;
        log::info!("draining: {} connections open, {} requests in flight", self.open, self.pending.len());
        for mut l in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let now = self.turn_ms();
        let cfg = self.settings.conn;
        for slot in 0..self.clients.len() {
            if let Some(c) = self.clients[slot].as_mut() {
                if c.events.is_some() || c.dashboard.is_some() {
                    // The stream ends: its client reconnects (to another worker or node)
                    // with Last-Event-ID after this long.
                    c.conn.stream_push(api::SSE_RETRY_HINT, now, &cfg);
                }
                c.conn.drain(now);
                self.dirty.push(slot);
            }
        }
        // Draining never waits on a long-poll: every wait ends now with its place (a wait
        // the keeper has not placed yet ends as soon as it does). After the connections
        // drain, so that these last answers close them.
        let waiting: Vec<u64> = self.pending.iter().filter(|(_, p)| p.queued.is_some()).map(|(&id, _)| id).collect();
        for id in waiting {
            self.end_wait_early(id);
        }
    }

    fn on_accept(&mut self, index: usize) {
        loop {
            let Some(listener) = self.listeners.get(index) else { return };
            match listener.accept() {
                Ok((stream, peer)) => {
                    let tls = index >= self.settings.first_tls_listener;
                    self.add_client(stream, Some(peer), false, tls);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                    // The master shut the listener down (the service is stopping).
                    log::debug!("listener {index} was shut down");
                    return;
                }
                Err(e) => {
                    // EMFILE and friends. The connection stays queued and no new edge will
                    // come for it, so the next tick tries again.
                    if !self.draining {
                        self.accept_retry = true;
                        self.warn_limited(&format!("accept failed: {e}; retrying"));
                    }
                    return;
                }
            }
        }
    }

    /// A new connection (`tls`: from a TLS listener, its session starts here).
    fn add_client(&mut self, mut stream: TcpStream, peer: Option<SocketAddr>, passed: bool, tls: bool) {
        self.stats.connections_total += 1;
        let session = match (tls, &self.settings.tls) {
            (false, _) => None,
            (true, Some(config)) => match config.accept() {
                Ok(session) => Some(session),
                Err(e) => {
                    log::warn!("cannot start a TLS session: {e}");
                    None
                }
            },
            (true, None) => {
                log::error!("a connection from a TLS listener, but no [tls] configuration");
                None
            }
        };
        if (tls && session.is_none()) || self.open >= self.settings.max_connections {
            // A TLS client cannot read a clear answer: it is closed instead.
            if !tls {
                let _ = stream.write(&self.overloaded);
            }
            let _ = stream.shutdown(Shutdown::Write);
            if passed {
                self.closed_passed += 1;
            }
            if self.open >= self.settings.max_connections {
                let max = self.settings.max_connections;
                self.warn_limited(&format!("at max_connections ({max}): refusing new connections as overloaded"));
            }
            return;
        }
        let _ = stream.set_nodelay(true);
        let slot = self.free.pop().unwrap_or_else(|| {
            self.clients.push(None);
            self.clients.len() - 1
        });
        if let Err(e) =
            self.poll.registry().register(&mut stream, Token(CONN_BASE + slot), Interest::READABLE | Interest::WRITABLE)
        {
            log::warn!("cannot watch a connection: {e}");
            self.free.push(slot);
            if passed {
                self.closed_passed += 1;
            }
            return;
        }
        let now = self.turn_ms();
        let mut conn = Conn::new(now);
        if self.draining {
            conn.drain(now);
        }
        let id = self.next_client_id;
        self.next_client_id += 1;
        let stream = match session {
            Some(session) => Transport::tls(stream, session, Rc::clone(&self.settings.plain_http_on_tls)),
            None => Transport::Plain(stream),
        };
        self.clients[slot] = Some(Client {
            stream,
            certificate_cn: None,
            flushing_since_ms: None,
            conn,
            id,
            peer,
            peer_loopback: peer.is_some_and(|p| p.ip().is_loopback()),
            passed,
            read_pending: true,
            shut_down: false,
            waits: Vec::new(),
            events: None,
            dashboard: None,
        });
        self.open += 1;
        self.read_client(slot);
    }

    fn on_client_event(&mut self, slot: usize, readable: bool, writable: bool, error: bool) {
        if error {
            // A reset (for one, the answer of a closed socket to a probe): the client is
            // gone, and so are its waits. Anything else pending on the socket is left to
            // the read or write that meets it.
            if let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) {
                if matches!(c.stream.socket().take_error(), Ok(Some(_))) {
                    c.conn.abort();
                    self.dirty.push(slot);
                    return;
                }
            }
        }
        if readable {
            if let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) {
                c.read_pending = true;
            }
            self.read_client(slot);
        }
        if writable {
            self.dirty.push(slot);
        }
    }

    fn read_client(&mut self, slot: usize) {
        let now = self.turn_ms();
        let mut requests = Vec::new();
        {
            let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else { return };
            while c.read_pending && c.conn.wants_read(&self.settings.conn) {
                match c.stream.read(&mut self.read_buf) {
                    Ok(0) => {
                        c.read_pending = false;
                        // No more requests; those received are still answered. A client
                        // that waits for a lock may have shut down only its sending side
                        // (it still reads) or closed its socket (it has left): a probe
                        // tells them apart, since a closed socket answers it with a reset,
                        // and a client that has left has its waits cancelled rather than
                        // answered to nobody.
                        c.conn.on_peer_eof(now);
                        if !c.waits.is_empty() {
                            c.conn.probe(now);
                        }
                    }
                    Ok(n) => {
                        c.conn.feed(&self.read_buf[..n], now, &self.settings.conn, &mut requests);
                        // A short read emptied the socket (the next arrival raises a new
                        // edge): skip the read that would only say WouldBlock. (Not with
                        // TLS, which reads a record at a time.)
                        if n < self.read_buf.len() && c.stream.short_read_drains() {
                            c.read_pending = false;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.read_pending = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        c.read_pending = false;
                        c.conn.abort();
                    }
                }
            }
        }
        self.dirty.push(slot);
        for (seq, request) in requests {
            self.dispatch(slot, seq, &request);
        }
    }

    fn write_client(&mut self, slot: usize) {
        let now = self.turn_ms();
        let status = {
            let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else { return };
            let mut broken = false;
            // What TLS still holds leaves first.
            let flushed = match c.stream.flush() {
                Ok(flushed) => flushed,
                Err(_) => {
                    broken = true;
                    false
                }
            };
            while flushed && !broken {
                let out = c.conn.output();
                if out.is_empty() {
                    break;
                }
                match c.stream.write(out) {
                    Ok(n) => c.conn.advance(n, now),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        broken = true;
                        break;
                    }
                }
            }
            let status = if broken { Status::Done } else { c.conn.status() };
            if status != Status::Open && !broken {
                // Done or lingering: TLS says so (close_notify), and its last bytes are
                // sent before the socket is shut down, for as long as a client that reads
                // takes (the stalled-reader timeout).
                c.stream.close_notify();
                match c.stream.flush() {
                    Ok(true) => {}
                    Ok(false) => {
                        let since = *c.flushing_since_ms.get_or_insert(now);
                        if now < since + self.settings.conn.keepalive_timeout_ms {
                            return;
                        }
                    }
                    Err(_) => {}
                }
            }
            status
        };
        match status {
            Status::Open => {
                // Answers sent may have made room: parse what is buffered first, then read
                // more if there is still room.
                let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else { return };
                let mut requests = Vec::new();
                c.conn.resume(now, &self.settings.conn, &mut requests);
                let read = c.read_pending && c.conn.wants_read(&self.settings.conn);
                for (seq, request) in requests {
                    self.dispatch(slot, seq, &request);
                }
                if read {
                    self.read_client(slot);
                }
            }
            Status::Linger => {
                let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else { return };
                if !c.shut_down {
                    c.shut_down = true;
                    c.stream.shutdown_write();
                }
                if c.read_pending {
                    self.read_client(slot);
                }
            }
            Status::Done => self.close_client(slot),
        }
    }

    fn close_client(&mut self, slot: usize) {
        let Some(mut c) = self.clients.get_mut(slot).and_then(Option::take) else { return };
        let _ = self.poll.registry().deregister(c.stream.socket());
        self.free.push(slot);
        self.open -= 1;
        if c.passed {
            self.closed_passed += 1;
        }
        if !self.access.is_empty() {
            // Requests it will never be answered: no access line.
            self.access.retain(|&(client_id, _), _| client_id != c.id);
        }
        if !self.cors.is_empty() {
            self.cors.retain(|&(client_id, _), _| client_id != c.id);
        }
        if c.dashboard.is_some() {
            self.dashboards.close(slot, c.id);
        }
        // Its waiting requests stop waiting (their waiters stay queued under the presence
        // rules; a grant already on its way is released when it arrives).
        if let Some(k) = self.keeper.as_mut() {
            for id in c.waits.drain(..) {
                let _ = k.send(&ToKeeper::Cancel { id });
            }
        }
        if let Some(s) = c.events.take() {
            let key = (s.lock, s.ticket);
            if let Some(watchers) = self.streams.get_mut(&key) {
                watchers.retain(|&(sl, id)| !(sl == slot && id == c.id));
                if watchers.is_empty() {
                    self.streams.remove(&key);
                }
            }
            self.send_unwatch(key.0, key.1);
        }
    }

    /// Logs a warning at most once per [`WARN_INTERVAL_MS`] (a flood of refused connections
    /// must not flood the log too).
    fn warn_limited(&mut self, message: &str) {
        let now = self.turn_ms();
        if self.last_warning_ms.is_none_or(|t| now >= t + WARN_INTERVAL_MS) {
            self.last_warning_ms = Some(now);
            log::warn!("{message}");
        }
    }

    fn on_tick(&mut self, now: u64) {
        if std::mem::take(&mut self.accept_retry) {
            for i in 0..self.listeners.len() {
                self.on_accept(i);
            }
        }
        if self.dashboards.due(now) {
            self.ask_snapshot(now);
        }
        let ping_ms = self.settings.event_ping_ms;
        for slot in 0..self.clients.len() {
            let Some(c) = self.clients[slot].as_mut() else { continue };
            if let Some(s) = c.events.as_mut().filter(|s| now >= s.last_write_ms + ping_ms) {
                s.last_write_ms = now;
                c.conn.stream_push(api::SSE_PING, now, &self.settings.conn);
                self.dirty.push(slot);
            }
        }
        for slot in 0..self.clients.len() {
            let Some(c) = self.clients[slot].as_mut() else { continue };
            if c.flushing_since_ms.is_some_and(|since| now >= since + self.settings.conn.keepalive_timeout_ms) {
                // TLS's last bytes never left: the write closes it now.
                self.dirty.push(slot);
                continue;
            }
            if c.conn.deadline(&self.settings.conn).is_some_and(|d| d <= now) {
                c.conn.on_timer(now, &self.settings.conn);
                self.dirty.push(slot);
            }
        }
    }

    /// Counts a response in the metrics.
    fn record(&mut self, label: &'static str, status: u16, started_us: u64) {
        let now_us = self.clock.now_us();
        self.stats.record(label, status, Some(now_us.saturating_sub(started_us)));
    }

    /// Records a response in the metrics and hands it to its connection.
    fn finish(&mut self, slot: usize, client_id: u64, seq: Seq, label: &'static str, started_us: u64, r: &Response) {
        self.record(label, r.status, started_us);
        self.respond(slot, client_id, seq, started_us, r);
    }

    /// [`Worker::finish`] for a request that waited in a queue: counted, but not in the
    /// latency histogram.
    fn finish_wait(&mut self, p: &Pending, r: &Response) {
        self.stats.record(p.label, r.status, None);
        self.respond(p.slot, p.client_id, p.seq, p.started_us, r);
    }

    /// Hands a response to its connection (and writes its access line, if one is owed).
    fn respond(&mut self, slot: usize, client_id: u64, seq: Seq, started_us: u64, r: &Response) {
        let now = self.turn_ms();
        let cors = if self.cors.is_empty() { None } else { self.cors.remove(&(client_id, seq)) };
        let Some(c) = self.client(slot, client_id) else { return };
        match cors {
            Some(origin) => c.conn.respond(seq, &browser::with_cors(r.clone(), &origin), now),
            None => c.conn.respond(seq, r, now),
        }
        self.dirty.push(slot);
        self.log_access(client_id, seq, r.status, r.body.len(), started_us);
    }

    /// Writes the access line of request `seq` of connection `client_id`, if one is owed:
    /// method, target (secrets masked), status, body bytes (none for `HEAD`), time from the
    /// turn it arrived in to its answer, and the client's address.
    fn log_access(&mut self, client_id: u64, seq: Seq, status: u16, body_bytes: usize, started_us: u64) {
        let Some(entry) = self.access.remove(&(client_id, seq)) else { return };
        let bytes = if entry.method == Method::Head { 0 } else { body_bytes as u64 };
        let duration_us = self.clock.now_us().saturating_sub(started_us);
        let peer = entry.peer.map_or_else(|| "-".to_string(), |p| p.to_string());
        log::info!(
            target: "access",
            method = entry.method.as_str(),
            path = entry.target.as_str(),
            status = status,
            bytes = bytes,
            duration_us = duration_us,
            peer = peer.as_str();
            "request"
        );
    }

    fn dispatch(&mut self, slot: usize, seq: Seq, request: &Request) {
        let started_us = self.turn_us;
        let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else { return };
        if c.certificate_cn.is_none() {
            // Read once, after the handshake: what the CA verified stays for the connection.
            c.certificate_cn = Some(c.stream.peer_certificate().and_then(auth::subject_cn).map(Rc::from));
        }
        let certificate_cn = c.certificate_cn.clone().flatten();
        let (client_id, peer_loopback) = (c.id, c.peer_loopback);
        if self.settings.access_log {
            let entry = AccessEntry { method: request.method, target: loggable_target(&request.target), peer: c.peer };
            self.access.insert((client_id, seq), entry);
        }
        let rules = &self.settings.browser;
        if request.method == Method::Options {
            if let Some(response) = rules.preflight(&request.target, request.origin.as_deref()) {
                self.finish(slot, client_id, seq, browser::LABEL_PREFLIGHT, started_us, &response);
                return;
            }
        }
        if let Some(origin) = rules.cors_origin(request.origin.as_deref()) {
            self.cors.insert((client_id, seq), origin.to_string());
        }
        let (access, rules) = (&self.settings.access, &self.settings.browser);
        let admitted =
            rules.admit_token(request.method, &request.target, request.api_key.as_deref()).unwrap_or_else(|| {
                let credentials = Credentials {
                    api_key: request.api_key.as_deref(),
                    certificate_cn: certificate_cn.as_deref(),
                    peer_loopback,
                };
                admit_as(request.method, &request.target, credentials, access)
            });
        let admitted = match admitted {
            Ok(admitted) => admitted,
            Err(refused) => {
                self.finish(slot, client_id, seq, refused.label, started_us, &refused.response);
                return;
            }
        };
        let def = admitted.def;
        let planned = if def.id.is_room() {
            // Sessions are timed on the keeper's clock, the wall clock.
            let now_ms = crate::sys::clock::wall_ms();
            rooms::plan(def, &admitted.params, admitted.query, request, &self.settings.rooms, admitted.grant, now_ms)
        } else {
            api::plan(def, &admitted.params, admitted.query, request, &self.settings.api, admitted.grant)
        };
        let (op, purpose, waits) = match planned {
            Plan::Now(response) => {
                self.finish(slot, client_id, seq, def.label, started_us, &response);
                return;
            }
            Plan::Ready => {
                let response = api::readiness(self.draining, self.keeper.is_some(), self.cluster.as_ref());
                self.finish(slot, client_id, seq, def.label, started_us, &response);
                return;
            }
            Plan::UiPage => {
                let response = self.settings.ui_page.clone();
                self.finish(slot, client_id, seq, def.label, started_us, &response);
                return;
            }
            Plan::UiEvents => {
                self.open_dashboard(slot, client_id, seq, def.label, started_us);
                return;
            }
            Plan::Metrics => {
                let id = self.next_request_id;
                self.next_request_id += 1;
                self.metrics_pending.insert(id, PendingMetrics { slot, client_id, seq, started_us });
                let _ = self.control.send(&ToMaster::MetricsRequest { id });
                return;
            }
            Plan::Ask { op, finish, waits } => {
                let wait_lock = match &op {
                    LockOp::Acquire { lock, .. } if waits => Some(lock.clone()),
                    _ => None,
                };
                (op, Purpose::Answer { finish, waits: wait_lock }, waits)
            }
            Plan::Stream { lock, ticket, first_event_id } => {
                (LockOp::Watch { lock: lock.clone(), ticket }, Purpose::Stream { lock, ticket, first_event_id }, false)
            }
        };
        let Some(k) = self.keeper.as_mut() else {
            let response = status::keeper_restarting();
            self.finish(slot, client_id, seq, def.label, started_us, &response);
            return;
        };
        let id = self.next_request_id;
        self.next_request_id += 1;
        match k.send(&ToKeeper::Request { id, op }) {
            Ok(()) => {}
            Err(ChannelError::Frame(FrameError::TooLarge { .. })) => {
                // Nothing was queued: the channel stays good for every other request.
                let response = status::too_large_for_keeper();
                self.finish(slot, client_id, seq, def.label, started_us, &response);
                return;
            }
            Err(e) => {
                self.keeper_lost(&e);
                let response = status::keeper_unreachable();
                self.finish(slot, client_id, seq, def.label, started_us, &response);
                return;
            }
        }
        if waits {
            if let Some(c) = self.client(slot, client_id) {
                c.waits.push(id);
            }
        }
        self.pending.insert(id, Pending { slot, client_id, seq, label: def.label, started_us, purpose, queued: None });
    }

    /// Shapes the keeper's reply to a request; an acquire's answer carries its ticket's
    /// token when tokens are on (`browser.secret`).
    fn shape_answer(&self, finish: &Finish, reply: &LockReply) -> Response {
        let response = shape(finish, reply);
        match finish {
            Finish::Acquire(lock) => self.settings.browser.with_ticket_token(lock, response),
            _ => response,
        }
    }

    /// The head of a stream that answers request `seq` of connection `client_id`, with
    /// the CORS headers its origin gets.
    fn cors_head(&mut self, client_id: u64, seq: Seq, head: Response) -> Response {
        match self.cors.remove(&(client_id, seq)) {
            Some(origin) => browser::with_cors(head, &origin),
            None => head,
        }
    }

    fn snapshot(&self) -> WorkerSnapshot {
        let mut requests: Vec<RequestCount> = self
            .stats
            .requests
            .iter()
            .map(|&(route, status, count)| RequestCount { route: route.to_string(), status, count })
            .collect();
        requests.sort_by(|a, b| (&a.route, a.status).cmp(&(&b.route, b.status)));
        let mut latency: Vec<RouteLatency> = self
            .stats
            .latency
            .iter()
            .map(|(route, h)| RouteLatency { route: route.to_string(), histogram: h.clone() })
            .collect();
        latency.sort_by(|a, b| a.route.cmp(&b.route));
        let unsent_bytes = self.clients.iter().flatten().map(|c| c.conn.unsent_bytes() as u64).sum();
        WorkerSnapshot {
            slot: self.slot,
            open_connections: self.open as u64,
            connections_total: self.stats.connections_total,
            requests,
            latency,
            unsent_bytes,
            max_unsent_bytes: self.settings.conn.max_unsent_bytes as u64,
            process: super::own_figures(),
        }
    }
}

/// Shapes the keeper's reply to a request. A reply of a kind its route never gets is a bug
/// on one side of the channel: it is logged, and answered as [`api::Unexpected`] says.
fn shape(finish: &Finish, reply: &LockReply) -> Response {
    api::finish(finish, reply).unwrap_or_else(|bug| {
        log::error!("{bug}");
        bug.response()
    })
}
