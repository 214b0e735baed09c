//! Writes the seed corpora under `fuzz/seeds/<target>/` from the inputs the unit tests use
//! (the parser's valid stream and malformed corpus, the connection scenarios, the message
//! round-trip and hostile-frame lists, journal records of every kind, the configuration
//! tests' files and environments), in each target's input layout (see `src/lib.rs`).
//!
//! Run once by hand when a target's layout or the tests' inputs change
//! (`cargo run --example make_seeds` in `fuzz/`); the seeds are committed, this is not
//! part of `make fuzz`. It writes files named `NN-*`; others (inputs the fuzzer found,
//! `r12-*` for those that crashed the server before a fix) are left alone.

use std::fs;
use std::path::{Path, PathBuf};

use leasehold::core::lock::{LeaseView, QueueKind, QueueMode, TableLimits};
use leasehold::core::names::{DataKey, LockName, Owner, Ticket};
use leasehold::ipc::frame::{encode, DEFAULT_MAX_FRAME_BYTES};
use leasehold::ipc::message::{
    FromKeeper, HolderInfo, LockInfo, LockOp, LockReply, RejectKind, Start, Then, TicketEvent, ToChild, ToKeeper,
    ToMaster,
};
use leasehold::journal::{codec, Record};
use leasehold::metrics::WorkerSnapshot;
use leasehold::service::OutboxSettings;

/// The parser unit tests' limits (see `limits_from` in `src/lib.rs`).
const TEST_LIMITS: u8 = 0x2b;
/// The server's default limits.
const SERVER_LIMITS: u8 = 0x3f;

struct Seeds {
    dir: PathBuf,
    count: usize,
}

impl Seeds {
    fn new(root: &Path, target: &str) -> Self {
        let dir = root.join(target);
        fs::create_dir_all(&dir).expect("create the seed directory");
        for entry in fs::read_dir(&dir).expect("list the seed directory") {
            let path = entry.expect("a directory entry").path();
            let keep =
                path.file_name().and_then(|n| n.to_str()).is_some_and(|n| !n.starts_with(|c: char| c.is_ascii_digit()));
            if !keep {
                fs::remove_file(&path).expect("remove an old seed");
            }
        }
        Self { dir, count: 0 }
    }

    fn add(&mut self, name: &str, bytes: &[u8]) {
        self.count += 1;
        fs::write(self.dir.join(format!("{:02}-{name}", self.count)), bytes).expect("write a seed");
    }
}

fn with_prefix(prefix: &[u8], body: &[u8]) -> Vec<u8> {
    [prefix, body].concat()
}

