//! What the kernel says of a process's resources, for metrics: resident memory, CPU time
//! and start time, from `/proc/PID/stat` and `/proc/PID/statm` (Linux). The parsing is
//! pure and tested here; reading the files and asking `sysconf` for the clock tick and page
//! size is the only I/O. A file that cannot be read or parsed gives `None`, never a panic.

use std::sync::OnceLock;

/// One process's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Resident set size, bytes.
    pub resident_bytes: u64,
    /// User plus system CPU time, ms.
    pub cpu_ms: u64,
    /// When the process started, ms since the Unix epoch.
    pub start_time_ms: u64,
}

/// This process's figures.
pub fn own() -> Option<Usage> {
    read("/proc/self")
}

/// The figures of process `pid` (one of this user's, for example a child).
pub fn of(pid: i32) -> Option<Usage> {
    read(&format!("/proc/{pid}"))
}

fn read(dir: &str) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let statm = std::fs::read_to_string(format!("{dir}/statm")).ok()?;
    let times = parse_stat(&stat)?;
    let pages = parse_statm(&statm)?;
    let (tick_hz, page_bytes, boot_ms) = *constants().as_ref()?;
    Some(Usage {
        resident_bytes: pages.saturating_mul(page_bytes),
        cpu_ms: ticks_to_ms(times.utime.saturating_add(times.stime), tick_hz),
        start_time_ms: boot_ms.saturating_add(ticks_to_ms(times.starttime, tick_hz)),
    })
}

fn ticks_to_ms(ticks: u64, tick_hz: u64) -> u64 {
    (u128::from(ticks) * 1_000 / u128::from(tick_hz.max(1))).try_into().unwrap_or(u64::MAX)
}

/// Clock ticks per second, bytes per page and the boot time (ms since the epoch): fixed
/// while the machine runs, read once.
fn constants() -> &'static Option<(u64, u64, u64)> {
    static CONSTANTS: OnceLock<Option<(u64, u64, u64)>> = OnceLock::new();
    CONSTANTS.get_or_init(|| {
        // SAFETY: sysconf takes an integer name and touches no memory of ours.
        let (tick_hz, page_bytes) =
            unsafe { (nix::libc::sysconf(nix::libc::_SC_CLK_TCK), nix::libc::sysconf(nix::libc::_SC_PAGESIZE)) };
        let boot_s = parse_btime(&std::fs::read_to_string("/proc/stat").ok()?)?;
        Some((u64::try_from(tick_hz).ok()?, u64::try_from(page_bytes).ok()?, boot_s.saturating_mul(1_000)))
    })
}

/// The times `/proc/PID/stat` gives, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatTimes {
    /// User CPU time.
    pub utime: u64,
    /// System CPU time.
    pub stime: u64,
    /// Start time after boot.
    pub starttime: u64,
}

/// Fields 14, 15 and 22 of `/proc/PID/stat`. The second field is the command name in
/// parentheses, which may hold spaces and parentheses itself: fields are counted from the
/// last `)`.
pub fn parse_stat(text: &str) -> Option<StatTimes> {
    let (_, after) = text.rsplit_once(')')?;
    // After the name: field 3 (state) is the first.
    let fields: Vec<&str> = after.split_ascii_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(StatTimes { utime: field(14)?, stime: field(15)?, starttime: field(22)? })
}

/// The resident pages, the second field of `/proc/PID/statm`.
pub fn parse_statm(text: &str) -> Option<u64> {
    text.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// The boot time, seconds since the epoch, from `/proc/stat`'s `btime` line.
pub fn parse_btime(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4242 (lh (worker) 0) S 1 4242 4242 0 -1 4194560 310 0 0 0 17 5 0 0 20 0 1 0 123456 \
                    12345678 900 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(parse_stat(line), Some(StatTimes { utime: 17, stime: 5, starttime: 123456 }));
    }

    #[test]
    fn hostile_or_short_files_give_none() {
        for text in ["", "1 (x", "1 (x) S 1 2", "1 (x) S a b c d e f g h i j k l m n o p q r s t", "\u{0}\u{ff}"] {
            assert_eq!(parse_stat(text), None, "{text:?}");
        }
        assert_eq!(parse_statm("12"), None);
        assert_eq!(parse_statm("12 x 3"), None);
        assert_eq!(parse_btime("cpu 1 2 3\n"), None);
    }

    #[test]
    fn statm_and_btime() {
        assert_eq!(parse_statm("5000 1234 300 10 0 800 0\n"), Some(1234));
        assert_eq!(parse_btime("cpu  1 2\nintr 5\nbtime 1700000000\nprocesses 9\n"), Some(1_700_000_000));
        assert_eq!(ticks_to_ms(250, 100), 2_500);
        assert_eq!(ticks_to_ms(7, 0), 7_000, "a tick rate of 0 is read as 1");
    }

    #[test]
    fn own_usage_is_plausible() {
        let usage = own().expect("/proc/self is readable on Linux");
        assert!(usage.resident_bytes > 1 << 20, "{usage:?}");
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        // Started before now, and not before the year 2000.
        assert!(usage.start_time_ms <= now_ms + 1_000 && usage.start_time_ms > 946_684_800_000, "{usage:?}");
    }
}
