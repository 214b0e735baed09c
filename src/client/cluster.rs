//! The view of `leasehold status --cluster`: each listed server's answer to `GET /readyz`
//! made into one row, the rows into a table or JSON, and the answers into a verdict (one
//! node leads and every node that answered names it). Pure: the answers come in as values;
//! asking the servers is the shell's part (`mod.rs`).

use std::collections::BTreeSet;
use std::fmt;

use super::http::{ClientError, Response};

/// What one server's `GET /readyz` came to: the body of a 200 (`{"status":"ready",…}`), or
/// why the server counts as down.
pub type Readyz = Result<serde_json::Value, String>;

/// Role shown for a node that answered without a `cluster` part: a single node.
pub const SINGLE: &str = "single";

/// One row: one server of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// The URL asked, as listed.
    pub server: String,
    /// The node's name (`cluster.node_name`).
    pub node: Option<String>,
    /// `leader`, `candidate` or `follower`; [`SINGLE`] outside cluster mode; `down` when
    /// the server could not be asked or did not answer 200.
    pub role: String,
    /// The epoch of the leader it knows.
    pub epoch: Option<u64>,
    /// The last batch of the log it applied.
    pub applied: Option<u64>,
    /// Batches seen but not applied yet.
    pub lag: Option<u64>,
    /// The batch its local snapshot stands for (0: none).
    pub snapshot: Option<u64>,
    /// The leader's URL, as this node names it.
    pub leader: Option<String>,
    /// Why it is down.
    pub down: Option<String>,
}

/// Makes one server's answer (or the failure to get one) a [`Readyz`]: a 200 whose body is a
/// ready status, or the reason it is down: the server's error code (`503
/// keeper_unavailable`, `503 overloaded` while it drains), or why it could not be asked
/// (`connection refused`, `timed out`).
pub fn readyz(answer: &Result<Response, ClientError>) -> Readyz {
    match answer {
        Ok(r) if r.status == 200 => {
            let body = r.json();
            if body["status"] == "ready" {
                Ok(body)
            } else {
                Err("200 without a ready status".to_string())
            }
        }
        Ok(r) => Err(match r.json()["error"].as_str() {
            Some(code) => format!("{} {code}", r.status),
            None => r.status.to_string(),
        }),
        Err(ClientError::Unreachable { source, .. } | ClientError::Broken { source, .. }) => Err(io_reason(source)),
        Err(ClientError::Protocol { reason, .. }) => Err(format!("not HTTP: {reason}")),
        Err(ClientError::BadUrl(reason)) => Err(reason.clone()),
        Err(e @ ClientError::CaFile { .. }) => Err(e.to_string()),
    }
}

/// An I/O error in a few words: `connection refused`, not `Connection refused (os error
/// 111)`; a deadline that passed is `timed out`.
fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) {
        return "timed out".to_string();
    }
    let text = e.to_string();
    let text = match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => &text[..at],
        _ => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The row of `server` from its answer.
pub fn row(server: &str, answer: &Readyz) -> NodeRow {
    let mut row = NodeRow {
        server: server.to_string(),
        node: None,
        role: "down".to_string(),
        epoch: None,
        applied: None,
        lag: None,
        snapshot: None,
        leader: None,
        down: None,
    };
    match answer {
        Err(reason) => row.down = Some(reason.clone()),
        Ok(body) => {
            let cluster = &body["cluster"];
            if !cluster.is_object() {
                row.role = SINGLE.to_string();
                return row;
            }
            let text = |key: &str| cluster[key].as_str().filter(|s| !s.is_empty()).map(str::to_string);
            row.node = text("node");
            row.role = text("role").unwrap_or_else(|| "-".to_string());
            row.epoch = cluster["epoch"].as_u64();
            row.applied = cluster["applied"].as_u64();
            row.lag = cluster["lag"].as_u64();
            row.snapshot = cluster["snapshot"].as_u64();
            row.leader = text("leader");
        }
    }
    row
}

/// The table: a header, then one line per row in the list's order; `-` for what is not
/// known, `down (REASON)` as the role of a server that is down.
pub fn table(rows: &[NodeRow]) -> String {
    let mut lines =
        vec![["SERVER", "NODE", "ROLE", "EPOCH", "APPLIED", "LAG", "SNAPSHOT", "LEADER"].map(str::to_string)];
    let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".to_string());
    for row in rows {
        let role = match &row.down {
            Some(reason) => format!("down ({reason})"),
            None => row.role.clone(),
        };
        lines.push([
            row.server.clone(),
            or_dash(row.node.clone()),
            role,
            or_dash(row.epoch.map(|n| n.to_string())),
            or_dash(row.applied.map(|n| n.to_string())),
            or_dash(row.lag.map(|n| n.to_string())),
            or_dash(row.snapshot.map(|n| n.to_string())),
            or_dash(row.leader.clone()),
        ]);
    }
    super::aligned(&lines)
}