fn http_parse(root: &Path) {
    let mut s = Seeds::new(root, "http_parse");
    let valid = [
        ("get", "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n".to_string()),
        (
            "acquire",
            "POST /v1/locks/x/acquire HTTP/1.1\r\nHost: a\r\nContent-Length: 14\r\nX-Api-Key: key\r\n\r\n{\"ttl_ms\":100}"
                .to_string(),
        ),
        (
            "chunked",
            "POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n"
                .to_string(),
        ),
        ("bare-lf", "\r\nGET /after-crlf HTTP/1.1\nHost: a\n\n".to_string()),
        ("http10", "PUT /d HTTP/1.0\r\nContent-Length: 0\r\n\r\n".to_string()),
        ("keep-alive-10", "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n".to_string()),
        ("auth-headers", "GET /v1/locks/a?x=1 HTTP/1.1\r\nHost: h\r\nX-Api-Key: k1 \r\nx-ticket: T\r\n\r\n".to_string()),
        (
            "trailers",
            "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"
                .to_string(),
        ),
        (
            "expect-continue",
            "POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc".to_string(),
        ),
        ("events", "GET /v1/events HTTP/1.1\r\nHost: h\r\nLast-Event-ID: 42\r\n\r\n".to_string()),
    ];
    let stream: String = valid.iter().map(|(_, r)| r.as_str()).collect();
    s.add("pipelined-whole", &with_prefix(&[0, TEST_LIMITS], stream.as_bytes()));
    s.add("pipelined-by-7", &with_prefix(&[7, TEST_LIMITS], stream.as_bytes()));
    s.add("pipelined-by-1", &with_prefix(&[1, SERVER_LIMITS], stream.as_bytes()));
    for (name, request) in &valid {
        s.add(name, &with_prefix(&[3, TEST_LIMITS], request.as_bytes()));
    }
    let malformed = [
        ("garbage-line", "\x00\x01\x02\x03 \r\n\r\n".to_string()),
        ("no-version", "GET /\r\nHost: h\r\n\r\n".into()),
        ("bad-version", "GET / HTTP/2.0\r\nHost: h\r\n\r\n".into()),
        ("space-in-target", "GET /a b HTTP/1.1\r\nHost: h\r\n\r\n".into()),
        ("absolute-target", "GET http://x/ HTTP/1.1\r\nHost: h\r\n\r\n".into()),
        ("no-host", "GET / HTTP/1.1\r\n\r\n".into()),
        ("two-hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".into()),
        ("two-lengths", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx".into()),
        ("length-list", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 1\r\n\r\nx".into()),
        ("negative-length", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n".into()),
        (
            "te-and-cl",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
        ),
        (
            "two-te",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
        ),
        ("te-in-10", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into()),
        ("gzip", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n".into()),
        ("bad-chunk-size", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".into()),
        ("long-chunk", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc\r\n".into()),
        ("folding", "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n".into()),
        ("bad-name", "GET / HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n".into()),
        ("expect-magic", "POST / HTTP/1.1\r\nHost: h\r\nExpect: magic\r\n\r\n".into()),
        ("big-header", format!("GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n", "a".repeat(2000))),
        ("many-headers", format!("GET / HTTP/1.1\r\nHost: h\r\n{}\r\n", "A: b\r\n".repeat(65))),
        ("long-uri", format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "u".repeat(9000))),
        ("big-body", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4097\r\n\r\n".into()),
        ("huge-length", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 999999999999\r\n\r\n".into()),
        ("big-chunked", format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n", 4097)),
    ];
    for (name, request) in &malformed {
        s.add(name, &with_prefix(&[0, TEST_LIMITS], request.as_bytes()));
    }
}

/// Ops of the `http_conn` target (see `http_conn` in `src/lib.rs`).
mod op {
    pub const FEED: u8 = 0;
    pub const RESPOND: u8 = 1;
    pub const STREAM: u8 = 2;
    pub const PUSH: u8 = 3;
    pub const END: u8 = 4;
    pub const ADVANCE: u8 = 5;
    pub const WAIT: u8 = 6;
    pub const DEADLINE: u8 = 7;
    pub const DRAIN: u8 = 8;
    pub const EOF: u8 = 9;
    pub const RESUME: u8 = 10;
}

/// Builds an `http_conn` input.
struct Script(Vec<u8>);

impl Script {
    fn new() -> Self {
        Self(vec![TEST_LIMITS])
    }

    fn feed(mut self, bytes: &str) -> Self {
        for chunk in bytes.as_bytes().chunks(256) {
            self.0.extend_from_slice(&[op::FEED, (chunk.len() - 1) as u8]);
            self.0.extend_from_slice(chunk);
        }
        self
    }

    fn op(mut self, op: u8, arg: u8) -> Self {
        self.0.extend_from_slice(&[op, arg]);
        self
    }

    fn push(mut self, bytes: &str) -> Self {
        self.0.extend_from_slice(&[op::PUSH, bytes.len() as u8]);
        self.0.extend_from_slice(bytes.as_bytes());
        self
    }
}

fn http_conn(root: &Path) {
    const GET: &str = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    let mut s = Seeds::new(root, "http_conn");
    let scripts = [
        (
            "pipelined-out-of-order",
            Script::new()
                .feed(&GET.repeat(3))
                .op(op::RESPOND, 2)
                .op(op::RESPOND, 1)
                .op(op::RESPOND, 0)
                .op(op::ADVANCE, 255),
        ),
        (
            "full-pipeline",
            (0..33)
                .fold(Script::new().feed(&GET.repeat(35)), |s, _| s.op(op::RESPOND, 0))
                .op(op::ADVANCE, 255)
                .op(op::ADVANCE, 255)
                .op(op::RESUME, 0),
        ),
        (
            "connection-close",
            Script::new()
                .feed("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /ignored HTTP/1.1\r\n")
                .op(op::RESPOND, 0)
                .op(op::ADVANCE, 255),
        ),
        (
            "bad-request-lingers",
            Script::new()
                .feed(&format!("{GET}BROKEN\r\n\r\n"))
                .op(op::RESPOND, 0)
                .op(op::ADVANCE, 255)
                .feed("more")
                .op(op::DEADLINE, 0),
        ),
        ("header-timeout", Script::new().feed("GET / HTTP/1.1\r\n").op(op::WAIT, 80).op(op::ADVANCE, 255)),
        ("idle-timeout", Script::new().feed(GET).op(op::RESPOND, 0).op(op::ADVANCE, 255).op(op::DEADLINE, 0)),
        (
            "drain-busy",
            Script::new()
                .feed(&GET.repeat(2))
                .op(op::DRAIN, 0)
                .op(op::RESPOND, 0)
                .op(op::RESPOND, 0)
                .op(op::ADVANCE, 255),
        ),
        ("drain-idle", Script::new().op(op::DRAIN, 0).op(op::DEADLINE, 0).op(op::DRAIN, 0)),
        (
            "stream",
            Script::new()
                .feed("GET /v1/events HTTP/1.1\r\nHost: h\r\n\r\n")
                .op(op::STREAM, 0)
                .push("data: 1\n\n")
                .op(op::ADVANCE, 255)
                .feed(GET)
                .push(": ping\n\n")
                .op(op::END, 0)
                .op(op::ADVANCE, 255),
        ),
        (
            "expect-continue",
            Script::new()
                .feed("POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
                .op(op::ADVANCE, 255)
                .feed("abc")
                .op(op::RESPOND, 0),
        ),
        ("peer-eof", Script::new().feed(GET).op(op::EOF, 0).op(op::RESPOND, 0).op(op::ADVANCE, 1)),
        ("stalled-reader", Script::new().feed(GET).op(op::RESPOND, 0).op(op::WAIT, 255).op(op::DEADLINE, 0)),
    ];
    for (name, script) in scripts {
        s.add(name, &script.0);
    }
}

fn frames(messages: &[serde_json::Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        encode(m, DEFAULT_MAX_FRAME_BYTES, &mut out).expect("a seed message encodes");
    }
    out
}

fn value<T: serde::Serialize>(message: &T) -> serde_json::Value {
    serde_json::to_value(message).expect("a seed message serialises")
}

fn ipc_frame(root: &Path) {
    let mut s = Seeds::new(root, "ipc_frame");
    let lock = LockName::parse("jobs:nightly").expect("a valid name");
    let ticket = Ticket::from_bytes([7; 16]);
    let lease = LeaseView { ticket, fence: 12, owner: None, weight: 1, expires_at_ms: 5, claimed: true, user: None };
    let acquire = ToKeeper::Request {
        id: 77,
        op: LockOp::Acquire {
            lock: lock.clone(),
            ticket: Some(ticket),
            owner: Some(Owner::parse("host-1 ünïcode <script>").expect("a valid owner")),
            ttl_ms: 1000,
            limit: 3,
            weight: 2,
            queue: QueueMode::Lottery,
            wait_ms: 5_000,
            then: Then::WriteAndRelease { key: DataKey::parse("k").expect("a valid key"), value: "{\"a\":1}".into() },
            compat: true,
            callback: None,
            user: None,
        },
    };
    let messages = [
        (
            "start",
            value(&ToChild::Start(Start {
                config_text: Some("[server]\n".into()),
                slot: 2,
                generation: 9,
                listeners: 1,
            })),
        ),
        ("drain", value(&ToChild::Drain)),
        ("metrics-text", value(&ToChild::MetricsText { id: 3, text: "x 1\n".into() })),
        ("closed", value(&ToMaster::Closed { connections: 4 })),
        ("worker-metrics", value(&ToMaster::WorkerMetrics { id: 1, snapshot: WorkerSnapshot::default() })),
        ("acquire", value(&acquire)),
        ("release", value(&ToKeeper::Request { id: 78, op: LockOp::Release { lock: lock.clone(), ticket } })),
        ("cancel", value(&ToKeeper::Cancel { id: 77 })),
        ("unwatch", value(&ToKeeper::Unwatch { lock: lock.clone(), ticket })),
        ("hello", value(&FromKeeper::Hello { generation: 3 })),
        (
            "held",
            value(&FromKeeper::Reply {
                id: 77,
                reply: LockReply::Held { lease: lease.clone(), at_ms: 3, existing: false },
            }),
        ),
        (
            "rejected",
            value(&FromKeeper::Reply {
                id: 1,
                reply: LockReply::Rejected { message: "ttl_ms \"x\"\n".into(), kind: RejectKind::Invalid },
            }),
        ),
        ("event", value(&FromKeeper::Event { lock: lock.clone(), ticket, event: TicketEvent::Acquired(lease) })),
        (
            "locks",
            value(&FromKeeper::Reply {
                id: 2,
                reply: LockReply::Locks {
                    locks: vec![LockInfo {
                        name: lock,
                        limit: 2,
                        queue: QueueKind::Fifo,
                        used: 1,
                        holders: vec![HolderInfo {
                            owner: None,
                            weight: 1,
                            fence: 3,
                            expires_in_ms: 9,
                            claimed: true,
                            user: None,
                        }],
                        queue_length: 0,
                        data_keys: 1,
                    }],
                    next_after: Some("jobs:nightly".into()),
                },
            }),
        ),
    ];
    let all: Vec<serde_json::Value> = messages.iter().map(|(_, m)| m.clone()).collect();
    s.add("all-whole", &with_prefix(&[0, 3], &frames(&all)));
    s.add("all-by-5", &with_prefix(&[5, 3], &frames(&all)));
    for (name, message) in messages {
        s.add(name, &with_prefix(&[0, 3], &frames(&[message])));
    }
    let hostile: [&[u8]; 11] = [
        b"{not json}",
        b"42",
        b"[1,2,3]",
        b"true",
        b"\"\"",
        b"{}",
        b"{\"unknown_type\":{}}",
        b"{\"request\":{\"id\":1,\"op\":{\"acquire\":{\"lock\":\"a/b\",\"ttl_ms\":1,\"limit\":1,\"weight\":1,\"queue\":\"fifo\"}}}}",
        b"{\"request\":{\"id\":-1,\"op\":{\"release\":{\"lock\":\"a\",\"ticket\":\"short\"}}}}",
        b"{\"request\":{\"id\":1,\"op\":{\"release\":{\"lock\":\"a\",\"ticket\":\"AAAAAAAAAAAAAAAAAAAAAA\"}},\"extra\":1}}",
        b"{\"req\x00uest\":{}}",
    ];
    for (i, body) in hostile.iter().enumerate() {
        let mut framed = vec![0, 3];
        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        framed.extend_from_slice(body);
        s.add(&format!("hostile-{i}"), &framed);
    }
    let nested = format!("{}1{}", "[".repeat(50), "]".repeat(50));
    s.add("nested", &with_prefix(&[0, 3], &frames(&[serde_json::from_str(&nested).expect("valid JSON")])));
    s.add("oversize", &with_prefix(&[0, 1], &1025u32.to_be_bytes()));
}

fn journal_record(root: &Path) {
    let mut s = Seeds::new(root, "journal_record");
    let lock = LockName::parse("a").expect("a valid name");
    let ticket = Ticket::from_bytes([9; 16]);
    let records = [
        (
            "configure",
            Record::Configure { limits: TableLimits::DEFAULT, max_wait_ms: 60_000, outbox: OutboxSettings::default() },
        ),
        (
            "input-acquire",
            Record::Input {
                link: 1,
                at_ms: 1_000,
                entropy: 42,
                fresh: ticket,
                message: ToKeeper::Request {
                    id: 1,
                    op: LockOp::Acquire {
                        lock: lock.clone(),
                        ticket: None,
                        owner: None,
                        ttl_ms: 2_000,
                        limit: 2,
                        weight: 1,
                        queue: QueueMode::Fifo,
                        wait_ms: 500,
                        then: Then::WriteAndRelease {
                            key: DataKey::parse("k").expect("a valid key"),
                            value: "7".into(),
                        },
                        compat: false,
                        callback: None,
                        user: None,
                    },
                },
            },
        ),
        (
            "input-put-data",
            Record::Input {
                link: 2,
                at_ms: 1_001,
                entropy: 43,
                fresh: ticket,
                message: ToKeeper::Request {
                    id: 2,
                    op: LockOp::PutData {
                        lock: lock.clone(),
                        ticket,
                        key: DataKey::parse("k").expect("a valid key"),
                        value: "1".into(),
                    },
                },
            },
        ),
        (
            "input-release",
            Record::Input {
                link: 1,
                at_ms: 1_002,
                entropy: 44,
                fresh: ticket,
                message: ToKeeper::Request { id: 3, op: LockOp::Release { lock: lock.clone(), ticket } },
            },
        ),
        (
            "input-unwatch",
            Record::Input {
                link: 1,
                at_ms: 1_003,
                entropy: 45,
                fresh: ticket,
                message: ToKeeper::Unwatch { lock, ticket },
            },
        ),
        ("expire", Record::Expire { at_ms: 5_000, entropy: 7 }),
        ("link-closed", Record::LinkClosed { link: 2, at_ms: 5_001, entropy: 8 }),
        ("reset-presence", Record::ResetPresence { at_ms: 6_000 }),
        ("reserve-fences", Record::ReserveFences { up_to: 1_024 }),
        ("raise-fences", Record::RaiseFences { floor: 2_048 }),
    ];
    let mut segment = Vec::new();
    for (name, record) in &records {
        let body = serde_json::to_vec(record).expect("a record serialises");
        s.add(&format!("body-{name}"), &with_prefix(&[1], &body));
        codec::encode(record, &mut segment).expect("a record encodes");
    }
    let written = segment.len();
    segment.resize(written + 64, 0);
    s.add("segment", &with_prefix(&[0], &segment));
    s.add("segment-torn", &with_prefix(&[0], &segment[..written - 3]));
    let mut corrupt = segment.clone();
    corrupt[written / 2] ^= 0x10;
    s.add("segment-corrupt", &with_prefix(&[0], &corrupt));
    let mut trailing = segment.clone();
    let last = trailing.len() - 1;
    trailing[last] = b'}';
    s.add("segment-bytes-after-zeros", &with_prefix(&[0], &trailing));
    let mut absurd = vec![0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
    absurd.extend_from_slice(b"{}");
    s.add("segment-absurd-length", &absurd);
}

fn config_load(root: &Path) {
    let mut s = Seeds::new(root, "config_load");
    let shipped = fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/leasehold.toml"))
        .expect("read the shipped configuration");
    s.add("shipped", &shipped);
    let files: [(&str, &str); 8] = [
        ("three-mistakes", "\n[server]\nworkers = 100000\ndispatch = \"carrier-pigeon\"\n[locks]\nclaim_msec = 5\n"),
        (
            "wrong-types",
            "\n[server]\nlisten = 8080\n[locks]\nmin_ttl_ms = 5000\nmax_ttl_ms = 1000\n[journal]\nfsync = true\n",
        ),
        ("syntax-error", "[server]\nworkers = = 2\n"),
        ("unknown-section", "[sever]\nworkers = 2\n"),
        (
            "keys",
            "\n[[auth.keys]]\nkey = \"s3cret-key\"\nrole = \"lock\"\nprefix = \"jobs/\"\n[[auth.keys]]\nkey = \"s3cret-key\"\nrole = \"read\"\n[[auth.keys]]\nkey = \"other-key\"\nrole = \"admin\"\n",
        ),
        ("public-listen", "[server]\nlisten = [\"0.0.0.0:8080\"]\n"),
        ("public-anonymous", "[server]\nlisten = [\"0.0.0.0:8080\"]\n[auth]\ninsecure_anonymous = true\n"),
        (
            "public-with-key",
            "[server]\nlisten = [\"0.0.0.0:8080\"]\n[[auth.keys]]\nkey = \"abcdefgh\"\nrole = \"write\"\n",
        ),
    ];
    for (name, text) in files {
        s.add(name, text.as_bytes());
    }
    let with_env: [(&str, &str, &str); 5] = [
        (
            "env-overrides",
            "[server]\nworkers = 3\nlisten = [\"127.0.0.1:9000\"]\n",
            "LEASEHOLD_WORKERS=5\nLEASEHOLD_LISTEN=127.0.0.1:1, [::1]:2\nLEASEHOLD_FSYNC=never\nLEASEHOLD_INSECURE_ANONYMOUS=1\n",
        ),
        ("env-bad-value", "", "LEASEHOLD_WORKERS=many\n"),
        ("env-unknown", "", "LEASEHOLD_WORKRES=2\nLEASEHOLD_URL=x\n"),
        ("env-compat-keys", "", "RESOURCE_READ=read\nRESOURCE_READ_LOCK=read_lock\nRESOURCE_WRITE=write\n"),
        ("env-same-key", "", "RESOURCE_READ=shared\nRESOURCE_WRITE=shared\n"),
    ];
    for (name, text, env) in with_env {
        s.add(name, &[text.as_bytes(), b"\0", env.as_bytes()].concat());
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    http_parse(&root);
    http_conn(&root);
    ipc_frame(&root);
    journal_record(&root);
    config_load(&root);
    println!("seeds written under {}", root.display());
}
