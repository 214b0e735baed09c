//! What the HTTP benchmarks share: starting the release binary on loopback with a config of
//! their own (waiting for its READY=1 note), one-request-at-a-time HTTP calls, and reading
//! `/metrics` and the keeper's memory.

#![allow(dead_code)] // each benchmark uses its own part of this module

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running server; killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Its standard error.
    pub log: PathBuf,
}

impl Server {
    /// Starts `leasehold serve` with `config` (written to `dir`), and waits up to
    /// `ready_within` for READY=1.
    pub fn start(dir: &Path, config: &str, ready_within: Duration) -> Server {
        let config_path = dir.join("bench.toml");
        std::fs::write(&config_path, config).unwrap();
        let notify_path = dir.join("notify");
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify.set_read_timeout(Some(ready_within)).unwrap();
        let log = dir.join("server.log");
        let child = Command::new(env!("CARGO_BIN_EXE_leasehold"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("NOTIFY_SOCKET", &notify_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start leasehold");
        let mut buf = [0u8; 1024];
        let addr = loop {
            let n = notify.recv(&mut buf).expect("READY=1 in time");
            let note = String::from_utf8_lossy(&buf[..n]).to_string();
            if let Some(rest) = note.split("serving on ").nth(1) {
                break rest.split([' ', ';']).next().unwrap().parse().unwrap();
            }
        };
        Server { child, addr, log }
    }

    /// `/metrics` as text.
    pub fn metrics(&self) -> String {
        let mut c = TcpStream::connect(self.addr).unwrap();
        let (status, body) = call(&mut c, "GET", "/metrics", "");
        assert_eq!(status, 200);
        String::from_utf8(body).unwrap()
    }

    /// The keeper's pid (the master's child named `lh-keeper`).
    pub fn keeper_pid(&self) -> u32 {
        let master = self.child.id();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            // pid (comm) state ppid ...
            let Some((comm, rest)) = stat.split_once(") ") else { continue };
            let ppid: u32 = rest.split(' ').nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
            if ppid == master && comm.ends_with("(lh-keeper") {
                return pid;
            }
        }
        panic!("no keeper under pid {master}");
    }

    /// Stops the server with SIGTERM and waits for it.
    pub fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A value from `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or_else(|| panic!("{field} of {pid}"))
}

/// One sample of a metric with no labels.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Sends one request and reads its response (Content-Length bodies only).
pub fn call(stream: &mut TcpStream, method: &str, path: &str, body: &str) -> (u16, Vec<u8>) {
    let req = format!("{method} {path} HTTP/1.1\r\nHost: b\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    stream.write_all(req.as_bytes()).expect("send");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096]; // small: the hand-off benchmark runs 1,000 threads with 64 KiB stacks
    loop {
        let n = stream.read(&mut chunk).expect("read");
        assert!(n > 0, "closed");
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap()))
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            return (status, buf[end + 4..end + 4 + len].to_vec());
        }
    }
}

/// [`call`] with a JSON answer.
pub fn call_json(stream: &mut TcpStream, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, bytes) = call(stream, "POST", path, body);
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}