/// The rows as a JSON array, one object per row with every key (`null` for what is not
/// known; `down` is the reason a server is down, `null` when it answered).
pub fn json(rows: &[NodeRow]) -> serde_json::Value {
    rows.iter()
        .map(|row| {
            serde_json::json!({
                "server": row.server,
                "node": row.node,
                "role": row.role,
                "epoch": row.epoch,
                "applied": row.applied,
                "lag": row.lag,
                "snapshot": row.snapshot,
                "leader": row.leader,
                "down": row.down,
            })
        })
        .collect()
}

/// What the answers say of the cluster as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Exactly one node says it leads, and every node that answered names the same leader.
    Led {
        /// The leader's URL.
        leader: String,
    },
    /// No server answered.
    NoAnswer,
    /// A server answered as a single node, outside cluster mode.
    Single {
        /// The server.
        server: String,
    },
    /// Not exactly one node says it leads.
    Leaders {
        /// The nodes that say so (by name, or by URL when they have none).
        nodes: Vec<String>,
    },
    /// The nodes that answered do not all name the same leader.
    Split {
        /// The leaders named, each once, in the list's order (`none` for a node naming no
        /// leader).
        named: Vec<String>,
    },
}

impl Verdict {
    /// Whether the cluster is as it should be (the exit status 0 of `status --cluster`).
    pub fn is_led(&self) -> bool {
        matches!(self, Self::Led { .. })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Led { leader } => write!(f, "{leader} leads and every node that answered names it"),
            Self::NoAnswer => write!(f, "no node answered"),
            Self::Single { server } => write!(f, "{server} is a single node, not in cluster mode"),
            Self::Leaders { nodes } if nodes.is_empty() => write!(f, "no node says it leads"),
            Self::Leaders { nodes } => write!(f, "{} nodes say they lead: {}", nodes.len(), nodes.join(", ")),
            Self::Split { named } => write!(f, "the nodes name different leaders: {}", named.join(", ")),
        }
    }
}

