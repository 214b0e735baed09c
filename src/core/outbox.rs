//! The outbox: accepted HTTP calls waiting for delivery, handed to the
//! courier, or failed for good (the dead-letter list). Pure: time, ids and random draws are
//! arguments, so a journal replay rebuilds the same outbox.
//!
//! - **Bounded, never lossy.** Past `max_entries` calls (every state counts), `max_callbacks`
//!   lock callbacks (their own budget, so lock-role clients cannot fill the room write-role
//!   calls need) or `max_total_bytes` of calls (URL, method, headers and body), a new one is
//!   refused; nothing is dropped or overwritten to make room. One call's headers and body
//!   together are bounded by `max_body_bytes`.
//! - **Tenancy.** Every entry keeps the name prefix it belongs to (the key's prefix for a
//!   call, the lock's name for a callback); reads, retries and deletes name a scope and see
//!   only entries under it, so another tenant's entry is as good as absent.
//! - **At least once.** A call is handed out when due and stays in flight until its result
//!   comes back; if the courier goes away, everything in flight is due again at once. A
//!   retried delivery is the same entry with the same id (its `Idempotency-Key`).
//! - **Retries** follow [`Backoff`] and [`judge`]: the entry is due again after the drawn
//!   delay, or moves to the dead-letter list with its last error once no attempt is left.
//!   `retry` gives a failed entry a fresh set of attempts; `delete` removes any entry that
//!   is not in flight.
//! - Ids are 26 Crockford base32 characters of a 48-bit millisecond time and 80 random
//!   bits, so they sort by creation time: pages come in the order calls were accepted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::backoff::{judge, Backoff, Outcome, Verdict};
use super::names::time_ordered_id;

/// The outbox's bounds and retry settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxLimits {
    /// Most entries held, in every state together.
    pub max_entries: u32,
    /// Largest body of one call.
    pub max_body_bytes: u32,
    /// Most attempts a call may ask for.
    pub max_attempts: u32,
    /// The retry schedule.
    pub backoff: Backoff,
    /// Most lock callbacks held, in every state together (apart from `max_entries`).
    #[serde(default = "default_max_callbacks")]
    pub max_callbacks: u32,
    /// Most bytes of calls held (URL, method, headers and body of each).
    #[serde(default = "default_max_total_bytes")]
    pub max_total_bytes: u64,
}

fn default_max_callbacks() -> u32 {
    OutboxLimits::DEFAULT.max_callbacks
}

fn default_max_total_bytes() -> u64 {
    OutboxLimits::DEFAULT.max_total_bytes
}

/// An HTTP call to make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Call {
    /// Method.
    pub method: String,
    /// Target URL (checked against the target policy before it gets here).
    pub url: String,
    /// Extra headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// Body.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
}

/// Bytes a header line takes besides its name and value (`: ` and CRLF).
const HEADER_OVERHEAD_BYTES: usize = 4;

impl Call {
    /// Bytes of the headers and the body: what `max_body_bytes` bounds.
    pub fn payload_bytes(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(n, v)| n.len() + v.len() + HEADER_OVERHEAD_BYTES).sum();
        headers + self.body.len()
    }

    /// Bytes the call holds: what `max_total_bytes` bounds.
    pub fn size_bytes(&self) -> usize {
        self.method.len() + self.url.len() + self.payload_bytes()
    }

    /// The call as a reader without the write role sees it: method and URL without its
    /// query; no headers, no body (they may carry credentials, or a lease's ticket).
    pub fn redacted(&self) -> Call {
        Call {
            method: self.method.clone(),
            url: self.url.split('?').next().unwrap_or_default().to_string(),
            headers: Vec::new(),
            body: String::new(),
        }
    }
}

/// Who an entry belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    /// The name prefix it belongs to: the creating key's prefix, or a callback's lock name.
    pub scope: String,
    /// A lock callback (counted against `max_callbacks`, not `max_entries`).
    pub callback: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Where an entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum EntryState {
    /// Waiting until `due_ms`.
    Pending {
        /// When it is handed out.
        due_ms: u64,
    },
    /// With the courier since `since_ms`.
    InFlight {
        /// When it was handed out.
        since_ms: u64,
    },
    /// Given up at `at_ms`: in the dead-letter list.
    Failed {
        /// When.
        at_ms: u64,
    },
}

