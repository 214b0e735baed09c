//! The lease table at a glance, for the dashboard (`GET /v1/ui/events`): the busiest locks.
//! Reads only; costs one pass over the table and a partial sort, so a caller asks for it
//! at a bounded rate (the worker: once a second while a dashboard is open).

use std::cmp::Reverse;

use super::{LockTable, LockView};

impl LockTable {
    /// Up to `n` locks that have holders or waiters, busiest first: the most waiters, then
    /// the most holders, then by name. Locks with neither (data only) are left out.
    pub fn busiest(&self, n: usize) -> Vec<LockView> {
        let mut busy: Vec<(Reverse<usize>, Reverse<usize>, &str)> = self
            .slots
            .iter()
            .flatten()
            .filter(|l| !l.holders.is_empty() || l.queue_len() > 0)
            .map(|l| (Reverse(l.queue_len()), Reverse(l.holders.len()), l.name.as_str()))
            .collect();
        if n == 0 {
            return Vec::new();
        }
        if busy.len() > n {
            busy.select_nth_unstable(n - 1);
            busy.truncate(n);
        }
        busy.sort_unstable();
        busy.into_iter().filter_map(|(_, _, name)| self.lock_view(name)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Acquire, Moment, Op, QueueMode, TableLimits};
    use super::*;
    use crate::core::names::{LockName, Ticket};

    fn acquire(table: &mut LockTable, name: &str, n: u8) {
        let op = Op::Acquire(Acquire {
            lock: LockName::parse(name).unwrap(),
            ticket: None,
            new_ticket: Ticket::from_bytes([n; 16]),
            owner: None,
            ttl_ms: Some(10_000),
            limit: Some(1),
            weight: 1,
            queue: Some(QueueMode::Fifo),
            watch: true,
            callback: None,
            mode: None,
            user: None,
            wait_ms: 0,
        });
        table.apply(op, Moment::new(1_000, 0), &mut Vec::new());
    }

    #[test]
    fn busiest_orders_by_waiters_then_holders_then_name_and_stops_at_n() {
        let mut table = LockTable::new(TableLimits::DEFAULT, 7);
        assert!(table.busiest(5).is_empty());
        acquire(&mut table, "quiet", 1);
        acquire(&mut table, "b-busy", 2);
        acquire(&mut table, "b-busy", 3);
        acquire(&mut table, "a-busy", 4);
        acquire(&mut table, "a-busy", 5);
        acquire(&mut table, "busiest", 6);
        acquire(&mut table, "busiest", 7);
        acquire(&mut table, "busiest", 8);
        let names = |v: Vec<LockView>| v.into_iter().map(|l| l.name.to_string()).collect::<Vec<_>>();
        assert_eq!(names(table.busiest(10)), ["busiest", "a-busy", "b-busy", "quiet"]);
        assert_eq!(names(table.busiest(2)), ["busiest", "a-busy"]);
        assert!(table.busiest(0).is_empty());
        let top = &table.busiest(1)[0];
        assert_eq!((top.used, top.queue_length, top.holders.len()), (1, 2, 1));
    }
}