/// The verdict on the answers of the listed servers (`(server, answer)`, in the list's
/// order). A node listed twice (by two URLs) counts once as a leader: nodes are told apart
/// by name.
pub fn verdict(answers: &[(String, Readyz)]) -> Verdict {
    let answered: Vec<(&str, &serde_json::Value)> =
        answers.iter().filter_map(|(server, answer)| Some((server.as_str(), answer.as_ref().ok()?))).collect();
    if answered.is_empty() {
        return Verdict::NoAnswer;
    }
    if let Some((server, _)) = answered.iter().find(|(_, body)| !body["cluster"].is_object()) {
        return Verdict::Single { server: server.to_string() };
    }
    let mut leaders: Vec<String> = Vec::new();
    for (server, body) in &answered {
        let cluster = &body["cluster"];
        if cluster["role"] == "leader" {
            let node = cluster["node"].as_str().unwrap_or(server).to_string();
            if !leaders.contains(&node) {
                leaders.push(node);
            }
        }
    }
    if leaders.len() != 1 {
        return Verdict::Leaders { nodes: leaders };
    }
    let mut named: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    for (_, body) in &answered {
        let leader = body["cluster"]["leader"].as_str().filter(|s| !s.is_empty()).unwrap_or("none");
        if seen.insert(leader) {
            named.push(leader.to_string());
        }
    }
    match named.as_slice() {
        [leader] if leader != "none" => Verdict::Led { leader: leader.clone() },
        _ => Verdict::Split { named },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(node: &str, role: &str, leader: &str) -> Readyz {
        Ok(serde_json::json!({"status": "ready", "cluster":
            {"node": node, "role": role, "epoch": 14, "applied": 812, "lag": 0, "snapshot": 800, "leader": leader}}))
    }

    fn answers(list: &[(&str, Readyz)]) -> Vec<(String, Readyz)> {
        list.iter().map(|(server, answer)| (server.to_string(), answer.clone())).collect()
    }

    const A: &str = "http://10.0.0.1:8080";
    const B: &str = "http://10.0.0.2:8080";
    const C: &str = "http://10.0.0.3:8080";

    #[test]
    fn the_cluster_table_lines_up_with_dashes_for_the_unknown_and_down_with_its_reason() {
        let list = answers(&[
            (A, ready("node-1", "leader", A)),
            (B, ready("node-2", "follower", A)),
            (C, Err("connection refused".into())),
            ("http://h:1", Ok(serde_json::json!({"status": "ready"}))),
        ]);
        let rows: Vec<NodeRow> = list.iter().map(|(server, answer)| row(server, answer)).collect();
        let text = table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "SERVER                NODE    ROLE                       EPOCH  APPLIED  LAG  SNAPSHOT  LEADER",
                "http://10.0.0.1:8080  node-1  leader                     14     812      0    800       http://10.0.0.1:8080",
                "http://10.0.0.2:8080  node-2  follower                   14     812      0    800       http://10.0.0.1:8080",
                "http://10.0.0.3:8080  -       down (connection refused)  -      -        -    -         -",
                "http://h:1            -       single                     -      -        -    -         -",
            ],
            "{text}"
        );
        let json = json(&rows);
        assert_eq!(json.as_array().map(Vec::len), Some(4));
        assert_eq!(json[0]["role"], "leader");
        assert_eq!(json[0]["epoch"], 14);
        assert_eq!(json[0]["down"], serde_json::Value::Null);
        assert_eq!(json[2]["role"], "down");
        assert_eq!(json[2]["down"], "connection refused");
        assert_eq!(json[2]["node"], serde_json::Value::Null);
    }

    #[test]
    fn an_answer_is_ready_only_as_a_200_with_a_ready_status() {
        let answer = |status: u16, body: &str| Ok(Response { status, body: body.as_bytes().to_vec() });
        let ok = readyz(&answer(200, r#"{"status":"ready"}"#)).unwrap();
        assert_eq!(ok["status"], "ready");
        assert_eq!(
            readyz(&answer(503, r#"{"error":"keeper_unavailable","message":"the keeper is not reachable"}"#)),
            Err("503 keeper_unavailable".to_string())
        );
        assert_eq!(readyz(&answer(404, "nope")), Err("404".to_string()));
        assert!(readyz(&answer(200, "<html>")).is_err());
        let refused = ClientError::Unreachable {
            server: A.into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(readyz(&Err(refused)), Err("connection refused".to_string()));
        let os = ClientError::Unreachable { server: A.into(), source: std::io::Error::from_raw_os_error(111) };
        assert_eq!(readyz(&Err(os)), Err("connection refused".to_string()));
        let late = ClientError::Broken {
            server: A.into(),
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "the answer did not come in time"),
        };
        assert_eq!(readyz(&Err(late)), Err("timed out".to_string()));
    }

    #[test]
    fn the_verdict_is_led_only_with_one_leader_that_every_answering_node_names() {
        let down = || Err("connection refused".to_string());
        let led =
            verdict(&answers(&[(A, ready("node-1", "leader", A)), (B, ready("node-2", "follower", A)), (C, down())]));
        assert_eq!(led, Verdict::Led { leader: A.into() });
        assert!(led.is_led());
        // The same node listed twice is one leader.
        let twice =
            verdict(&answers(&[(A, ready("node-1", "leader", A)), ("http://n1:8080", ready("node-1", "leader", A))]));
        assert!(twice.is_led(), "{twice}");

        assert_eq!(verdict(&answers(&[(A, down()), (B, down())])), Verdict::NoAnswer);
        assert_eq!(verdict(&[]), Verdict::NoAnswer);
        let none = verdict(&answers(&[(A, ready("node-1", "candidate", A)), (B, ready("node-2", "follower", A))]));
        assert_eq!(none, Verdict::Leaders { nodes: vec![] });
        assert_eq!(none.to_string(), "no node says it leads");
        let two = verdict(&answers(&[(A, ready("node-1", "leader", A)), (B, ready("node-2", "leader", B))]));
        assert_eq!(two.to_string(), "2 nodes say they lead: node-1, node-2");
        let split = verdict(&answers(&[
            (A, ready("node-1", "leader", A)),
            (B, ready("node-2", "follower", B)),
            (C, ready("node-3", "follower", "")),
        ]));
        assert_eq!(split, Verdict::Split { named: vec![A.into(), B.into(), "none".into()] });
        let single =
            verdict(&answers(&[(A, ready("node-1", "leader", A)), (B, Ok(serde_json::json!({"status": "ready"})))]));
        assert_eq!(single.to_string(), format!("{B} is a single node, not in cluster mode"));
        assert!(!single.is_led() && !split.is_led() && !two.is_led());
    }
}
