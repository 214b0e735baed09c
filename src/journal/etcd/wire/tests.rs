//! Tests of the etcd link's wire: request bodies byte for byte, every answer shape etcd
//! 3.4's gateway sends (docs/cluster.md, "What the gateway does"; the bodies below are
//! etcd's, with the `cluster_id`/`member_id` values shortened), HTTP decoding in any split,
//! and hostile answers, which must give errors and never panics or unbounded buffers.

use super::*;

const HEADER: &str = r#""header":{"cluster_id":"1926853385383826423","member_id":"1768464600913749285""#;

fn header(revision: u64) -> String {
    format!(r#"{HEADER},"revision":"{revision}","raft_term":"2"}}"#)
}

/// `bytes` as chunks of `size` bytes (the last may be shorter), chunked-encoded.
fn chunked(bytes: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in bytes.chunks(size.max(1)) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A deterministic sequence of piece sizes from `seed` (1 to 40 bytes).
fn splits(seed: u64) -> impl Iterator<Item = usize> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    std::iter::from_fn(move || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        Some(1 + (x >> 33) as usize % 40)
    })
}

/// Feeds `bytes` to a unary reader in pieces of the given sizes; the reply, or the error.
fn read_unary(bytes: &[u8], mut sizes: impl Iterator<Item = usize>) -> Result<Reply, EtcdError> {
    let mut reader = Reader::unary();
    let mut body = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
        reader.push(&rest[..n], &mut body)?;
        rest = &rest[n..];
    }
    if !reader.is_done() {
        reader.eof()?;
    }
    Ok(Reply::of(&reader, body).expect("a finished answer"))
}

fn whole(bytes: &[u8]) -> Result<Reply, EtcdError> {
    read_unary(bytes, std::iter::empty())
}

// --- keys ---------------------------------------------------------------------------------

#[test]
fn keys_follow_the_documented_layout() {
    assert_eq!(leader_key("/leasehold"), "/leasehold/leader");
    assert_eq!(log_prefix("/leasehold"), "/leasehold/log/");
    assert_eq!(log_key("/leasehold", 1), "/leasehold/log/00000000000000000001");
    assert_eq!(log_key("/lh", u64::MAX), "/lh/log/18446744073709551615");
    assert_eq!(nodes_prefix("/leasehold"), "/leasehold/nodes/");
    assert_eq!(node_key("/leasehold", "node-a"), "/leasehold/nodes/node-a");
    assert!(node_key("/lh", "a").starts_with(&nodes_prefix("/lh")));
    assert_eq!(seq_of("/lh", node_key("/lh", "00000000000000000001").as_bytes()), None);
    for seq in [1, 42, 1_000_000, u64::MAX] {
        assert_eq!(seq_of("/lh", log_key("/lh", seq).as_bytes()), Some(seq));
    }
}

#[test]
fn seq_of_a_key_that_is_not_a_batch_is_none() {
    for key in [
        &b"/lh/leader"[..],
        b"/other/log/00000000000000000001",
        b"/lh/log/0000000000000000001",
        b"/lh/log/000000000000000000001",
        b"/lh/log/0000000000000000000x",
        b"/lh/log/99999999999999999999",
        b"/lh/log/-0000000000000000001",
        b"/lh/log/",
        b"",
    ] {
        assert_eq!(seq_of("/lh", key), None, "{}", String::from_utf8_lossy(key));
    }
}

#[test]
fn prefix_end_raises_the_last_byte() {
    assert_eq!(prefix_end(b"lh/log/"), b"lh/log0");
    assert_eq!(prefix_end(b"a\xff"), b"b");
    assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    assert_eq!(prefix_end(b""), b"\0");
}

#[test]
fn base64_is_standard_with_padding() {
    assert_eq!(b64(b"lh/x"), "bGgveA==");
    assert_eq!(b64(b"lh/leader"), "bGgvbGVhZGVy");
    assert_eq!(unb64("bm9kZS1h", "v").unwrap(), b"node-a");
    for bad in ["bGgveA", "b!==", "bGgveA==x", "===="] {
        assert!(matches!(unb64(bad, "v"), Err(EtcdError::Malformed { .. })), "{bad}");
    }
}

// --- request bodies -----------------------------------------------------------------------