/// One accepted call. (Not `deny_unknown_fields`: serde cannot combine it with the
/// flattened state.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its id (also the `Idempotency-Key`).
    pub id: String,
    /// The call.
    pub call: Call,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Attempts made.
    pub attempts: u32,
    /// State.
    #[serde(flatten)]
    pub state: EntryState,
    /// When it was accepted.
    pub created_ms: u64,
    /// What the last attempt ended with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The name prefix it belongs to ("": the whole server's).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// A lock callback.
    #[serde(default, skip_serializing_if = "is_false")]
    pub callback: bool,
}

impl Entry {
    /// Whether a caller limited to `scope` may see it.
    pub fn visible_to(&self, scope: &str) -> bool {
        self.scope.starts_with(scope)
    }
}

/// Why the outbox refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxError {
    /// At `max_entries`.
    Full {
        /// The bound.
        max_entries: u32,
    },
    /// At `max_callbacks`.
    CallbacksFull {
        /// The bound.
        max_callbacks: u32,
    },
    /// At `max_total_bytes`.
    BytesFull {
        /// The bound.
        max_total_bytes: u64,
    },
    /// Headers and body over `max_body_bytes`.
    BodyTooLarge {
        /// The bound.
        max_body_bytes: u32,
    },
    /// `max_attempts` out of range.
    Attempts {
        /// The bound.
        max: u32,
    },
    /// No entry with that id.
    Unknown,
    /// The entry is not in a state that allows this (e.g. retrying one still pending).
    WrongState {
        /// What it is.
        state: &'static str,
    },
}

impl fmt::Display for OutboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full { max_entries } => write!(f, "the outbox holds its maximum of {max_entries} calls"),
            Self::CallbacksFull { max_callbacks } => {
                write!(f, "the outbox holds its maximum of {max_callbacks} lock callbacks")
            }
            Self::BytesFull { max_total_bytes } => write!(f, "the outbox holds its maximum of {max_total_bytes} bytes"),
            Self::BodyTooLarge { max_body_bytes } => {
                write!(f, "the headers and body together are over {max_body_bytes} bytes")
            }
            Self::Attempts { max } => write!(f, "max_attempts must be 1 to {max}"),
            Self::Unknown => f.write_str("no outbox entry has that id"),
            Self::WrongState { state } => write!(f, "the entry is {state}"),
        }
    }
}

impl std::error::Error for OutboxError {}

/// Which entries a page lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// Waiting or in flight.
    Pending,
    /// The dead-letter list.
    Failed,
}

/// Counts for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxStats {
    /// Waiting for their time.
    pub pending: u64,
    /// With the courier.
    pub in_flight: u64,
    /// In the dead-letter list.
    pub failed: u64,
}

/// A call handed to the courier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    /// The entry's id.
    pub id: String,
    /// The call.
    pub call: Call,
    /// Which attempt this is (1 is the first).
    pub attempt: u32,
}

/// What the outbox holds, against its budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxUse {
    /// Calls (not callbacks).
    pub calls: u64,
    /// Lock callbacks.
    pub callbacks: u64,
    /// Bytes of every entry's call.
    pub bytes: u64,
}

/// Every accepted call.
#[derive(Debug, Clone)]
pub struct Outbox {
    limits: OutboxLimits,
    entries: BTreeMap<String, Entry>,
    /// Pending entries by due time.
    due: BTreeSet<(u64, String)>,
    /// Entries in flight.
    in_flight: usize,
    /// Held against the budgets.
    used: OutboxUse,
}

/// Attempts of a call that does not say (the configuration's default).
pub const DEFAULT_ATTEMPTS: u32 = 10;

impl OutboxLimits {
    /// The defaults the configuration documents.
    pub const DEFAULT: OutboxLimits = OutboxLimits {
        max_entries: 100_000,
        max_body_bytes: 65_536,
        max_attempts: 25,
        backoff: Backoff { base_ms: 1_000, factor: 2, cap_ms: 300_000 },
        max_callbacks: 100_000,
        max_total_bytes: 256 * 1024 * 1024,
    };
}

impl Outbox {
    /// An empty outbox.
    pub fn new(limits: OutboxLimits) -> Self {
        Self { limits, entries: BTreeMap::new(), due: BTreeSet::new(), in_flight: 0, used: OutboxUse::default() }
    }

