//! Child processes: start one with chosen descriptors at fixed numbers, name it, tie it to
//! its parent's life, reap the dead, and send signals.
//!
//! Children are started by fork + exec of the running binary (`/proc/self/exe`, so a binary
//! replaced on disk by a package upgrade does not mix versions inside one service). The exec
//! gives every child a clean state: no inherited threads, handlers or master bookkeeping.
//! Between fork and exec only async-signal-safe system calls run. A binary upgrade starts
//! the new master from the path the running one was started from, where the new build now is.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::libc;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// The first descriptor number a child receives its inherited descriptors at.
pub const FIRST_INHERITED_FD: RawFd = 3;

/// The program that re-executes this binary.
pub const SELF_EXE: &str = "/proc/self/exe";

/// Variables a child must not inherit: they are meant for the master alone.
const MASTER_ONLY_VARIABLES: &[&str] = &["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"];

/// Starts `SELF_EXE` with `args`, showing `arg0` in `ps`, with `fds[i]` at descriptor
/// `FIRST_INHERITED_FD + i` and nothing else open beyond stdio. The child gets SIGTERM when
/// this process dies. Returns the child's pid.
pub fn spawn(arg0: &str, args: &[String], fds: &[BorrowedFd<'_>]) -> io::Result<i32> {
    let mut cmd = Command::new(SELF_EXE);
    cmd.arg0(arg0).args(args);
    for name in MASTER_ONLY_VARIABLES {
        cmd.env_remove(name);
    }
    start(cmd, fds, true)
}

/// Starts `program` (a new master, for a binary upgrade) with `args` and this process's
/// environment plus `env`, with `fds[i]` at `FIRST_INHERITED_FD + i`. Unlike a child it
/// outlives this process: it is to take over from it. Returns its pid.
pub fn spawn_successor(
    program: &Path,
    arg0: &OsStr,
    args: &[OsString],
    env: &[(&str, String)],
    fds: &[BorrowedFd<'_>],
) -> io::Result<i32> {
    let mut cmd = Command::new(program);
    cmd.arg0(arg0).args(args);
    cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    // systemd's watchdog names the old master; once the new one is the main process it is
    // the new one's to feed.
    cmd.env_remove("WATCHDOG_PID");
    start(cmd, fds, false)
}

fn start(mut cmd: Command, fds: &[BorrowedFd<'_>], die_with_parent: bool) -> io::Result<i32> {
    let sources: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let mut parked: Vec<RawFd> = vec![-1; sources.len()];
    let first_free = FIRST_INHERITED_FD + sources.len() as RawFd;
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (fcntl, dup2, prctl) on integers it owns; it does not
    // allocate (both vectors were sized before the fork).
    unsafe {
        cmd.pre_exec(move || {
            // Park every source above the target range first so no dup2 below overwrites a
            // source that a later mapping still needs. Parked copies are close-on-exec.
            for (i, &src) in sources.iter().enumerate() {
                let fd = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, first_free);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                parked[i] = fd;
            }
            for (i, &fd) in parked.iter().enumerate() {
                // dup2 clears close-on-exec on the new descriptor: it survives the exec.
                if libc::dup2(fd, FIRST_INHERITED_FD + i as RawFd) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if die_with_parent && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    Ok(child.id() as i32)
}

/// Takes ownership of the descriptor a child inherited at `FIRST_INHERITED_FD + index`,
/// checking that it is open, and marks it close-on-exec.
pub fn take_inherited(index: usize) -> io::Result<OwnedFd> {
    let fd = FIRST_INHERITED_FD + index as RawFd;
    // SAFETY: F_GETFD on any integer is harmless; it only tells whether the fd is open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("descriptor {fd} was not inherited; this command is started by `leasehold serve` only"),
        ));
    }
    // SAFETY: the descriptor is open (checked above) and was placed here by the master for
    // this process alone; nothing else in this process refers to it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    nix::fcntl::fcntl(&owned, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
        .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    Ok(owned)
}

/// Sets this process's name as `ps` and `/proc/PID/comm` show it (at most 15 bytes).
pub fn set_name(name: &str) {
    let short: String = name.chars().take(15).collect();
    if let Ok(c) = CString::new(short) {
        let _ = nix::sys::prctl::set_name(&c);
    }
}

/// Fails if this process's parent is no longer `parent` (it died before the child could
/// ask to be signalled on its death).
pub fn check_parent(parent: i32) -> io::Result<()> {
    let now = nix::unistd::getppid().as_raw();
    if now != parent {
        return Err(io::Error::other(format!("the master (pid {parent}) is gone; parent is now {now}")));
    }
    Ok(())
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with code {c}"),
            Exit::Signal(s) => match Signal::try_from(*s) {
                Ok(sig) => write!(f, "was killed by {}", sig.as_str()),
                Err(_) => write!(f, "was killed by signal {s}"),
            },
        }
    }
}

/// Reaps every child that has ended, without blocking.
pub fn reap() -> Vec<(i32, Exit)> {
    let mut dead = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => dead.push((pid.as_raw(), Exit::Code(code))),
            Ok(WaitStatus::Signaled(pid, sig, _)) => dead.push((pid.as_raw(), Exit::Signal(sig as i32))),
            Ok(WaitStatus::StillAlive) | Err(_) => return dead,
            Ok(_) => {}
        }
    }
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub fn kill(pid: i32, signal: Signal) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
}

/// Waits until process `pid` has exited (reaped or not), up to `timeout`; `Ok(false)` if it
/// is still running then. Uses a pidfd, so it works for processes that are not our children.
pub fn wait_for_exit(pid: i32, timeout: std::time::Duration) -> io::Result<bool> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no memory
    // is passed.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        let e = io::Error::last_os_error();
        // No such process: it is gone already.
        return if e.raw_os_error() == Some(libc::ESRCH) { Ok(true) } else { Err(e) };
    }
    // SAFETY: the kernel just created this descriptor for us; we are its only owner.
    let fd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
    let mut fds = [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(&fd), nix::poll::PollFlags::POLLIN)];
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    let ready = nix::poll::poll(&mut fds, nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX))
        .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    Ok(ready > 0)
}

/// This process's id.
pub fn pid() -> i32 {
    std::process::id() as i32
}