#[test]
fn lease_bodies_send_int64s_as_strings() {
    assert_eq!(grant_body(3), r#"{"TTL":"3"}"#);
    assert_eq!(lease_body(LeaseId(2676723805212891397)), r#"{"ID":"2676723805212891397"}"#);
}

#[test]
fn campaign_body_creates_the_leader_key_under_the_lease_or_reads_it() {
    let body = campaign_body("lh/leader", b"node-a", LeaseId(2676723805212891408));
    assert_eq!(
        body,
        r#"{"compare":[{"key":"bGgvbGVhZGVy","target":"CREATE","result":"EQUAL","create_revision":"0"}],"success":[{"request_put":{"key":"bGgvbGVhZGVy","value":"bm9kZS1h","lease":"2676723805212891408"}}],"failure":[{"request_range":{"key":"bGgvbGVhZGVy"}}]}"#
    );
    let _: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
}

#[test]
fn put_batch_body_guards_on_epoch_and_absence_and_reads_both_on_failure() {
    let body = put_batch_body("lh/log/00000000000000000001", "lh/leader", 2, b"turn-1");
    assert_eq!(
        body,
        concat!(
            r#"{"compare":[{"key":"bGgvbGVhZGVy","target":"CREATE","result":"EQUAL","create_revision":"2"},"#,
            r#"{"key":"bGgvbG9nLzAwMDAwMDAwMDAwMDAwMDAwMDAx","target":"CREATE","result":"EQUAL","create_revision":"0"}],"#,
            r#""success":[{"request_put":{"key":"bGgvbG9nLzAwMDAwMDAwMDAwMDAwMDAwMDAx","value":"dHVybi0x"}}],"#,
            r#""failure":[{"request_range":{"key":"bGgvbGVhZGVy"}},{"request_range":{"key":"bGgvbG9nLzAwMDAwMDAwMDAwMDAwMDAwMDAx"}}]}"#
        )
    );
    // The pitfall of the gateway: a compare's value field must be named after its target,
    // or the compare silently tests 0.
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    for compare in json["compare"].as_array().unwrap() {
        assert_eq!(compare["target"], "CREATE");
        assert!(compare["create_revision"].is_string() && compare.get("version").is_none());
    }
}

#[test]
#[should_panic(expected = "never 0")]
fn put_batch_body_refuses_epoch_zero() {
    put_batch_body("lh/log/00000000000000000001", "lh/leader", 0, b"x");
}

#[test]
fn delete_if_epoch_body_compares_the_create_revision() {
    assert_eq!(
        delete_if_epoch_body("lh/leader", 7),
        r#"{"compare":[{"key":"bGgvbGVhZGVy","target":"CREATE","result":"EQUAL","create_revision":"7"}],"success":[{"request_delete_range":{"key":"bGgvbGVhZGVy"}}]}"#
    );
}

#[test]
fn put_body_puts_under_the_lease() {
    assert_eq!(
        put_body("lh/nodes/a", b"{}", LeaseId(2676723805212891408)),
        r#"{"key":"bGgvbm9kZXMvYQ==","value":"e30=","lease":"2676723805212891408"}"#
    );
}

#[test]
fn trim_log_body_deletes_below_the_bound_under_the_epoch() {
    let body = trim_log_body("lh", "lh/leader", 7, 3);
    assert_eq!(
        body,
        concat!(
            r#"{"compare":[{"key":"bGgvbGVhZGVy","target":"CREATE","result":"EQUAL","create_revision":"7"}],"#,
            r#""success":[{"request_delete_range":{"key":"bGgvbG9nLw==","range_end":"bGgvbG9nLzAwMDAwMDAwMDAwMDAwMDAwMDAz"}}]}"#
        )
    );
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let range = &json["success"][0]["request_delete_range"];
    assert_eq!(BASE64.decode(range["key"].as_str().unwrap()).unwrap(), b"lh/log/");
    assert_eq!(BASE64.decode(range["range_end"].as_str().unwrap()).unwrap(), log_key("lh", 3).as_bytes());
    // Every batch key below the bound is in the range, and none from it on.
    let inside = |key: &str| key.as_bytes() >= &b"lh/log/"[..] && key < log_key("lh", 3).as_str();
    assert!(inside(&log_key("lh", 1)) && inside(&log_key("lh", 2)));
    assert!(!inside(&log_key("lh", 3)) && !inside(&log_key("lh", 10)) && !inside("lh/leader"));
}

#[test]
#[should_panic(expected = "never 0")]
fn trim_log_body_refuses_epoch_zero() {
    trim_log_body("lh", "lh/leader", 0, 3);
}

#[test]
#[should_panic(expected = "from 1")]
fn trim_log_body_refuses_below_zero() {
    trim_log_body("lh", "lh/leader", 7, 0);
}

#[test]
fn compaction_and_edge_bodies() {
    assert_eq!(compaction_body(12), r#"{"revision":"12"}"#);
    assert_eq!(
        edge_body(b"lh/log/", &prefix_end(b"lh/log/"), Edge::First, 0),
        r#"{"key":"bGgvbG9nLw==","range_end":"bGgvbG9nMA==","limit":"1","keys_only":true}"#
    );
    assert_eq!(
        edge_body(b"lh/log/", b"lh/log0", Edge::Last, 12),
        r#"{"key":"bGgvbG9nLw==","range_end":"bGgvbG9nMA==","limit":"1","keys_only":true,"sort_order":"DESCEND","sort_target":"KEY","revision":"12"}"#
    );
}

#[test]
fn range_and_watch_bodies() {
    assert_eq!(range_body(b"lh/leader", None, 0, 0), r#"{"key":"bGgvbGVhZGVy"}"#);
    assert_eq!(
        range_body(b"lh/log/", Some(&prefix_end(b"lh/log/")), 2, 0),
        r#"{"key":"bGgvbG9nLw==","range_end":"bGgvbG9nMA==","limit":"2"}"#
    );
    assert_eq!(
        range_body(b"lh/log/", Some(b"lh/log0"), 256, 12),
        r#"{"key":"bGgvbG9nLw==","range_end":"bGgvbG9nMA==","limit":"256","revision":"12"}"#
    );
    assert_eq!(
        watch_body("lh/log/", 11),
        r#"{"create_request":{"key":"bGgvbG9nLw==","range_end":"bGgvbG9nMA==","start_revision":"11"}}"#
    );
    assert_eq!(watch_body("lh/log/", 0), r#"{"create_request":{"key":"bGgvbG9nLw==","range_end":"bGgvbG9nMA=="}}"#);
}

#[test]
fn grpc_timeout_is_in_milliseconds_within_eight_digits() {
    assert_eq!(grpc_timeout(1000), "1000m");
    assert_eq!(grpc_timeout(99_999_999), "99999999m");
    assert_eq!(grpc_timeout(100_000_000), "100000S");
    assert_eq!(grpc_timeout(u64::MAX), "99999999S");
}

#[test]
fn request_head_carries_length_host_and_extra_headers() {
    let head = request_head(path::TXN, "127.0.0.1:2379", 42, &[("Grpc-Timeout", "1000m")]);
    assert!(head.starts_with("POST /v3/kv/txn HTTP/1.1\r\nHost: 127.0.0.1:2379\r\n"), "{head}");
    assert!(head.contains("\r\nContent-Length: 42\r\n") && head.contains("\r\nGrpc-Timeout: 1000m\r\n"));
    assert!(head.ends_with("\r\n\r\n"));
}

#[test]
fn endpoints_are_plain_http_host_and_port() {
    let e = parse_endpoint("http://127.0.0.1:2379").unwrap();
    assert_eq!((e.host.as_str(), e.port, e.authority.as_str()), ("127.0.0.1", 2379, "127.0.0.1:2379"));
    let e = parse_endpoint("http://[::1]:2379").unwrap();
    assert_eq!((e.host.as_str(), e.port, e.authority.as_str()), ("::1", 2379, "[::1]:2379"));
    for bad in ["https://h:2379", "h:2379", "http://h", "http://:1", "http://h:99999", "http://a@h:1", "http://::1:2"] {
        assert!(matches!(parse_endpoint(bad), Err(EtcdError::BadEndpoint { .. })), "{bad}");
    }
}

// --- answers ------------------------------------------------------------------------------

#[test]
fn a_grant_gives_the_lease_id() {
    let body = format!(r#"{{{},"ID":"2676723805212891397","TTL":"10"}}"#, header(1));
    assert_eq!(parse_grant(body.as_bytes()).unwrap(), LeaseId(2676723805212891397));
    let no_id = format!(r#"{{{},"TTL":"10"}}"#, header(1));
    assert!(matches!(parse_grant(no_id.as_bytes()), Err(EtcdError::Malformed { .. })));
}

#[test]
fn a_keepalive_gives_the_ttl_or_none_when_the_lease_is_gone() {
    let live = format!("{{\"result\":{{{},\"ID\":\"2676723805212891402\",\"TTL\":\"10\"}}}}\n", header(4));
    assert_eq!(parse_keepalive(live.as_bytes()).unwrap(), Some(10));
    // etcd leaves out a zero TTL: the lease is unknown, expired or revoked.
    let gone = format!("{{\"result\":{{{},\"ID\":\"123\"}}}}\n", header(4));
    assert_eq!(parse_keepalive(gone.as_bytes()).unwrap(), None);
    let negative = format!("{{\"result\":{{{},\"ID\":\"123\",\"TTL\":\"-1\"}}}}", header(4));
    assert_eq!(parse_keepalive(negative.as_bytes()).unwrap(), None);
    let no_leader = br#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#;
    let e = parse_keepalive(no_leader).unwrap_err();
    assert!(matches!(&e, EtcdError::Unavailable { reason, .. } if reason.contains("no leader")), "{e}");
}

fn failed_txn(ranges: &[&str]) -> String {
    let responses: Vec<String> =
        ranges.iter().map(|r| format!(r#"{{"response_range":{{"header":{{"revision":"7"}}{r}}}}}"#)).collect();
    // Compare failed: `succeeded` is absent (zero values are left out).
    format!(r#"{{{},"responses":[{}]}}"#, header(7), responses.join(","))
}

const LEADER_KV: &str = r#","kvs":[{"key":"bGgvbGVhZGVy","create_revision":"2","mod_revision":"2","version":"1","value":"bm9kZS1h","lease":"2676723805212891408"}],"count":"1""#;

#[test]
fn a_campaign_is_won_at_the_txn_revision() {
    let body = format!(
        r#"{{{},"succeeded":true,"responses":[{{"response_put":{{"header":{{"revision":"2"}}}}}}]}}"#,
        header(2)
    );
    assert_eq!(parse_campaign(body.as_bytes(), LeaseId(9)).unwrap(), Campaign::Won { epoch: 2 });
}

#[test]
fn a_campaign_is_held_by_the_key_found_or_won_if_it_is_under_our_lease() {
    let body = failed_txn(&[LEADER_KV]);
    assert_eq!(
        parse_campaign(body.as_bytes(), LeaseId(9)).unwrap(),
        Campaign::Held { value: b"node-a".to_vec(), epoch: 2 }
    );
    // An earlier send of this very campaign won; its answer was lost.
    assert_eq!(parse_campaign(body.as_bytes(), LeaseId(2676723805212891408)).unwrap(), Campaign::Won { epoch: 2 });
    // A failed compare on absence with no key found cannot be.
    assert!(matches!(parse_campaign(failed_txn(&[""]).as_bytes(), LeaseId(9)), Err(EtcdError::Malformed { .. })));
    assert!(matches!(parse_campaign(failed_txn(&[]).as_bytes(), LeaseId(9)), Err(EtcdError::Malformed { .. })));
}

const BATCH_KV: &str = r#","kvs":[{"key":"bGgvbG9nLzAwMDAwMDAwMDAwMDAwMDAwMDAx","create_revision":"7","mod_revision":"7","version":"1","value":"dHVybi0x"}],"count":"1""#;

#[test]
fn a_put_is_committed_or_refused_with_what_its_compare_found() {
    let ok = format!(
        r#"{{{},"succeeded":true,"responses":[{{"response_put":{{"header":{{"revision":"7"}}}}}}]}}"#,
        header(7)
    );
    assert_eq!(parse_put_batch(ok.as_bytes(), b"turn-1").unwrap(), Put::Committed);
    let found = failed_txn(&[LEADER_KV, BATCH_KV]);
    // Our own batch is there: an earlier try went through.
    assert_eq!(parse_put_batch(found.as_bytes(), b"turn-1").unwrap(), Put::Committed);
    let leader = Holder { value: b"node-a".to_vec(), epoch: 2, lease: Some(LeaseId(2676723805212891408)) };
    assert_eq!(
        parse_put_batch(found.as_bytes(), b"turn-2").unwrap(),
        Put::Refused { at_seq: Some(b"turn-1".to_vec()), leader: Some(leader.clone()) }
    );
    // A stale epoch, the place free: refused, naming who leads.
    assert_eq!(
        parse_put_batch(failed_txn(&[LEADER_KV, ""]).as_bytes(), b"turn-2").unwrap(),
        Put::Refused { at_seq: None, leader: Some(leader) }
    );
    // No leader at all.
    assert_eq!(
        parse_put_batch(failed_txn(&["", ""]).as_bytes(), b"x").unwrap(),
        Put::Refused { at_seq: None, leader: None }
    );
    assert!(matches!(parse_put_batch(failed_txn(&[LEADER_KV]).as_bytes(), b"x"), Err(EtcdError::Malformed { .. })));
}

#[test]
fn settle_put_commits_only_our_exact_bytes() {
    assert_eq!(settle_put(b"ab", Some(b"ab".to_vec()), None), Put::Committed);
    assert_eq!(
        settle_put(b"ab", Some(b"abc".to_vec()), None),
        Put::Refused { at_seq: Some(b"abc".to_vec()), leader: None }
    );
    assert_eq!(settle_put(b"", None, None), Put::Refused { at_seq: None, leader: None });
}

#[test]
fn a_conditional_delete_says_whether_it_deleted() {
    let ok = format!(
        r#"{{{},"succeeded":true,"responses":[{{"response_delete_range":{{"header":{{"revision":"9"}},"deleted":"1"}}}}]}}"#,
        header(9)
    );
    assert!(parse_delete_if_epoch(ok.as_bytes()).unwrap());
    assert!(!parse_delete_if_epoch(format!("{{{}}}", header(8)).as_bytes()).unwrap());
}

#[test]
fn a_trim_is_done_at_the_txn_revision_or_refused() {
    // etcd 3.4's answers.
    let done = format!(
        r#"{{{},"succeeded":true,"responses":[{{"response_delete_range":{{"header":{{"revision":"8"}},"deleted":"2"}}}}]}}"#,
        header(8)
    );
    assert_eq!(parse_trim(done.as_bytes()).unwrap(), Trim::Done { revision: 8, deleted: 2 });
    // Nothing left to delete: `deleted` is left out.
    let none = format!(
        r#"{{{},"succeeded":true,"responses":[{{"response_delete_range":{{"header":{{"revision":"9"}}}}}}]}}"#,
        header(9)
    );
    assert_eq!(parse_trim(none.as_bytes()).unwrap(), Trim::Done { revision: 9, deleted: 0 });
    assert_eq!(parse_trim(format!("{{{}}}", header(8)).as_bytes()).unwrap(), Trim::Refused);
    assert!(matches!(parse_trim(br#"{"succeeded":true}"#), Err(EtcdError::Malformed { .. })));
    assert!(matches!(parse_trim(b"[]"), Err(EtcdError::Malformed { .. })));
}

#[test]
fn a_put_and_a_compaction_are_answered_by_a_header() {
    let answer = format!("{{{}}}", header(5));
    assert_eq!(parse_put(answer.as_bytes()).unwrap(), 5);
    assert!(matches!(parse_put(b"{}"), Err(EtcdError::Malformed { .. })));
    parse_compaction(answer.as_bytes()).unwrap();
    assert!(matches!(parse_compaction(b"nope"), Err(EtcdError::Malformed { .. })));
}

#[test]
fn a_compaction_at_a_compacted_revision_is_done_and_at_a_future_one_is_refused() {
    let compacted = br#"{"error":"etcdserver: mvcc: required revision has been compacted","message":"etcdserver: mvcc: required revision has been compacted","code":11}"#;
    let future = br#"{"error":"etcdserver: mvcc: required revision is a future revision","message":"etcdserver: mvcc: required revision is a future revision","code":11}"#;
    assert!(already_compacted(&refusal(400, compacted)));
    assert!(!already_compacted(&refusal(400, future)));
    assert!(!already_compacted(&EtcdError::unavailable("required revision has been compacted")));
}

#[test]
fn an_edge_read_gives_the_batch_found_or_0() {
    // etcd 3.4's answer to a keys-only read: no value.
    let found = format!(
        r#"{{{},"kvs":[{{"key":"bGgvbG9nLzAwMDAwMDAwMDAwMDAwMDAwMDAz","create_revision":"4","mod_revision":"4","version":"1"}}],"more":true,"count":"3"}}"#,
        header(8)
    );
    let range = parse_range(found.as_bytes()).unwrap();
    assert_eq!((edge_seq("lh", &range).unwrap(), range.revision), (3, 8));
    let empty = parse_range(format!("{{{}}}", header(8)).as_bytes()).unwrap();
    assert_eq!(edge_seq("lh", &empty).unwrap(), 0);
    let foreign = format!(r#"{{{},"kvs":[{{"key":"bGgvbG9nL2p1bms="}}]}}"#, header(8));
    assert!(matches!(edge_seq("lh", &parse_range(foreign.as_bytes()).unwrap()), Err(EtcdError::Malformed { .. })));
}

#[test]
fn a_log_read_is_trimmed_when_the_log_starts_past_the_batch_asked_for() {
    let read = |first| LogRead { batches: Vec::new(), revision: 8, more: false, first };
    assert!(read(3).trimmed(1) && read(3).trimmed(2) && read(3).trimmed(0));
    assert!(!read(3).trimmed(3) && !read(3).trimmed(4) && !read(3).trimmed(100));
    // An empty log, or one never trimmed, has nothing trimmed.
    assert!(!read(0).trimmed(0) && !read(0).trimmed(1) && !read(0).trimmed(9));
    assert!(!read(1).trimmed(0) && !read(1).trimmed(1));
}

#[test]
fn a_range_reads_kvs_more_and_revision_and_defaults_missing_fields() {
    let body = format!(
        r#"{{{},"kvs":[{{"key":"bGgvbG9nLzAwMDAwMDAwMDAwMDAwMDAwMDAx","create_revision":"7","mod_revision":"7","version":"1","value":"dHVybi0x"}},{{"key":"bGgvbG9nLzAwMDAwMDAwMDAwMDAwMDAwMDAy","create_revision":"8","mod_revision":8,"version":"1","value":"dHVybi0y"}}],"more":true,"count":"3"}}"#,
        header(12)
    );
    let range = parse_range(body.as_bytes()).unwrap();
    assert_eq!(range.revision, 12);
    assert!(range.more);
    assert_eq!(range.kvs.len(), 2);
    assert_eq!(
        (range.kvs[1].value.as_slice(), range.kvs[1].mod_revision, range.kvs[1].lease),
        (&b"turn-2"[..], 8, None)
    );
    assert_eq!(log_page("lh", range.kvs, 1).unwrap(), vec![(1, b"turn-1".to_vec()), (2, b"turn-2".to_vec())]);
    // Absent key: no kvs, no count.
    let empty = parse_range(format!("{{{}}}", header(4)).as_bytes()).unwrap();
    assert_eq!((empty.kvs.len(), empty.more, empty.revision), (0, false, 4));
    assert_eq!(parse_leader(format!("{{{}}}", header(4)).as_bytes()).unwrap(), None);
    assert_eq!(
        parse_leader(format!("{{{}{LEADER_KV}}}", header(4)).as_bytes()).unwrap(),
        Some(Holder { value: b"node-a".to_vec(), epoch: 2, lease: Some(LeaseId(2676723805212891408)) })
    );
    assert_eq!(parse_leader_at(format!("{{{}}}", header(4)).as_bytes()).unwrap(), (None, 4));
    assert!(matches!(parse_leader_at(b"{}"), Err(EtcdError::Malformed { .. })));
}

#[test]
fn a_log_page_refuses_foreign_keys_and_disorder() {
    let kv = |key: &str| Kv { key: key.into(), value: b"v".to_vec(), create_revision: 1, mod_revision: 1, lease: None };
    assert!(matches!(log_page("lh", vec![kv("lh/log/junk")], 1), Err(EtcdError::Malformed { .. })));
    let two = vec![kv(&log_key("lh", 3)), kv(&log_key("lh", 2))];
    assert!(matches!(log_page("lh", two, 1), Err(EtcdError::Malformed { .. })));
    let twice = vec![kv(&log_key("lh", 3)), kv(&log_key("lh", 3))];
    assert!(matches!(log_page("lh", twice, 1), Err(EtcdError::Malformed { .. })));
    assert!(matches!(log_page("lh", vec![kv(&log_key("lh", 1))], 2), Err(EtcdError::Malformed { .. })));
    // A page that starts past where it was asked from (a log trimmed, or ending before
    // it) is no disorder.
    let later = vec![kv(&log_key("lh", 5)), kv(&log_key("lh", 6))];
    assert_eq!(log_page("lh", later, 2).unwrap().iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![5, 6]);
}

#[test]
fn bad_integers_and_bad_base64_are_malformed() {
    for bad in [
        r#"{"header":{"revision":"7x"}}"#,
        r#"{"header":{"revision":""}}"#,
        r#"{"header":{"revision":"-3"}}"#,
        r#"{"header":{"revision":"99999999999999999999"}}"#,
        r#"{"header":{"revision":1.5}}"#,
        r#"{"header":{"revision":null}}"#,
        r#"{"header":{"revision":"4"},"kvs":[{"key":"!!!","value":""}]}"#,
        r#"{"header":{"revision":"4"},"kvs":[{"key":"bGg=","value":"bGg"}]}"#,
        r#"{"header":{"revision":"4"},"kvs":{}}"#,
        r#"{"header":{"revision":"4"}"#,
        "",
        "[]",
    ] {
        assert!(matches!(parse_range(bad.as_bytes()), Err(EtcdError::Malformed { .. })), "{bad}");
    }
    assert!(matches!(parse_range(br#"{"header":{}}"#), Err(EtcdError::Malformed { .. })));
}

#[test]
fn error_answers_are_refusals_or_unavailability_with_etcds_message() {
    let lease = br#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#;
    match refusal(404, lease) {
        EtcdError::Http { status: 404, code: Some(5), message, .. } => {
            assert_eq!(message, "etcdserver: requested lease not found")
        }
        other => panic!("{other:?}"),
    }
    let compacted = br#"{"error":"etcdserver: mvcc: required revision has been compacted","message":"etcdserver: mvcc: required revision has been compacted","code":11}"#;
    assert!(matches!(refusal(400, compacted), EtcdError::Http { status: 400, code: Some(11), .. }));
    for (status, body) in [
        (504, &br#"{"error":"context deadline exceeded","message":"context deadline exceeded","code":4}"#[..]),
        (500, br#"{"error":"context deadline exceeded","message":"context deadline exceeded","code":2}"#),
        (503, br#"{"error":"etcdserver: request timed out","message":"etcdserver: request timed out","code":14}"#),
        (503, br#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#),
        (502, b"<html>bad gateway</html>"),
        (500, b""),
    ] {
        let e = refusal(status, body);
        assert!(matches!(e, EtcdError::Unavailable { .. }), "{status}: {e:?}");
        assert!(e.outcome_unknown());
    }
    let e = refusal(400, &[b'x'; 10_000]);
    assert!(matches!(&e, EtcdError::Http { message, .. } if message.len() < 300), "{e:?}");
    assert!(!e.outcome_unknown());
    assert_eq!(
        refusal(404, lease).at("http://127.0.0.1:2379").to_string(),
        "etcd at http://127.0.0.1:2379 refused the request: 404 etcdserver: requested lease not found (code 5)"
    );
}

// --- HTTP decoding ------------------------------------------------------------------------

const UNARY: &str = "HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nContent-Type: application/json\r\n\
     Grpc-Metadata-Content-Type: application/grpc\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-Length: 13\r\n\r\n\
     {\"header\":{}}";

#[test]
fn a_content_length_answer_reads_the_same_in_any_split() {
    let reply = whole(UNARY.as_bytes()).unwrap();
    assert_eq!((reply.status, reply.body.as_slice(), reply.keep_alive), (200, &b"{\"header\":{}}"[..], true));
    for seed in 0..50 {
        assert_eq!(read_unary(UNARY.as_bytes(), splits(seed)).unwrap(), reply, "seed {seed}");
    }
    assert_eq!(read_unary(UNARY.as_bytes(), std::iter::repeat(1)).unwrap(), reply);
}

/// etcd's unary error answer: chunked, with a trailer (docs/cluster.md).
fn lease_not_found() -> Vec<u8> {
    let body = br#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#;
    let mut bytes =
        b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nTrailer: Grpc-Trailer-Content-Type\r\n\
          Date: Mon, 01 Jan 2024 00:00:00 GMT\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    bytes.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
    bytes.extend_from_slice(body);
    bytes.extend_from_slice(b"\r\n0\r\nGrpc-Trailer-Content-Type: application/grpc\r\n\r\n");
    bytes
}

#[test]
fn a_chunked_answer_with_a_trailer_reads_whole_in_any_split() {
    let bytes = lease_not_found();
    assert!(bytes.starts_with(b"HTTP/1.1 404") && String::from_utf8_lossy(&bytes).contains("\r\n6c\r\n"));
    let reply = whole(&bytes).unwrap();
    assert_eq!(reply.status, 404);
    assert!(reply.keep_alive);
    assert!(matches!(reply.clone().ok(), Err(EtcdError::Http { status: 404, code: Some(5), .. })));
    for seed in 0..50 {
        assert_eq!(read_unary(&bytes, splits(seed)).unwrap(), reply, "seed {seed}");
    }
    // Chunk extensions and a body in many chunks.
    let mut many = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    many.extend_from_slice(&chunked(b"{\"header\":{}}\n", 3));
    many.extend_from_slice(b"0;ext=1\r\n\r\n");
    assert_eq!(whole(&many).unwrap().body, b"{\"header\":{}}\n");
}

#[test]
fn a_closing_or_overfull_connection_is_not_kept_alive() {
    let close = UNARY.replace("Content-Length: 13", "Connection: close\r\nContent-Length: 13");
    assert!(!whole(close.as_bytes()).unwrap().keep_alive);
    let extra = format!("{UNARY}HTTP/1.1 200 OK\r\n");
    assert!(!whole(extra.as_bytes()).unwrap().keep_alive);
    // No length at all: the body ends with the connection.
    let until_close = whole(b"HTTP/1.1 200 OK\r\n\r\n{\"a\":1}").unwrap();
    assert_eq!((until_close.body.as_slice(), until_close.keep_alive), (&b"{\"a\":1}"[..], false));
}

#[test]
fn hostile_lengths_are_refused_before_anything_is_buffered() {
    let huge = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", MAX_RESPONSE_BYTES + 1);
    assert!(matches!(whole(huge.as_bytes()), Err(EtcdError::TooLarge { .. })));
    let overflow = "HTTP/1.1 200 OK\r\nContent-Length: 184467440737095516160\r\n\r\n";
    assert!(matches!(whole(overflow.as_bytes()), Err(EtcdError::Malformed { .. } | EtcdError::TooLarge { .. })));
    let chunk = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffffffff\r\n";
    assert!(matches!(whole(chunk.as_bytes()), Err(EtcdError::TooLarge { .. })));
    let big_chunk = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n", MAX_RESPONSE_BYTES + 1);
    assert!(matches!(whole(big_chunk.as_bytes()), Err(EtcdError::TooLarge { .. })));
    // Many chunks adding up past the limit (a small limit, so the test stays small).
    let mut reader = Reader::new(Some(10));
    let mut body = Vec::new();
    reader.push(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", &mut body).unwrap();
    reader.push(b"6\r\nabcdef\r\n", &mut body).unwrap();
    assert!(matches!(reader.push(b"6\r\nabcdef\r\n", &mut body), Err(EtcdError::TooLarge { max_bytes: 10, .. })));
}

#[test]
fn malformed_answers_are_errors_not_panics() {
    let cases: &[&[u8]] = &[
        b"garbage\r\n\r\n",
        b"HTTP/1.1 999 What\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
    ];
    for case in cases {
        let got = whole(case);
        assert!(matches!(got, Err(EtcdError::Malformed { .. })), "{}: {got:?}", String::from_utf8_lossy(case));
    }
    let mut long_head = b"HTTP/1.1 200 OK\r\n".to_vec();
    while long_head.len() <= MAX_HEAD_BYTES {
        long_head.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    assert!(matches!(whole(&long_head), Err(EtcdError::Malformed { .. })));
    let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "X: y\r\n".repeat(MAX_HEADERS + 1));
    assert!(matches!(whole(many.as_bytes()), Err(EtcdError::Malformed { .. })));
    let size_line =
        format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;{}", "e".repeat(MAX_CHUNK_LINE_BYTES));
    assert!(matches!(whole(size_line.as_bytes()), Err(EtcdError::Malformed { .. })));
    let trailer =
        format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n{}", "T: v\r\n".repeat(MAX_HEAD_BYTES));
    assert!(matches!(whole(trailer.as_bytes()), Err(EtcdError::Malformed { .. })));
}

#[test]
fn an_answer_cut_short_means_unavailable() {
    for cut in [
        &b""[..],
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{\"hea",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6c\r\n{\"error\"",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nGrpc-Trailer-Content-Type: applic",
    ] {
        let got = whole(cut);
        assert!(matches!(got, Err(EtcdError::Unavailable { .. })), "{}: {got:?}", String::from_utf8_lossy(cut));
    }
    let mut reader = Reader::unary();
    assert!(!reader.started());
    reader.push(b"H", &mut Vec::new()).unwrap();
    assert!(reader.started());
}

// --- watch streams ------------------------------------------------------------------------

const WATCH_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
    Grpc-Metadata-Content-Type: application/grpc\r\nTransfer-Encoding: chunked\r\n\r\n";

fn created(revision: u64) -> String {
    format!("{{\"result\":{{{},\"created\":true}}}}\n", header(revision))
}

fn put_event(seq: u64, value: &[u8], revision: u64) -> String {
    format!(
        r#"{{"kv":{{"key":"{}","create_revision":"{revision}","mod_revision":"{revision}","version":"1","value":"{}"}}}}"#,
        b64(log_key("lh", seq).as_bytes()),
        b64(value)
    )
}

fn events_line(revision: u64, events: &[String]) -> String {
    format!("{{\"result\":{{{},\"events\":[{}]}}}}\n", header(revision), events.join(","))
}

/// Feeds `bytes` to a watch decoder in pieces; the events and the error, if any.
fn read_watch(bytes: &[u8], mut sizes: impl Iterator<Item = usize>, eof: bool) -> (Vec<WatchEvent>, Option<EtcdError>) {
    let mut stream = WatchStream::new();
    let mut out = VecDeque::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
        if let Err(e) = stream.push(&rest[..n], &mut out) {
            return (out.into(), Some(e));
        }
        rest = &rest[n..];
    }
    let error = eof.then(|| stream.eof(&mut out));
    (out.into(), error)
}

#[test]
fn a_watch_is_framed_by_newline_not_by_chunk() {
    let big = vec![b'x'; 20_000];
    let lines = [
        created(14),
        events_line(
            14,
            &[
                put_event(2, b"turn-2", 11),
                put_event(3, b"turn-3", 12),
                format!(
                    r#"{{"type":"DELETE","kv":{{"key":"{}","mod_revision":"13"}}}}"#,
                    b64(log_key("lh", 1).as_bytes())
                ),
                put_event(4, b"turn-4", 14),
            ],
        ),
        events_line(16, &[put_event(6, b"turn-6", 16), put_event(7, b"turn-7", 16)]),
    ];
    let mut bytes = WATCH_HEAD.to_vec();
    for line in &lines {
        bytes.extend_from_slice(&chunked(line.as_bytes(), usize::MAX));
    }
    // A large line, as etcd sends it: the JSON in one chunk, its newline in another.
    let large = events_line(17, &[put_event(8, &big, 17)]);
    bytes.extend_from_slice(&chunked(large.trim_end().as_bytes(), usize::MAX));
    bytes.extend_from_slice(b"1\r\n\n\r\n");
    // And one line cut over several chunks.
    bytes.extend_from_slice(&chunked(events_line(18, &[put_event(9, b"turn-9", 18)]).as_bytes(), 7));

    let put = |seq, value: &[u8], rev| WatchEvent::Put {
        key: log_key("lh", seq).into_bytes(),
        value: value.to_vec(),
        mod_revision: rev,
    };
    let want = vec![
        put(2, b"turn-2", 11),
        put(3, b"turn-3", 12),
        WatchEvent::Delete { key: log_key("lh", 1).into_bytes(), mod_revision: 13 },
        put(4, b"turn-4", 14),
        put(6, b"turn-6", 16),
        put(7, b"turn-7", 16),
        put(8, &big, 17),
        put(9, b"turn-9", 18),
    ];
    let (events, error) = read_watch(&bytes, std::iter::empty(), false);
    assert!(error.is_none(), "{error:?}");
    assert_eq!(events, want);
    for seed in 0..30 {
        let (events, error) = read_watch(&bytes, splits(seed), false);
        assert!(error.is_none(), "seed {seed}: {error:?}");
        assert_eq!(events, want, "seed {seed}");
    }
    // The connection closing mid-stream ends the watch with an error, after the events.
    let (events, error) = read_watch(&bytes[..bytes.len() - 5], splits(1), true);
    assert_eq!(events, want[..7]);
    assert!(matches!(error, Some(EtcdError::Unavailable { .. })), "{error:?}");
}

#[test]
fn a_watch_reports_a_compaction_and_is_over() {
    let mut bytes = WATCH_HEAD.to_vec();
    bytes.extend_from_slice(&chunked(created(19).as_bytes(), usize::MAX));
    let cancel =
        format!("{{\"result\":{{{HEADER},\"raft_term\":\"2\"}},\"canceled\":true,\"compact_revision\":\"15\"}}}}\n");
    bytes.extend_from_slice(&chunked(cancel.as_bytes(), usize::MAX));
    // etcd keeps the stream open; anything after the cancel is not read.
    bytes.extend_from_slice(&chunked(events_line(20, &[put_event(1, b"late", 20)]).as_bytes(), usize::MAX));
    let mut stream = WatchStream::new();
    let mut out = VecDeque::new();
    stream.push(&bytes, &mut out).unwrap();
    assert!(stream.created() && stream.is_over());
    assert_eq!(Vec::from(out), vec![WatchEvent::Compacted { revision: 15 }]);
}

#[test]
fn a_watch_error_line_ends_the_watch_after_the_events_before_it() {
    let mut bytes = WATCH_HEAD.to_vec();
    bytes.extend_from_slice(&chunked(created(3).as_bytes(), usize::MAX));
    bytes.extend_from_slice(&chunked(events_line(4, &[put_event(1, b"a", 4)]).as_bytes(), usize::MAX));
    // The last line has no newline; the terminating chunk follows.
    let error = br#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#;
    bytes.extend_from_slice(&chunked(error, usize::MAX));
    bytes.extend_from_slice(b"0\r\n\r\n");
    for seed in 0..20 {
        let (events, error) = read_watch(&bytes, splits(seed), false);
        assert_eq!(events.len(), 1, "seed {seed}");
        assert!(
            matches!(&error, Some(EtcdError::Unavailable { reason, .. }) if reason.contains("no leader")),
            "{error:?}"
        );
    }
    // A stream that just ends is an error too.
    let mut ended = WATCH_HEAD.to_vec();
    ended.extend_from_slice(&chunked(created(3).as_bytes(), usize::MAX));
    ended.extend_from_slice(b"0\r\n\r\n");
    assert!(matches!(read_watch(&ended, std::iter::empty(), false).1, Some(EtcdError::Unavailable { .. })));
}

#[test]
fn a_watch_refused_at_once_gives_etcds_error() {
    let body = br#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#;
    let mut bytes = format!("HTTP/1.1 503 Service Unavailable\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    bytes.extend_from_slice(body);
    let (events, error) = read_watch(&bytes, splits(3), false);
    assert!(events.is_empty());
    assert!(matches!(&error, Some(EtcdError::Unavailable { reason, .. }) if reason.contains("no leader")), "{error:?}");
}

#[test]
fn hostile_watch_lines_are_errors() {
    for line in [
        "{\"result\":{\"events\":[{\"type\":\"RENAME\",\"kv\":{}}]}}\n".to_string(),
        "{\"result\":{\"events\":[{\"kv\":{\"key\":\"%%%\"}}]}}\n".to_string(),
        "{\"result\":{\"canceled\":true}}\n".to_string(),
        "{\"nothing\":1}\n".to_string(),
        "not json\n".to_string(),
    ] {
        let mut bytes = WATCH_HEAD.to_vec();
        bytes.extend_from_slice(&chunked(line.as_bytes(), usize::MAX));
        let (events, error) = read_watch(&bytes, std::iter::empty(), false);
        assert!(events.is_empty() && error.is_some(), "{line}: {error:?}");
    }
    let mut lines = Lines::new(8);
    assert_eq!(lines.push(b"1234\n\n5678").unwrap(), vec![b"1234".to_vec()]);
    assert!(matches!(lines.push(b"9abcdef"), Err(EtcdError::TooLarge { max_bytes: 8, .. })));
    let mut lines = Lines::new(8);
    assert_eq!(lines.push(b"12345678").unwrap(), Vec::<Vec<u8>>::new());
    assert_eq!(lines.finish(), Some(b"12345678".to_vec()));
}
