//! Cluster mode end to end (docs/cluster.md): three real leasehold nodes on a real 3-member
//! etcd on loopback, with the leader killed outright, frozen past its lease, and etcd
//! members killed. What must hold is what the README promises: an acknowledged change is
//! never lost, a deposed leader acknowledges nothing, fences only grow, and leases survive
//! a failover (the takeover extends them by the time without a leader). And the command
//! line's view of a cluster: `leasehold status --cluster`.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::etcd::EtcdCluster;
use crate::support::http::{once, Client, Reply};
use crate::support::nodes::{Follow, Nodes, Outcome};
use crate::support::sse::Events;
use crate::support::wait_for;

/// The counter's lock and data key.
const COUNTER: &str = "/v1/locks/counter";

fn text(reply: &Reply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// One increment of the racing counter, as a client must make it across failovers: take
/// the lock (again, if no answer came), read the count where the lock was confirmed, write
/// count + 1 under the ticket (checking, when no answer came, whether it landed), release.
/// Returns the count written and the fence it was written under.
fn increment(client: &mut Follow) -> (u64, u64) {
    let (ticket, fence) = loop {
        // A try-lock, so no client leaves a waiter behind when its node dies under it.
        match client.send("POST", &format!("{COUNTER}/acquire"), &[], r#"{"ttl_ms":8000,"queue":"none"}"#) {
            Outcome::Answer(r) if r.status == 200 => {
                let body = r.json();
                break (body["ticket"].as_str().unwrap().to_string(), body["fence"].as_u64().unwrap());
            }
            // Taken: a client's backoff before it tries again.
            Outcome::Answer(r) if r.status == 409 => std::thread::park_timeout(Duration::from_millis(5)),
            // No answer: a ticket granted meanwhile lapses by its TTL.
            Outcome::Unknown => {}
            Outcome::Answer(r) => panic!("acquire: {} {}", r.status, text(&r)),
        }
    };
    let renew = format!(r#"{{"ticket":"{ticket}","ttl_ms":8000}}"#);
    // The count as the leader has it: a renewal confirms the lease there, and the read
    // goes to the node that confirmed it.
    let read = |client: &mut Follow| loop {
        match client.send("POST", &format!("{COUNTER}/renew"), &[], &renew) {
            Outcome::Answer(r) if r.status == 200 => {}
            Outcome::Unknown => continue,
            Outcome::Answer(r) => panic!("renew of a held lease: {} {}", r.status, text(&r)),
        }
        let Ok(mut direct) = Client::connect(client.at()) else { continue };
        match direct.get(&format!("{COUNTER}/data/n")) {
            Ok(r) if r.status == 200 => return r.json().as_u64().unwrap(),
            Ok(r) if r.status == 404 => return 0,
            _ => continue,
        }
    };
    let n = read(client) + 1;
    loop {
        match client.send("PUT", &format!("{COUNTER}/data/n"), &[("x-ticket", &ticket)], &n.to_string()) {
            Outcome::Answer(r) if r.status == 200 || r.status == 201 => break,
            Outcome::Unknown if read(client) == n => break,
            Outcome::Unknown => {}
            Outcome::Answer(r) => panic!("write under a held lease: {} {}", r.status, text(&r)),
        }
    }
    loop {
        match client.send("POST", &format!("{COUNTER}/release"), &[], &format!(r#"{{"ticket":"{ticket}"}}"#)) {
            Outcome::Answer(r) if r.status == 200 => break,
            // An earlier try went through.
            Outcome::Answer(r) if r.status == 410 => break,
            Outcome::Unknown => {}
            Outcome::Answer(r) => panic!("release: {} {}", r.status, text(&r)),
        }
    }
    (n, fence)
}

/// Takes `lock` with a long lease through `client`; its ticket and fence.
fn hold(client: &mut Follow, lock: &str) -> (String, u64) {
    loop {
        if let Outcome::Answer(r) =
            client.send("POST", &format!("/v1/locks/{lock}/acquire"), &[], r#"{"ttl_ms":60000}"#)
        {
            assert_eq!(r.status, 200, "{}", text(&r));
            let body = r.json();
            return (body["ticket"].as_str().unwrap().to_string(), body["fence"].as_u64().unwrap());
        }
    }
}

#[test]
fn r13_a_racing_counter_ends_exact_across_two_leader_kills_with_fences_in_grant_order() {
    let etcd = EtcdCluster::start();
    let mut cluster = Nodes::start(&etcd, 3, 2);
    let addrs = cluster.addrs();
    let done: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let increments = Arc::new(AtomicU64::new(0));
    // Six clients, two starting at each node.
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let (addrs, done, stop, increments) = (addrs.clone(), done.clone(), stop.clone(), increments.clone());
            std::thread::spawn(move || {
                let mut client = Follow::new(addrs, i);
                while !stop.load(Ordering::Relaxed) {
                    let made = increment(&mut client);
                    done.lock().unwrap().push(made);
                    increments.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut holder = Follow::new(addrs.clone(), 0);
    let mut held = Vec::new();
    for round in 0..2 {
        let before = increments.load(Ordering::Relaxed);
        wait_for("the counter to move", || {
            let now = increments.load(Ordering::Relaxed);
            (now >= before + 20).then_some(()).ok_or(now)
        });
        held.push((format!("kept-{round}"), hold(&mut holder, &format!("kept-{round}"))));
        let leader = cluster.leader();
        cluster.nodes[leader].kill();
        let after_kill = increments.load(Ordering::Relaxed);
        wait_for("the counter to move on a new leader", || {
            let now = increments.load(Ordering::Relaxed);
            (now >= after_kill + 20).then_some(()).ok_or(now)
        });
        cluster.nodes[leader].restart();
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("a client thread");
    }
    let mut made = done.lock().unwrap().clone();
    made.sort_unstable();
    let counts: Vec<u64> = made.iter().map(|(n, _)| *n).collect();
    assert_eq!(counts, (1..=made.len() as u64).collect::<Vec<_>>(), "each increment counted once");
    let leader = cluster.leader();
    let count = once(cluster.nodes[leader].addr, "GET", &format!("{COUNTER}/data/n"), &[], "");
    assert_eq!(count.json().as_u64(), Some(made.len() as u64), "the count ends exact");
    for pair in made.windows(2) {
        assert!(pair[0].1 < pair[1].1, "fences grow in grant order: {pair:?}");
    }
    // Leases acknowledged before each kill are held by the same ticket, with the same fence.
    for (lock, (ticket, fence)) in held {
        match holder.send("GET", &format!("/v1/locks/{lock}/tickets/{ticket}"), &[], "") {
            Outcome::Answer(r) => {
                assert_eq!(r.status, 200, "{lock}: {}", text(&r));
                assert_eq!(r.json()["fence"].as_u64(), Some(fence), "{lock}: {}", text(&r));
            }
            Outcome::Unknown => panic!("{lock}: no answer"),
        }
    }
    cluster.wait_in_step();
}

/// Every node's view of `locks`: each lock's status with its relative times left out (they
/// depend on when it is read), its data, and the next fence.
fn view(addr: std::net::SocketAddr, locks: &[String]) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for lock in locks {
        let mut status = once(addr, "GET", &format!("/v1/locks/{lock}"), &[], "").json();
        for holder in status["holders"].as_array_mut().into_iter().flatten() {
            holder.as_object_mut().unwrap().remove("expires_in_ms");
        }
        out.push(status);
        out.push(serde_json::json!(text(&once(addr, "GET", &format!("/v1/locks/{lock}/data/k"), &[], ""))));
    }
    let metrics = text(&once(addr, "GET", "/metrics", &[], ""));
    let fence = metrics.lines().find(|l| l.starts_with("leasehold_next_fence ")).map(str::to_string);
    out.push(serde_json::json!(fence));
    out
}

#[test]
fn r13_a_leader_frozen_past_its_lease_acknowledges_nothing_more_and_rejoins_with_the_same_state() {
    let etcd = EtcdCluster::start();
    let cluster = Nodes::start(&etcd, 3, 1);
    let old = cluster.leader();
    let mut client = Follow::new(cluster.addrs(), old);
    let mut locks = Vec::new();
    for i in 0..5 {
        let lock = format!("before-{i}");
        let (ticket, _) = hold(&mut client, &lock);
        let put = client.send("PUT", &format!("/v1/locks/{lock}/data/k"), &[("x-ticket", &ticket)], &i.to_string());
        assert!(matches!(&put, Outcome::Answer(r) if r.status == 201), "{put:?}");
        locks.push(lock);
    }
    // Every batch of the log so far is the first leader's: each put is timed once.
    let applied = cluster.wait_in_step();
    let metrics = text(&once(cluster.nodes[old].addr, "GET", "/metrics", &[], ""));
    let puts = metrics.lines().find_map(|l| l.strip_prefix("leasehold_cluster_commit_seconds_count "));
    assert_eq!(puts.and_then(|n| n.parse::<u64>().ok()), Some(applied), "{metrics}");
    cluster.nodes[old].signal_all(Signal::SIGSTOP);
    let new = wait_for("another node to lead", || {
        let leaders: Vec<usize> =
            (0..3).filter(|&i| i != old && cluster.nodes[i].status().is_some_and(|s| s["role"] == "leader")).collect();
        leaders.first().copied().ok_or(leaders)
    });
    // The old leader's clients send changes it cannot see yet (it is frozen): each is in
    // its socket once the write returns.
    let stale: Vec<_> = (0..4)
        .map(|i| {
            let mut c = Client::connect(cluster.nodes[old].addr).expect("the frozen node's kernel accepts");
            let request =
                format!("POST /v1/locks/stale-{i}/acquire HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{{}}");
            c.send_raw(request.as_bytes()).expect("send");
            std::thread::spawn(move || c.read_reply().expect("an answer once thawed"))
        })
        .collect();
    let mut on_new = Follow::new(cluster.addrs(), new);
    hold(&mut on_new, "after");
    locks.push("after".into());
    cluster.nodes[old].signal_all(Signal::SIGCONT);
    for answer in stale {
        let reply = answer.join().expect("a stale client");
        // Refused by the rules, or by a worker whose keeper is starting again to rebuild.
        assert_eq!(reply.status, 503, "a deposed leader acknowledges nothing: {}", text(&reply));
        let error = reply.json()["error"].clone();
        assert!(error == "not_leader" || error == "keeper_unavailable", "{}", text(&reply));
    }
    // None of them is anywhere: not on the new leader, not in the log.
    for i in 0..4 {
        let status = once(cluster.nodes[new].addr, "GET", &format!("/v1/locks/stale-{i}"), &[], "");
        assert_eq!(status.status, 404, "stale-{i}: {}", text(&status));
    }
    let log = etcd.etcdctl(&["get", "--prefix", "/leasehold/log/"]);
    assert!(!log.contains("stale-"), "a refused change is in the log");
    // The old leader rejoins as a follower with the very same state.
    wait_for("the old leader to follow the new one", || {
        let s = cluster.nodes[old].status().unwrap_or_default();
        (s["role"] == "follower" && s["leader"] == format!("http://{}", cluster.nodes[new].addr).as_str())
            .then_some(())
            .ok_or(s)
    });
    cluster.wait_in_step();
    let want = view(cluster.nodes[new].addr, &locks);
    for (i, node) in cluster.nodes.iter().enumerate() {
        assert_eq!(view(node.addr, &locks), want, "node {i} holds the leader's state");
    }
}

#[test]
fn r13_etcd_losing_one_member_is_survived_and_losing_two_refuses_changes_until_they_return() {
    let etcd = EtcdCluster::start();
    let cluster = Nodes::start(&etcd, 3, 1);
    let mut client = Follow::new(cluster.addrs(), 0);
    let mut acknowledged = Vec::new();
    for i in 0..3 {
        acknowledged.push((format!("first-{i}"), hold(&mut client, &format!("first-{i}"))));
    }
    etcd.kill(&[1]);
    for i in 0..3 {
        acknowledged.push((format!("second-{i}"), hold(&mut client, &format!("second-{i}"))));
    }
    let leader = cluster.leader();
    etcd.kill(&[2]);
    // Without a quorum nothing can be committed: changes are refused with 503 (a change
    // caught in a batch whose put has no outcome yet waits for etcd instead).
    wait_for("a change to be refused 503", || {
        let mut direct = Client::connect(cluster.nodes[leader].addr).map_err(|e| e.to_string())?;
        direct.set_timeout(Duration::from_secs(2));
        match direct.post("/v1/locks/refused/acquire", "{}") {
            Ok(r) if r.status == 503 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let servers: Vec<i32> = cluster.nodes.iter().map(|n| n.server.as_ref().unwrap().pid()).collect();
    etcd.restart(&[1, 2]);
    for i in 0..3 {
        acknowledged.push((format!("third-{i}"), hold(&mut client, &format!("third-{i}"))));
    }
    assert_eq!(
        cluster.nodes.iter().map(|n| n.server.as_ref().unwrap().pid()).collect::<Vec<_>>(),
        servers,
        "no node was restarted"
    );
    for (lock, (ticket, fence)) in acknowledged {
        match client.send("GET", &format!("/v1/locks/{lock}/tickets/{ticket}"), &[], "") {
            Outcome::Answer(r) => {
                assert_eq!(r.status, 200, "{lock}: {}", text(&r));
                assert_eq!(r.json()["fence"].as_u64(), Some(fence), "{lock}: {}", text(&r));
            }
            Outcome::Unknown => panic!("{lock}: no answer"),
        }
    }
}

#[test]
fn r14_status_cluster_lists_every_node_with_its_role_and_the_leader() {
    let etcd = EtcdCluster::start();
    let cluster = Nodes::start(&etcd, 3, 1);
    let leader = format!("http://{}", cluster.nodes[cluster.leader()].addr);
    // A loopback port where nothing listens (the listener is dropped at once).
    let dead = format!("http://{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap());
    let mut servers: Vec<String> = cluster.addrs().iter().map(|a| format!("http://{a}")).collect();
    servers.push(dead.clone());
    let status = |servers: &str, extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_leasehold"))
            .args(["status", "--cluster", "--server", servers])
            .args(extra)
            .env_remove("LEASEHOLD_URL")
            .env_remove("LEASEHOLD_KEY")
            .output()
            .expect("run leasehold status --cluster");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.code(), stdout, String::from_utf8_lossy(&out.stderr).into_owned())
    };

    let (code, table, stderr) = status(&servers.join(","), &[]);
    assert_eq!(code, Some(0), "one leader that every answering node names: {table}{stderr}");
    let lines: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines.len(), 5, "a header, then a row per server: {table}");
    assert_eq!(lines[0], ["SERVER", "NODE", "ROLE", "EPOCH", "APPLIED", "LAG", "SNAPSHOT", "LEADER"], "{table}");
    for (i, cells) in lines[1..4].iter().enumerate() {
        assert_eq!(cells.len(), 8, "{table}");
        assert_eq!((cells[0], cells[1]), (servers[i].as_str(), format!("node-{i}").as_str()), "in order: {table}");
        assert!(cells[3..7].iter().all(|n| n.parse::<u64>().is_ok()), "epoch, applied, lag, snapshot: {table}");
        assert_eq!(cells[7], leader, "every node names the leader: {table}");
        assert_eq!(cells[2] == "leader", cells[0] == leader, "the leader says it leads: {table}");
    }
    let mut roles: Vec<&str> = lines[1..4].iter().map(|cells| cells[2]).collect();
    roles.sort_unstable();
    assert_eq!(roles, ["follower", "follower", "leader"], "{table}");
    assert_eq!(lines[4], [dead.as_str(), "-", "down", "(connection", "refused)", "-", "-", "-", "-", "-"], "{table}");

    // The same rows as JSON.
    let (code, json, stderr) = status(&servers.join(","), &["--json"]);
    assert_eq!(code, Some(0), "{json}{stderr}");
    let rows: serde_json::Value = serde_json::from_str(&json).expect("a JSON array");
    let rows = rows.as_array().expect("a JSON array");
    assert_eq!(rows.len(), 4, "{json}");
    assert_eq!(rows.iter().filter(|r| r["role"] == "leader").count(), 1, "{json}");
    assert_eq!(rows.iter().filter(|r| r["role"] == "follower").count(), 2, "{json}");
    assert!(rows[..3].iter().all(|r| r["leader"] == leader.as_str() && r["down"].is_null()), "{json}");
    assert_eq!((rows[3]["role"].as_str(), rows[3]["down"].as_str()), (Some("down"), Some("connection refused")));

    // Nobody answering: the row, and 69 with the reason.
    let (code, table, stderr) = status(&dead, &[]);
    assert_eq!(code, Some(69), "{table}{stderr}");
    assert!(table.lines().nth(1).is_some_and(|row| row.contains("down (connection refused)")), "{table}");
    assert!(stderr.contains("no node answered"), "{stderr}");
}

/// One request of the script both the leader and a follower are sent.
fn script_step(addr: std::net::SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    once(addr, method, path, headers, body)
}

/// The same requests on lock `lock` through `addr`: each answer's status and error code,
/// and the fences granted (to check that they come from the one counter of the leader).
fn exercise(addr: std::net::SocketAddr, lock: &str) -> (Vec<(u16, String)>, Vec<u64>) {
    let base = format!("/v1/locks/{lock}");
    let mut seen = Vec::new();
    let mut fences = Vec::new();
    let mut note = |r: &Reply| {
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        seen.push((r.status, body["error"].as_str().unwrap_or_default().to_string()));
        body
    };
    let acquired = note(&script_step(addr, "POST", &format!("{base}/acquire"), &[], r#"{"ttl_ms":30000}"#));
    let ticket = acquired["ticket"].as_str().unwrap_or_default().to_string();
    fences.extend(acquired["fence"].as_u64());
    note(&script_step(addr, "GET", &base, &[], ""));
    note(&script_step(
        addr,
        "POST",
        &format!("{base}/renew"),
        &[],
        &format!(r#"{{"ticket":"{ticket}","ttl_ms":30000}}"#),
    ));
    note(&script_step(addr, "PUT", &format!("{base}/data/k"), &[("x-ticket", &ticket)], "[1,2]"));
    let read = script_step(addr, "GET", &format!("{base}/data/k"), &[], "");
    assert_eq!(read.body, b"[1,2]", "a read after a write through the same node sees it");
    note(&read);
    note(&script_step(addr, "PUT", &format!("{base}/data/k"), &[("x-ticket", "AAAAAAAAAAAAAAAAAAAAAA")], "1"));
    note(&script_step(addr, "POST", &format!("{base}/acquire"), &[], r#"{"queue":"none"}"#));
    // A long-poll held by this node is answered when the lock is released.
    let waiting = std::thread::spawn(move || {
        let path = format!("/v1/locks/{}/acquire", lock_of(&base));
        once(addr, "POST", &path, &[], r#"{"ttl_ms":30000,"wait_ms":20000}"#)
    });
    wait_for("the long-poll to wait", || {
        let status = once(addr, "GET", &format!("/v1/locks/{lock}"), &[], "").json();
        (status["queue_length"] == 1).then_some(()).ok_or(status)
    });
    note(&script_step(addr, "POST", &format!("/v1/locks/{lock}/release"), &[], &format!(r#"{{"ticket":"{ticket}"}}"#)));
    let granted = waiting.join().unwrap();
    let granted_body = note(&granted);
    fences.extend(granted_body["fence"].as_u64());
    note(&script_step(addr, "POST", &format!("/v1/locks/{lock}/release"), &[], &format!(r#"{{"ticket":"{ticket}"}}"#)));
    note(&script_step(addr, "GET", "/v1/locks/no-such-lock", &[], ""));
    (seen, fences)
}

fn lock_of(base: &str) -> String {
    base.trim_start_matches("/v1/locks/").to_string()
}

#[test]
fn r14_through_a_follower_requests_behave_as_through_the_leader_and_a_long_poll_is_answered_at_grant() {
    let etcd = EtcdCluster::start();
    let cluster = Nodes::start_peered(&etcd, 3, 1);
    let leader = cluster.leader();
    let follower = (leader + 1) % 3;
    let (through_leader, leader_fences) = exercise(cluster.nodes[leader].addr, "via-leader");
    let (through_follower, follower_fences) = exercise(cluster.nodes[follower].addr, "via-follower");
    assert_eq!(through_follower, through_leader, "the same answers through a follower");
    assert_eq!(
        through_leader.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [200, 200, 200, 201, 200, 410, 409, 200, 200, 410, 404],
        "{through_leader:?}"
    );
    // One fence counter, the leader's: the follower's grants come after the leader's.
    assert!(
        follower_fences.iter().all(|f| leader_fences.iter().all(|l| f > l)),
        "{leader_fences:?} {follower_fences:?}"
    );
    // An event stream held by the follower: where the ticket stands, then its grant.
    let via = cluster.nodes[follower].addr;
    let holder = once(via, "POST", "/v1/locks/streamed/acquire", &[], r#"{"ttl_ms":30000}"#).json();
    let queued = once(via, "POST", "/v1/locks/streamed/acquire", &[], "{}");
    assert_eq!(queued.status, 202, "{}", text(&queued));
    let waiter = queued.json()["ticket"].as_str().unwrap().to_string();
    let mut events = Events::open(via, "streamed", &waiter);
    assert_eq!(events.next().1, "position");
    let release = format!(r#"{{"ticket":"{}"}}"#, holder["ticket"].as_str().unwrap());
    assert_eq!(once(via, "POST", "/v1/locks/streamed/release", &[], &release).status, 200);
    let (_, name, data) = events.next();
    assert_eq!(name, "acquired", "{data}");
    assert!(data["fence"].as_u64() > holder["fence"].as_u64(), "{data}");
    // The follower's worker dies with the stream: the leader ends it too.
    let streams = |addr| {
        let metrics = text(&once(addr, "GET", "/metrics", &[], ""));
        metrics.lines().find_map(|l| l.strip_prefix("leasehold_event_streams ")).map(str::to_string)
    };
    let leader_addr = cluster.nodes[leader].addr;
    assert_eq!(streams(leader_addr).as_deref(), Some("1"));
    for worker in cluster.nodes[follower].server.as_ref().unwrap().worker_pids() {
        crate::support::signal_pid(worker, Signal::SIGKILL);
    }
    drop(events);
    wait_for("the leader to end the dead worker's stream", || {
        let n = streams(leader_addr);
        (n.as_deref() == Some("0")).then_some(()).ok_or(n)
    });
    // A connection to the peer link without the cluster's secret is closed unheard.
    let mut stranger = std::net::TcpStream::connect(cluster.nodes[leader].peer_addr().unwrap()).unwrap();
    let hello = serde_json::json!({"node": "intruder", "secret": "not-the-secret-at-all"}).to_string();
    let mut frame = (hello.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(hello.as_bytes());
    std::io::Write::write_all(&mut stranger, &frame).unwrap();
    // Closed without a word: the first read is the end of the stream, not a byte.
    stranger.set_read_timeout(Some(crate::support::DEADLINE)).unwrap();
    let mut first = [0u8; 1];
    let read = std::io::Read::read(&mut stranger, &mut first);
    assert!(matches!(read, Ok(0)), "the stranger was told something, or kept waiting: {read:?}");
    // A stream held by the follower, of a ticket queued behind a holder.
    // (A lock of its own each try: under load the leader may change hands here, and an
    // acquire whose answer was "effect unknown" may hold the lock of the try before.)
    let addr = cluster.nodes[follower].addr;
    let mut tries = 0;
    let (survives, kept) = wait_for("a holder through the follower", || {
        tries += 1;
        let lock = format!("survives-{tries}");
        let r = once(addr, "POST", &format!("/v1/locks/{lock}/acquire"), &[], r#"{"ttl_ms":60000,"queue":"none"}"#);
        (r.status == 200).then(|| (lock, r.json())).ok_or_else(|| text(&r))
    });
    let queued = once(addr, "POST", &format!("/v1/locks/{survives}/acquire"), &[], r#"{"ttl_ms":60000}"#);
    assert_eq!(queued.status, 202, "{}", text(&queued));
    let mut survivor = Events::open(addr, &survives, queued.json()["ticket"].as_str().unwrap());
    assert_eq!(survivor.next().1, "position");
    // The leader dies: the same node serves again once another leads (its link follows the
    // new leader), with no client switching nodes.
    let mut cluster = cluster;
    cluster.nodes[leader].kill();
    // (A lock of its own each try: a try whose answer was lost may hold the one before.)
    let mut tries = 0;
    wait_for("a change through the same node after the failover", || {
        tries += 1;
        let r = once(addr, "POST", &format!("/v1/locks/after-failover-{tries}/acquire"), &[], r#"{"queue":"none"}"#);
        (r.status == 200).then_some(()).ok_or_else(|| text(&r))
    });
    // The stream survived the failover: the holder's release reaches it as the grant.
    let release = format!(r#"{{"ticket":"{}"}}"#, kept["ticket"].as_str().unwrap());
    assert_eq!(once(addr, "POST", &format!("/v1/locks/{survives}/release"), &[], &release).status, 200);
    let name = loop {
        let (_, name, _) = survivor.next();
        if name != "position" {
            break name;
        }
    };
    assert_eq!(name, "acquired", "the stream on the follower after the failover");
}

#[test]
fn a_node_s_snapshot_goes_over_the_peer_link_only_to_a_hello_with_the_secret() {
    use leasehold::config::DEFAULT_CLUSTER_PREFIX;
    use leasehold::core::lock::TableLimits;
    use leasehold::journal::replica::{self, Position, ReplicaSnapshot};
    use leasehold::journal::Snapshot;
    use leasehold::process::fetch::{FetchError, Fetcher};
    use leasehold::service::Service;

    use crate::support::nodes::PEER_SECRET;

    let etcd = EtcdCluster::start();
    let cluster = Nodes::start_peered(&etcd, 1, 1);
    let node = &cluster.nodes[0];
    let peer = node.peer_addr().unwrap().to_string();
    let asker = Fetcher::with("asker", PEER_SECRET, DEFAULT_CLUSTER_PREFIX);
    let ours = tempfile::tempdir().unwrap();
    let fetched = asker.fetch(&peer, ours.path());
    assert!(matches!(fetched, Err(FetchError::NoSnapshot { .. })), "none yet: {fetched:?}");
    // The node's snapshot, as its keeper would write it.
    let service = Service::new(TableLimits::default(), 60_000, 7);
    let position = Position { seq: 12, at_ms: 1_700_000_000_000, prefix: DEFAULT_CLUSTER_PREFIX.into() };
    let bytes = replica::encode(&ReplicaSnapshot { position, snapshot: Snapshot::new(0, service.export()) }).unwrap();
    let server = node.server.as_ref().unwrap();
    replica::write(node.data.path(), &bytes).unwrap();
    // Without the secret: closed without a byte, and nothing written.
    let stranger = Fetcher::with("stranger", "not-the-secret-at-all", DEFAULT_CLUSTER_PREFIX);
    let fetched = stranger.fetch(&peer, ours.path());
    assert!(matches!(fetched, Err(FetchError::Refused { .. })), "{fetched:?}");
    assert!(std::fs::read_dir(ours.path()).unwrap().next().is_none(), "nothing written");
    // With it: the same bytes, kept as the asker's.
    let fetched = asker.fetch(&peer, ours.path()).unwrap();
    assert_eq!(fetched.position.seq, 12);
    assert_eq!(std::fs::read(replica::path(ours.path())).unwrap(), bytes);
    server.wait_log("peer link: snapshot sent to node \"asker\"");
    // The keeper's loop goes on as before.
    assert_eq!(node.status().unwrap()["role"], "leader");
}

/// A change acknowledged to a client: its lock, ticket and fence, and when.
type Acknowledged = (String, String, u64, std::time::Instant);

#[test]
fn r14_round_robin_clients_over_every_node_lose_no_acknowledged_change_across_a_leader_kill() {
    let etcd = EtcdCluster::start();
    let mut cluster = Nodes::start_peered(&etcd, 3, 1);
    let addrs = cluster.addrs();
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged: Arc<Mutex<Vec<Acknowledged>>> = Arc::default();
    let refused: Arc<Mutex<Vec<std::time::Instant>>> = Arc::default();
    // Four clients, each sending its next change to the next node, whichever leads.
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (addrs, stop, acknowledged, refused) =
                (addrs.clone(), stop.clone(), acknowledged.clone(), refused.clone());
            std::thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let addr = addrs[(c + n) % addrs.len()];
                    let lock = format!("rr-{c}-{n}");
                    let Ok(mut client) = Client::connect(addr) else { continue };
                    let Ok(r) = client.post(&format!("/v1/locks/{lock}/acquire"), r#"{"ttl_ms":60000,"queue":"none"}"#)
                    else {
                        continue;
                    };
                    match r.status {
                        200 => {
                            let body = r.json();
                            let ticket = body["ticket"].as_str().unwrap().to_string();
                            let fence = body["fence"].as_u64().unwrap();
                            acknowledged.lock().unwrap().push((lock, ticket, fence, std::time::Instant::now()));
                        }
                        503 => {
                            refused.lock().unwrap().push(std::time::Instant::now());
                            // A client's backoff on 503, as Retry-After asks.
                            std::thread::park_timeout(Duration::from_millis(20));
                        }
                        other => panic!("{lock} through {addr}: {other} {}", text(&r)),
                    }
                }
            })
        })
        .collect();
    let count = |acknowledged: &Arc<Mutex<Vec<Acknowledged>>>| acknowledged.lock().unwrap().len();
    let before = count(&acknowledged);
    wait_for("changes through every node", || {
        (count(&acknowledged) >= before + 60).then_some(()).ok_or(count(&acknowledged))
    });
    let leader = cluster.leader();
    let killed_at = std::time::Instant::now();
    cluster.nodes[leader].kill();
    let at_kill = count(&acknowledged);
    wait_for("changes again after the failover", || {
        (count(&acknowledged) >= at_kill + 60).then_some(()).ok_or(count(&acknowledged))
    });
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("a client");
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let mut fences: Vec<u64> = acknowledged.iter().map(|(_, _, f, _)| *f).collect();
    fences.sort_unstable();
    fences.dedup();
    assert_eq!(fences.len(), acknowledged.len(), "every grant has a fence of its own");
    // Every acknowledged change is there after the failover, through any node.
    let mut reader = Follow::new(cluster.addrs(), (leader + 1) % 3);
    for (lock, ticket, fence, _) in &acknowledged {
        match reader.send("GET", &format!("/v1/locks/{lock}/tickets/{ticket}"), &[], "") {
            Outcome::Answer(r) => {
                assert_eq!(r.status, 200, "{lock}: {}", text(&r));
                assert_eq!(r.json()["fence"].as_u64(), Some(*fence), "{lock}");
            }
            Outcome::Unknown => panic!("{lock}: no answer"),
        }
    }
    // The gap clients saw, reported (a figure, not a test): the longest time without an
    // acknowledged change, and the 503s answered in the meantime.
    let mut times: Vec<std::time::Instant> = acknowledged.iter().map(|(_, _, _, at)| *at).collect();
    times.sort_unstable();
    let (gap_from, gap_to) =
        times.windows(2).map(|w| (w[0], w[1])).max_by_key(|(a, b)| *b - *a).expect("changes on both sides");
    let refusals = refused.lock().unwrap().iter().filter(|at| **at > gap_from && **at < gap_to).count();
    eprintln!(
        "round robin over 3 nodes: {} changes acknowledged; the longest time without one: {} ms (the leader was \
         killed {} ms into it), with {refusals} answers 503",
        acknowledged.len(),
        (gap_to - gap_from).as_millis(),
        killed_at.saturating_duration_since(gap_from).as_millis()
    );
}

#[test]
fn r14_a_long_poll_held_on_a_follower_keeps_its_place_when_the_leader_is_killed() {
    let etcd = EtcdCluster::start();
    let mut cluster = Nodes::start_peered(&etcd, 3, 1);
    let leader = cluster.leader();
    let via = cluster.nodes[(leader + 1) % 3].addr;
    let holder = once(via, "POST", "/v1/locks/line/acquire", &[], r#"{"ttl_ms":60000}"#).json();
    let holder = holder["ticket"].as_str().unwrap().to_string();
    let mut waiting = Client::connect(via).unwrap();
    let body = r#"{"ttl_ms":60000,"wait_ms":60000}"#;
    let request =
        format!("POST /v1/locks/line/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    waiting.send_raw(request.as_bytes()).unwrap();
    let leader_addr = cluster.nodes[leader].addr;
    wait_for("the long-poll to wait at the leader", || {
        let metrics = text(&once(leader_addr, "GET", "/metrics", &[], ""));
        let n = metrics.lines().find_map(|l| l.strip_prefix("leasehold_waiting_requests ")).map(str::to_string);
        (n.as_deref() == Some("1")).then_some(()).ok_or(n)
    });
    // Its wait is committed once every node applied the batch that holds it: then the leader
    // has told the follower where it stands (a wait killed before its commit may never have
    // been, and is answered 503, effect unknown).
    cluster.wait_in_step();
    cluster.nodes[leader].kill();
    // Answered with where it stands: its client keeps its place.
    let r = waiting.read_reply().expect("an answer when the link to the leader breaks");
    let j = r.json();
    assert_eq!((r.status, j["status"].as_str(), j["position"].as_u64()), (202, Some("queued"), Some(1)), "{j}");
    assert_eq!(r.header("Retry-After"), Some("1"));
    let ticket = j["ticket"].as_str().unwrap().to_string();
    // Under the new leader the ticket is still first in line, and gets the lock when the
    // holder lets go (asked again with its ticket, as its answer said).
    let new = cluster.leader();
    assert_ne!(new, leader);
    let status = wait_for("the ticket, through the same node under the new leader", || {
        let r = once(via, "GET", &format!("/v1/locks/line/tickets/{ticket}"), &[], "");
        (r.status == 200).then(|| r.json()).ok_or_else(|| text(&r))
    });
    assert_eq!((status["status"].as_str(), status["position"].as_u64()), (Some("queued"), Some(1)), "{status}");
    let release = once(via, "POST", "/v1/locks/line/release", &[], &format!(r#"{{"ticket":"{holder}"}}"#));
    assert_eq!(release.status, 200, "{}", text(&release));
    let again = format!(r#"{{"ticket":"{ticket}","ttl_ms":60000,"wait_ms":10000}}"#);
    let granted = once(via, "POST", "/v1/locks/line/acquire", &[], &again);
    assert_eq!((granted.status, granted.json()["ticket"].as_str()), (200, Some(ticket.as_str())), "{}", text(&granted));
}