    /// What is held against the budgets.
    pub fn used(&self) -> OutboxUse {
        self.used
    }

    /// Adds `entry` to what is held against the budgets, or (`add` false) takes it off.
    fn count(&mut self, entry: &Entry, add: bool) {
        let bytes = entry.call.size_bytes() as u64;
        let n = if entry.callback { &mut self.used.callbacks } else { &mut self.used.calls };
        if add {
            *n += 1;
            self.used.bytes += bytes;
        } else {
            *n -= 1;
            self.used.bytes -= bytes;
        }
    }

    fn remove(&mut self, id: &str) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        self.count(&entry, false);
        Some(entry)
    }

    /// The bounds in force.
    pub fn limits(&self) -> OutboxLimits {
        self.limits
    }

    /// New bounds (on reload); entries already held stay.
    pub fn set_limits(&mut self, limits: OutboxLimits) {
        self.limits = limits;
    }

    /// Entries with the courier.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Accepts a call from `origin`, due at `not_before_ms` or now; returns its id.
    pub fn enqueue(
        &mut self,
        call: Call,
        max_attempts: u32,
        not_before_ms: Option<u64>,
        origin: Origin,
        now_ms: u64,
        random: [u8; 16],
    ) -> Result<String, OutboxError> {
        let limits = self.limits;
        if origin.callback {
            if self.used.callbacks >= u64::from(limits.max_callbacks) {
                return Err(OutboxError::CallbacksFull { max_callbacks: limits.max_callbacks });
            }
        } else if self.used.calls >= u64::from(limits.max_entries) {
            return Err(OutboxError::Full { max_entries: limits.max_entries });
        }
        if call.payload_bytes() > limits.max_body_bytes as usize {
            return Err(OutboxError::BodyTooLarge { max_body_bytes: limits.max_body_bytes });
        }
        if self.used.bytes + call.size_bytes() as u64 > limits.max_total_bytes {
            return Err(OutboxError::BytesFull { max_total_bytes: limits.max_total_bytes });
        }
        if max_attempts == 0 || max_attempts > limits.max_attempts {
            return Err(OutboxError::Attempts { max: limits.max_attempts });
        }
        let id = time_ordered_id(now_ms, random);
        let due_ms = not_before_ms.unwrap_or(now_ms).max(now_ms);
        self.due.insert((due_ms, id.clone()));
        let entry = Entry {
            id: id.clone(),
            call,
            max_attempts,
            attempts: 0,
            state: EntryState::Pending { due_ms },
            created_ms: now_ms,
            last_error: None,
            scope: origin.scope,
            callback: origin.callback,
        };
        self.count(&entry, true);
        self.entries.insert(id.clone(), entry);
        Ok(id)
    }

    /// When the next pending entry is due.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.due.first().map(|(at, _)| *at)
    }

    /// Hands out up to `max` entries due at `now_ms`, earliest first.
    pub fn take_due(&mut self, now_ms: u64, max: usize) -> Vec<Delivery> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some((due_ms, _)) = self.due.first() else { break };
            if *due_ms > now_ms {
                break;
            }
            let (_, id) = self.due.pop_first().expect("checked above");
            let entry = self.entries.get_mut(&id).expect("a due entry exists");
            entry.attempts += 1;
            entry.state = EntryState::InFlight { since_ms: now_ms };
            self.in_flight += 1;
            out.push(Delivery { id, call: entry.call.clone(), attempt: entry.attempts });
        }
        out
    }

    /// Records how an attempt ended: done (the entry goes), due again after a backoff
    /// drawn with `random`, or failed into the dead-letter list. `None` for an entry that is
    /// not in flight (a late or repeated report).
    pub fn report(
        &mut self,
        id: &str,
        outcome: Outcome,
        retry_after_ms: Option<u64>,
        error: Option<String>,
        now_ms: u64,
        random: u64,
    ) -> Option<Verdict> {
        let entry = self.entries.get_mut(id).filter(|e| matches!(e.state, EntryState::InFlight { .. }))?;
        self.in_flight -= 1;
        let verdict = judge(outcome, entry.attempts, entry.max_attempts);
        match verdict {
            Verdict::Done => {
                self.remove(id);
            }
            Verdict::Retry => {
                let delay = self.limits.backoff.delay_ms(entry.attempts, random, retry_after_ms);
                let due_ms = now_ms.saturating_add(delay);
                entry.state = EntryState::Pending { due_ms };
                entry.last_error = error;
                self.due.insert((due_ms, id.to_string()));
            }
            Verdict::Fail => {
                entry.state = EntryState::Failed { at_ms: now_ms };
                entry.last_error = error;
            }
        }
        Some(verdict)
    }

    /// The courier went away: everything in flight is due again now (delivered at least once).
    pub fn requeue_in_flight(&mut self, now_ms: u64) {
        for entry in self.entries.values_mut() {
            if let EntryState::InFlight { .. } = entry.state {
                entry.state = EntryState::Pending { due_ms: now_ms };
                self.due.insert((now_ms, entry.id.clone()));
            }
        }
        self.in_flight = 0;
    }

    /// Gives a failed entry under `scope` a fresh set of attempts, due now.
    pub fn retry(&mut self, id: &str, scope: &str, now_ms: u64) -> Result<(), OutboxError> {
        let entry = self.entries.get_mut(id).filter(|e| e.visible_to(scope)).ok_or(OutboxError::Unknown)?;
        match entry.state {
            EntryState::Failed { .. } => {
                entry.attempts = 0;
                entry.state = EntryState::Pending { due_ms: now_ms };
                self.due.insert((now_ms, id.to_string()));
                Ok(())
            }
            EntryState::Pending { .. } => Err(OutboxError::WrongState { state: "pending" }),
            EntryState::InFlight { .. } => Err(OutboxError::WrongState { state: "in flight" }),
        }
    }

    /// Removes an entry under `scope` that is not in flight.
    pub fn delete(&mut self, id: &str, scope: &str) -> Result<Entry, OutboxError> {
        let entry = self.get(id, scope).ok_or(OutboxError::Unknown)?;
        match entry.state {
            EntryState::InFlight { .. } => return Err(OutboxError::WrongState { state: "in flight" }),
            EntryState::Pending { due_ms } => {
                self.due.remove(&(due_ms, id.to_string()));
            }
            EntryState::Failed { .. } => {}
        }
        Ok(self.remove(id).expect("found above"))
    }

    /// One entry, if a caller limited to `scope` may see it.
    pub fn get(&self, id: &str, scope: &str) -> Option<&Entry> {
        self.entries.get(id).filter(|e| e.visible_to(scope))
    }

    /// Up to `limit` entries of `listing` under `scope` after id `after`, in the order they
    /// were accepted, and the id to continue after if there are more.
    pub fn page(
        &self,
        listing: Listing,
        scope: &str,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<&Entry>, Option<String>) {
        let wanted = |e: &&Entry| {
            e.visible_to(scope)
                && match listing {
                    Listing::Failed => matches!(e.state, EntryState::Failed { .. }),
                    Listing::Pending => !matches!(e.state, EntryState::Failed { .. }),
                }
        };
        let start = after.map_or(std::ops::Bound::Unbounded, |a| std::ops::Bound::Excluded(a.to_string()));
        let mut matching = self.entries.range((start, std::ops::Bound::Unbounded)).map(|(_, e)| e).filter(wanted);
        let page: Vec<&Entry> = matching.by_ref().take(limit).collect();
        let next = if matching.next().is_some() { page.last().map(|e| e.id.clone()) } else { None };
        (page, next)
    }

    /// Counts by state.
    pub fn stats(&self) -> OutboxStats {
        // Every pending entry has its place in `due`; the rest are in flight or failed.
        let pending = self.due.len();
        OutboxStats {
            pending: pending as u64,
            in_flight: self.in_flight as u64,
            failed: (self.entries.len() - pending - self.in_flight) as u64,
        }
    }

    /// Every entry, for a snapshot.
    pub fn export(&self) -> Vec<Entry> {
        self.entries.values().cloned().collect()
    }

    /// Rebuilds the outbox from a snapshot's entries.
    pub fn import(limits: OutboxLimits, entries: Vec<Entry>) -> Self {
        let mut outbox = Self::new(limits);
        for entry in entries {
            match entry.state {
                EntryState::Pending { due_ms } => {
                    outbox.due.insert((due_ms, entry.id.clone()));
                }
                EntryState::InFlight { .. } => outbox.in_flight += 1,
                EntryState::Failed { .. } => {}
            }
            outbox.count(&entry, true);
            outbox.entries.insert(entry.id.clone(), entry);
        }
        outbox
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: OutboxLimits = OutboxLimits {
        max_entries: 4,
        max_body_bytes: 64,
        max_attempts: 5,
        backoff: Backoff { base_ms: 100, factor: 2, cap_ms: 1_000 },
        max_callbacks: 2,
        max_total_bytes: 1_000,
    };

    fn call(n: u32) -> Call {
        Call {
            method: "POST".into(),
            url: format!("https://hooks.example.com/{n}"),
            headers: Vec::new(),
            body: "{}".into(),
        }
    }

    fn random(n: u8) -> [u8; 16] {
        [n; 16]
    }

    #[test]
    fn a_full_outbox_refuses_and_keeps_every_entry() {
        let mut o = Outbox::new(LIMITS);
        let ids: Vec<String> =
            (0..4).map(|n| o.enqueue(call(n), 3, None, Origin::default(), 1_000, random(n as u8)).unwrap()).collect();
        assert_eq!(
            o.enqueue(call(9), 3, None, Origin::default(), 1_000, random(9)),
            Err(OutboxError::Full { max_entries: 4 })
        );
        assert!(ids.iter().all(|id| o.get(id, "").is_some()), "nothing dropped or overwritten");
        let big = Call { body: "x".repeat(65), ..call(1) };
        let mut roomy = Outbox::new(LIMITS);
        assert_eq!(
            roomy.enqueue(big, 3, None, Origin::default(), 0, random(1)),
            Err(OutboxError::BodyTooLarge { max_body_bytes: 64 })
        );
        assert_eq!(
            roomy.enqueue(call(1), 0, None, Origin::default(), 0, random(1)),
            Err(OutboxError::Attempts { max: 5 })
        );
        assert_eq!(
            roomy.enqueue(call(1), 6, None, Origin::default(), 0, random(1)),
            Err(OutboxError::Attempts { max: 5 })
        );
    }

    #[test]
    fn entries_go_out_when_due_retry_with_backoff_and_end_in_the_dead_letter_list() {
        let mut o = Outbox::new(LIMITS);
        let id = o.enqueue(call(1), 3, Some(2_000), Origin::default(), 1_000, random(1)).unwrap();
        assert_eq!(id.len(), 26);
        assert!(o.take_due(1_999, 10).is_empty(), "not before not_before_ms");
        assert_eq!(o.next_due_ms(), Some(2_000));
        let d = o.take_due(2_000, 10);
        assert_eq!((d.len(), d[0].attempt, d[0].id == id), (1, 1, true));
        assert!(o.take_due(10_000, 10).is_empty(), "in flight: not handed out twice");
        // A 503: due again within the first ceiling (100 ms); the full draw gives 100.
        let v = o.report(&id, Outcome::Status(503), None, Some("503 from target".into()), 2_010, u64::MAX);
        assert_eq!(v, Some(Verdict::Retry));
        assert_eq!(o.get(&id, "").unwrap().state, EntryState::Pending { due_ms: 2_110 });
        assert_eq!(o.take_due(2_110, 10)[0].attempt, 2);
        // Retry-After is a floor.
        o.report(&id, Outcome::Timeout, Some(5_000), Some("timed out".into()), 2_200, 0);
        assert_eq!(o.get(&id, "").unwrap().state, EntryState::Pending { due_ms: 7_200 });
        assert_eq!(o.take_due(7_200, 10)[0].attempt, 3);
        // The last attempt fails: dead-lettered with its error.
        assert_eq!(
            o.report(&id, Outcome::ConnectionFailed, None, Some("refused".into()), 7_300, 0),
            Some(Verdict::Fail)
        );
        let e = o.get(&id, "").unwrap();
        assert_eq!((e.state, e.last_error.as_deref()), (EntryState::Failed { at_ms: 7_300 }, Some("refused")));
        assert_eq!(o.stats(), OutboxStats { pending: 0, in_flight: 0, failed: 1 });
        assert_eq!(o.next_due_ms(), None);
        assert_eq!(o.report(&id, Outcome::Status(200), None, None, 7_400, 0), None, "a late report changes nothing");
        // Retried by hand: a fresh set of attempts, delivered, gone.
        o.retry(&id, "", 8_000).unwrap();
        assert_eq!(o.take_due(8_000, 10)[0].attempt, 1);
        assert_eq!(o.report(&id, Outcome::Status(204), None, None, 8_050, 0), Some(Verdict::Done));
        assert!(o.get(&id, "").is_none());
    }

    #[test]
    fn a_4xx_fails_at_once_and_only_failed_entries_retry() {
        let mut o = Outbox::new(LIMITS);
        let id = o.enqueue(call(1), 5, None, Origin::default(), 0, random(1)).unwrap();
        assert_eq!(o.retry(&id, "", 0), Err(OutboxError::WrongState { state: "pending" }));
        o.take_due(0, 1);
        assert_eq!(o.retry(&id, "", 0), Err(OutboxError::WrongState { state: "in flight" }));
        assert_eq!(o.delete(&id, ""), Err(OutboxError::WrongState { state: "in flight" }));
        assert_eq!(o.report(&id, Outcome::Status(404), None, Some("404".into()), 5, 0), Some(Verdict::Fail));
        assert_eq!(o.retry("nope", "", 0), Err(OutboxError::Unknown));
        assert!(o.delete(&id, "").is_ok());
        assert_eq!(o.stats(), OutboxStats::default());
    }

    #[test]
    fn a_lost_courier_gets_everything_in_flight_again() {
        let mut o = Outbox::new(LIMITS);
        let ids: Vec<String> =
            (0..3).map(|n| o.enqueue(call(n), 3, None, Origin::default(), 0, random(n as u8)).unwrap()).collect();
        assert_eq!(o.take_due(0, 2).len(), 2);
        o.requeue_in_flight(50);
        let again: Vec<String> = o.take_due(50, 10).into_iter().map(|d| d.id).collect();
        assert_eq!(again.len(), 3, "the two in flight and the one never sent");
        assert_eq!(o.in_flight(), 3);
        assert!(ids.iter().all(|id| again.contains(id)));
    }

    #[test]
    fn pages_follow_acceptance_order_by_listing_and_survive_an_export() {
        let mut o = Outbox::new(OutboxLimits { max_entries: 100, ..LIMITS });
        let ids: Vec<String> = (0..7)
            .map(|n| o.enqueue(call(n), 1, None, Origin::default(), 1_000 + u64::from(n), random(9)).unwrap())
            .collect();
        for id in &ids[..3] {
            o.take_due(u64::MAX, 1);
            o.report(id, Outcome::Status(500), None, Some("500".into()), 2_000, 0);
        }
        let (page, next) = o.page(Listing::Pending, "", None, 3);
        assert_eq!(page.iter().map(|e| &e.id).collect::<Vec<_>>(), ids[3..6].iter().collect::<Vec<_>>());
        let (rest, end) = o.page(Listing::Pending, "", next.as_deref(), 3);
        assert_eq!((rest.len(), end), (1, None));
        assert_eq!(o.page(Listing::Failed, "", None, 10).0.len(), 3);
        let copy = Outbox::import(o.limits, o.export());
        assert_eq!(copy.export(), o.export());
        assert_eq!((copy.next_due_ms(), copy.stats()), (o.next_due_ms(), o.stats()));
        let json = serde_json::to_string(&o.export()).unwrap();
        let back: Vec<Entry> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, o.export());
    }

    fn origin(scope: &str, callback: bool) -> Origin {
        Origin { scope: scope.into(), callback }
    }

    #[test]
    fn r12_entries_are_seen_and_changed_only_under_their_scope() {
        let mut o = Outbox::new(OutboxLimits { max_entries: 100, ..LIMITS });
        let a = o.enqueue(call(1), 1, None, origin("team-a:", false), 0, random(1)).unwrap();
        let b = o.enqueue(call(2), 1, None, origin("team-b:", false), 0, random(2)).unwrap();
        let cb = o.enqueue(call(3), 1, None, origin("team-a:job", true), 0, random(3)).unwrap();
        assert!(o.get(&a, "team-a:").is_some() && o.get(&cb, "team-a:").is_some());
        assert!(o.get(&b, "team-a:").is_none(), "another tenant's entry is as good as absent");
        assert!(o.get(&a, "team-a:x").is_none(), "a narrower key does not see the wider tenant's call");
        assert!(o.get(&b, "").is_some(), "an unlimited key sees everything");
        let ids = |scope| o.page(Listing::Pending, scope, None, 10).0.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids("team-a:"), vec![a.clone(), cb.clone()]);
        assert_eq!(ids("team-b:"), vec![b.clone()]);
        assert_eq!(ids("").len(), 3);
        assert_eq!(o.delete(&b, "team-a:"), Err(OutboxError::Unknown));
        o.take_due(0, 10);
        for id in [&a, &b, &cb] {
            o.report(id, Outcome::Status(404), None, None, 1, 0);
        }
        assert_eq!(o.retry(&b, "team-a:", 5), Err(OutboxError::Unknown));
        assert!(o.get(&b, "").is_some_and(|e| matches!(e.state, EntryState::Failed { .. })), "untouched");
        assert_eq!(o.retry(&a, "team-a:", 5), Ok(()));
    }

    #[test]
    fn r12_callbacks_have_their_own_budget_and_cannot_crowd_out_calls() {
        let mut o = Outbox::new(LIMITS);
        for n in 0..2 {
            o.enqueue(call(n), 1, None, origin("job", true), 0, random(n as u8)).unwrap();
        }
        assert_eq!(
            o.enqueue(call(7), 1, None, origin("job", true), 0, random(7)),
            Err(OutboxError::CallbacksFull { max_callbacks: 2 })
        );
        for n in 0..4 {
            o.enqueue(call(n), 1, None, Origin::default(), 0, random(10 + n as u8)).expect("calls still have room");
        }
        assert_eq!(o.used(), OutboxUse { calls: 4, callbacks: 2, bytes: o.used().bytes });
    }

    #[test]
    fn r12_headers_count_in_max_body_bytes_and_bytes_in_total() {
        let mut o = Outbox::new(LIMITS);
        let header =
            |len: usize| Call { headers: vec![("X-A".into(), "v".repeat(len))], body: String::new(), ..call(1) };
        // 3 + 4 + 57 = 64 bytes fits; one more does not.
        assert!(o.enqueue(header(57), 1, None, Origin::default(), 0, random(1)).is_ok());
        assert_eq!(
            o.enqueue(header(58), 1, None, Origin::default(), 0, random(2)),
            Err(OutboxError::BodyTooLarge { max_body_bytes: 64 })
        );
        let mut small = Outbox::new(OutboxLimits { max_total_bytes: 100, ..LIMITS });
        let size = call(1).size_bytes() as u64;
        let fit = 100 / size;
        for n in 0..fit {
            small.enqueue(call(1), 1, None, Origin::default(), 0, random(n as u8)).unwrap();
        }
        assert_eq!(
            small.enqueue(call(1), 1, None, Origin::default(), 0, random(99)),
            Err(OutboxError::BytesFull { max_total_bytes: 100 })
        );
        assert_eq!(small.used().bytes, fit * size);
    }

    #[test]
    fn used_follows_every_removal_and_survives_an_import() {
        let mut o = Outbox::new(OutboxLimits { max_entries: 100, ..LIMITS });
        let a = o.enqueue(call(1), 1, None, Origin::default(), 0, random(1)).unwrap();
        let b = o.enqueue(call(2), 1, None, origin("x", true), 0, random(2)).unwrap();
        o.enqueue(call(3), 1, None, Origin::default(), 0, random(3)).unwrap();
        let copy = Outbox::import(o.limits(), o.export());
        assert_eq!(copy.used(), o.used());
        o.delete(&a, "").unwrap();
        o.take_due(0, 10);
        o.report(&b, Outcome::Status(200), None, None, 1, 0);
        let expected = OutboxUse { calls: 1, callbacks: 0, bytes: call(3).size_bytes() as u64 };
        assert_eq!(o.used(), expected);
    }

    #[test]
    fn redacted_calls_keep_method_and_url_without_query() {
        let c = Call {
            method: "POST".into(),
            url: "https://h.example.com/p?token=secret".into(),
            headers: vec![("Authorization".into(), "Bearer x".into())],
            body: "ticket".into(),
        };
        let r = c.redacted();
        assert_eq!((r.method.as_str(), r.url.as_str()), ("POST", "https://h.example.com/p"));
        assert!(r.headers.is_empty() && r.body.is_empty());
    }
}
