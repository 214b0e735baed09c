//! Tests of browser access: CORS decisions, ticket-token scope, the dashboard page and its
//! snapshots.

use super::*;
use crate::core::lock::{Declaration, LockKind, QueueKind};
use crate::ipc::message::HolderInfo;
use crate::ipc::overview::OutboxCounts;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const T1: &str = "AAAAAAAAAAAAAAAAAAAAAA";

fn rules(secret: Option<&str>, origins: &[&str]) -> BrowserRules {
    BrowserRules::new(&BrowserConfig {
        secret: secret.map(str::to_string),
        cors_origins: origins.iter().map(|o| o.to_string()).collect(),
        cors_max_age_s: 600,
        max_dashboards: 4,
    })
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers.iter().find(|(h, _)| *h == name).map(|(_, v)| v.as_str())
}

fn lock(name: &str) -> LockName {
    LockName::parse(name).unwrap()
}

fn ticket(text: &str) -> Ticket {
    Ticket::parse(text).unwrap()
}

/// Another valid ticket than `T1`.
fn other_ticket() -> Ticket {
    Ticket::from_bytes([9; 16])
}

#[test]
fn cors_origin_is_allowed_only_when_listed_exactly() {
    let r = rules(None, &["https://app.example", "http://127.0.0.1:8000"]);
    assert_eq!(r.cors_origin(Some("https://app.example")), Some("https://app.example"));
    assert_eq!(r.cors_origin(Some("HTTPS://APP.example")), Some("https://app.example"));
    for denied in ["https://evil.example", "https://app.example.evil", "http://app.example", "null", "", "*"] {
        assert_eq!(r.cors_origin(Some(denied)), None, "{denied}");
    }
    assert_eq!(r.cors_origin(None), None);
    assert_eq!(rules(None, &[]).cors_origin(Some("https://app.example")), None);
}

#[test]
fn with_cors_adds_the_origin_vary_and_exposed_headers() {
    let r = with_cors(error(ErrorCode::NotFound, "x"), "https://app.example");
    assert_eq!(r.status, 404, "errors keep their status");
    assert_eq!(header(&r, "Access-Control-Allow-Origin"), Some("https://app.example"));
    assert_eq!(header(&r, "Vary"), Some("Origin"));
    assert!(header(&r, "Access-Control-Expose-Headers").is_some_and(|h| h.contains("Retry-After")));
}

#[test]
fn preflight_answers_listed_origins_with_the_paths_methods() {
    let r = rules(None, &["https://app.example"]);
    let ok = r.preflight("/v1/locks/a/data/k", Some("https://app.example")).unwrap();
    assert_eq!(ok.status, 204);
    assert!(ok.body.is_empty());
    assert_eq!(header(&ok, "Access-Control-Allow-Origin"), Some("https://app.example"));
    assert_eq!(header(&ok, "Access-Control-Allow-Methods"), Some("GET, HEAD, PUT, DELETE"));
    assert_eq!(header(&ok, "Access-Control-Allow-Headers"), Some(CORS_ALLOW_HEADERS));
    assert_eq!(header(&ok, "Access-Control-Max-Age"), Some("600"));
    assert_eq!(header(&ok, "Vary"), Some("Origin"));
    let acquire = r.preflight("/v1/locks/a/acquire?x=1", Some("https://app.example")).unwrap();
    assert_eq!(header(&acquire, "Access-Control-Allow-Methods"), Some("POST"));
    let any = r.preflight("/health", Some("https://app.example")).unwrap();
    assert_eq!(header(&any, "Access-Control-Allow-Methods"), Some(ANY_METHOD));
    let missing = r.preflight("/nope", Some("https://app.example")).unwrap();
    assert_eq!((missing.status, header(&missing, "Vary")), (404, Some("Origin")));
}

#[test]
fn preflight_refuses_other_origins_and_leaves_plain_options_alone() {
    let r = rules(None, &["https://app.example"]);
    let denied = r.preflight("/v1/locks/a/acquire", Some("https://evil.example")).unwrap();
    assert_eq!(denied.status, 403);
    assert_eq!(header(&denied, "Access-Control-Allow-Origin"), None, "no CORS header for an origin not listed");
    let body: serde_json::Value = serde_json::from_slice(&denied.body).unwrap();
    assert_eq!(body["error"], "forbidden");
    // No Origin, or no CORS configured: not a preflight; the route table answers.
    assert_eq!(r.preflight("/v1/locks/a/acquire", None), None);
    assert_eq!(rules(None, &[]).preflight("/v1/locks/a/acquire", Some("https://app.example")), None);
}

#[test]
fn ticket_token_opens_its_own_ticket_status_and_events_only() {
    let r = rules(Some(SECRET), &[]);
    let token = r.ticket_token(&lock("jobs"), ticket(T1)).unwrap();
    let status = format!("/v1/locks/jobs/tickets/{T1}?token={token}");
    let a = r.admit_token(Method::Get, &status, None).unwrap().unwrap();
    assert_eq!((a.def.id, a.grant.role), (RouteId::TicketStatus, Role::Read));
    assert_eq!(a.params, vec!["jobs".to_string(), T1.to_string()]);
    let events = format!("/v1/locks/jobs/events?ticket={T1}&token={token}");
    let a = r.admit_token(Method::Get, &events, None).unwrap().unwrap();
    assert_eq!(a.def.id, RouteId::Events);
    assert!(r.admit_token(Method::Head, &events, None).unwrap().is_ok(), "HEAD as GET");

    let refused = |target: &str| {
        let refused = r.admit_token(Method::Get, target, None).expect("the token decides").unwrap_err();
        assert_eq!(refused.response.status, 401, "{target}");
        assert!(header(&refused.response, "WWW-Authenticate").is_some());
        refused.label
    };
    let other = other_ticket();
    assert_eq!(refused(&format!("/v1/locks/jobs/tickets/{other}?token={token}")), "ticket_status");
    assert_eq!(refused(&format!("/v1/locks/other/tickets/{T1}?token={token}")), "ticket_status");
    assert_eq!(refused(&format!("/v1/locks/other/events?ticket={T1}&token={token}")), "events");
    assert_eq!(refused(&format!("/v1/locks/jobs/events?ticket={other}&token={token}")), "events");
    assert_eq!(refused(&format!("/v1/locks/jobs/events?token={token}")), "events");
    // Forged: another secret, a changed payload, a token of another purpose.
    let forged = rules(Some(&"x".repeat(32)), &[]).ticket_token(&lock("jobs"), ticket(T1)).unwrap();
    refused(&format!("/v1/locks/jobs/tickets/{T1}?token={forged}"));
    let claim = TicketClaim { lock: lock("jobs"), ticket: ticket(T1) };
    let room = seal::seal(SECRET.as_bytes(), "room-place", &claim);
    refused(&format!("/v1/locks/jobs/tickets/{T1}?token={room}"));
    let (_, tag) = token.split_once('.').unwrap();
    let other_claim = seal::seal(b"unused", TICKET_PURPOSE, &TicketClaim { lock: lock("jobs"), ticket: other });
    let (body, _) = other_claim.split_once('.').unwrap();
    refused(&format!("/v1/locks/jobs/tickets/{other}?token={body}.{tag}"));
    refused(&format!("/v1/locks/jobs/tickets/{T1}?token=garbage"));
}

#[test]
fn ticket_token_does_not_apply_elsewhere_or_beside_a_key() {
    let r = rules(Some(SECRET), &[]);
    let token = r.ticket_token(&lock("jobs"), ticket(T1)).unwrap();
    for (method, target) in [
        (Method::Delete, format!("/v1/locks/jobs/tickets/{T1}?token={token}")),
        (Method::Post, format!("/v1/locks/jobs/release?token={token}")),
        (Method::Get, format!("/v1/locks/jobs?token={token}")),
        (Method::Get, format!("/v1/ui/events?token={token}")),
        (Method::Get, format!("/v1/locks/jobs/tickets/{T1}")),
    ] {
        assert!(r.admit_token(method, &target, None).is_none(), "{method:?} {target}");
    }
    let with_key = format!("/v1/locks/jobs/tickets/{T1}?token=garbage");
    assert!(r.admit_token(Method::Get, &with_key, Some("a-key")).is_none(), "a key is checked as a key");
    assert!(rules(None, &[]).admit_token(Method::Get, &with_key, None).is_none(), "tokens off");
}

#[test]
fn acquire_answers_carry_the_ticket_token_when_tokens_are_on() {
    let r = rules(Some(SECRET), &[]);
    let answer = Response::json(202, &serde_json::json!({"status": "queued", "lock": "jobs", "ticket": T1}));
    let shown = r.with_ticket_token(&lock("jobs"), answer.clone());
    let body: serde_json::Value = serde_json::from_slice(&shown.body).unwrap();
    let token = body["ticket_token"].as_str().unwrap();
    let claim: TicketClaim = seal::open(SECRET.as_bytes(), TICKET_PURPOSE, token).unwrap();
    assert_eq!(claim, TicketClaim { lock: lock("jobs"), ticket: ticket(T1) });
    assert_eq!((body["status"].as_str(), shown.status), (Some("queued"), 202));
    assert_eq!(rules(None, &[]).with_ticket_token(&lock("jobs"), answer.clone()), answer, "tokens off");
    let refusal = error(ErrorCode::Unavailable, "taken");
    assert_eq!(r.with_ticket_token(&lock("jobs"), refusal.clone()), refusal, "only answers with a ticket");
}

#[test]
fn json_for_script_cannot_close_its_script_element() {
    let text = json_for_script(&serde_json::json!({"x": "</script><img src=x onerror=alert(1)>&\u{2028}"}));
    assert!(!text.contains('<') && !text.contains('>') && !text.contains('&'), "{text}");
    assert!(!text.contains('\u{2028}'));
    let back: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(back["x"], "</script><img src=x onerror=alert(1)>&\u{2028}");
}

#[test]
fn ui_page_is_accessible_html_with_a_csp_that_pins_its_inline_code() {
    let r = ui_page(true);
    assert_eq!((r.status, r.content_type), (200, "text/html; charset=utf-8"));
    let page = String::from_utf8(r.body.clone()).unwrap();
    for needle in [
        "<html lang=\"en\">",
        "name=\"viewport\"",
        "<main",
        "<h1>",
        "aria-live=\"polite\"",
        "<label for=\"api-key\">",
        "prefers-reduced-motion: reduce",
        // The key form is `hidden` until needed, and its `display: flex` must not show it.
        "[hidden] { display: none !important; }",
        "sessionStorage",
        "\"x-api-key\"",
        "id=\"busiest\"",
        "id=\"rooms\"",
        "id=\"outbox-pending\"",
        "id=\"processes\"",
        "\"needs_key\":true",
    ] {
        assert!(page.contains(needle), "the page lacks {needle}");
    }
    assert!(!page.contains(UI_SETTINGS_SLOT), "settings filled in");
    // Server data goes in as text only; no inline handlers (the CSP would block them).
    for banned in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "onclick=", "onload=", "eval("] {
        assert!(!page.contains(banned), "the page uses {banned}");
    }
    let csp = header(&r, "Content-Security-Policy").unwrap();
    // The hashes are of the page's own code (not of a mention of the tags in a comment).
    let script_text = inline_text(&page, "<script>", "</script>").unwrap();
    let style_text = inline_text(&page, "<style>", "</style>").unwrap();
    assert!(script_text.starts_with("\n\"use strict\";"), "{script_text:.40}");
    assert!(style_text.starts_with("\n:root"), "{style_text:.40}");
    let (script, style) = (csp_hash(script_text), csp_hash(style_text));
    assert!(csp.contains(&format!("script-src {script}")), "{csp}");
    assert!(csp.contains(&format!("style-src {style}")), "{csp}");
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert_eq!(header(&r, "Cache-Control"), Some("no-store"));
    assert!(String::from_utf8(ui_page(false).body).unwrap().contains("\"needs_key\":false"));
}

#[test]
fn processes_are_read_from_the_metrics_page() {
    let text = "\
# HELP leasehold_process_resident_memory_bytes x
leasehold_process_resident_memory_bytes{role=\"worker\",slot=\"1\"} 2048
leasehold_process_resident_memory_bytes{role=\"master\"} 1024
leasehold_process_resident_memory_bytes{role=\"worker\",slot=\"0\"} 4096
leasehold_process_cpu_seconds_total{role=\"master\"} 0.25
leasehold_process_start_time_seconds{role=\"keeper\"} 1700000000.5
leasehold_open_connections{worker=\"0\"} 3
leasehold_locks 7
garbage line
leasehold_process_cpu_seconds_total{role=\"keeper\"} not-a-number
";
    let rows = processes_from_metrics(text);
    let shown: Vec<(&str, Option<u32>)> = rows.iter().map(|p| (p.role.as_str(), p.slot)).collect();
    assert_eq!(shown, [("master", None), ("keeper", None), ("worker", Some(0)), ("worker", Some(1))]);
    assert_eq!((rows[0].resident_bytes, rows[0].cpu_seconds), (Some(1024), Some(0.25)));
    assert_eq!(rows[1].started_at_ms, Some(1_700_000_000_500));
    assert_eq!((rows[2].resident_bytes, rows[2].open_connections), (Some(4096), Some(3)));
    let many: String = (0..1000).map(|i| format!("leasehold_open_connections{{worker=\"{i}\"}} 1\n")).collect();
    assert_eq!(processes_from_metrics(&many).len(), MAX_SNAPSHOT_PROCESSES);
}

fn info(name: &str, used: u32, queue_length: u32, declared: Option<Declaration>) -> LockInfo {
    LockInfo {
        name: lock(name),
        kind: LockKind::Semaphore,
        limit: 10,
        queue: QueueKind::Fifo,
        used,
        holders: vec![HolderInfo {
            owner: Some(crate::core::names::Owner::parse("<b>host</b>").unwrap()),
            weight: 1,
            fence: 4,
            expires_in_ms: 900,
            claimed: true,
            mode: None,
            user: None,
        }],
        queue_length,
        data_keys: 0,
        declared,
    }
}

#[test]
fn snapshot_shows_locks_rooms_outbox_processes_and_the_worker() {
    let room = Declaration {
        limit: 10,
        admit_per_minute: Some(30),
        admit_burst: 2,
        default_ttl_ms: Some(300_000),
        ..Declaration::new(Some(lock("room:shop")), None)
    };
    let overview = Overview {
        at_ms: 5,
        locks: 2,
        holders: 4,
        waiters: 40,
        event_streams: 1,
        busiest: vec![info("jobs", 1, 3, None)],
        rooms: vec![info("room:shop", 3, 40, Some(room))],
        outbox: OutboxCounts { pending: 1, in_flight: 2, failed: 3 },
    };
    let worker = WorkerView { slot: 1, pid: 42, open_connections: 2, dashboards: 1, keeper_connected: true };
    let processes = processes_from_metrics("leasehold_process_resident_memory_bytes{role=\"master\"} 1\n");
    let data = snapshot_data(Some(&overview), &processes, &worker);
    let event = String::from_utf8(snapshot_event(7, &data)).unwrap();
    assert!(event.starts_with("id: 7\nevent: snapshot\ndata: {") && event.ends_with("}\n\n"), "{event}");
    assert_eq!(event.lines().count(), 4, "one data line (and the blank line that ends the event)");
    let v: serde_json::Value = serde_json::from_str(&data).unwrap();
    assert_eq!(v["keeper"], true);
    assert_eq!((v["locks"]["total"].as_u64(), v["locks"]["waiters"].as_u64()), (Some(2), Some(40)));
    let busiest = &v["locks"]["busiest"][0];
    assert_eq!((busiest["name"].as_str(), busiest["queue_length"].as_u64()), (Some("jobs"), Some(3)));
    assert_eq!(busiest["holders"][0]["owner"], "<b>host</b>", "raw text: the page sets it as text");
    let shop = &v["rooms"][0];
    assert_eq!(shop["name"], "shop");
    assert_eq!(shop["lock"], "room:shop");
    assert_eq!(
        (shop["capacity"].as_u64(), shop["in_use"].as_u64(), shop["waiting"].as_u64()),
        (Some(10), Some(3), Some(40))
    );
    assert_eq!((shop["admit_per_minute"].as_u64(), shop["admit_burst"].as_u64()), (Some(30), Some(2)));
    assert_eq!(v["outbox"]["failed"], 3);
    assert_eq!(v["processes"][0]["role"], "master");
    assert_eq!((v["worker"]["slot"].as_u64(), v["worker"]["pid"].as_u64()), (Some(1), Some(42)));
    let without = snapshot_data(None, &[], &worker);
    let v: serde_json::Value = serde_json::from_str(&without).unwrap();
    assert_eq!(v["keeper"], false);
    assert!(v.get("locks").is_none());
}

#[test]
fn dashboards_are_bounded_per_worker() {
    assert_eq!(dashboard_refusal(0, 2), None);
    assert_eq!(dashboard_refusal(1, 2), None);
    let full = dashboard_refusal(2, 2).unwrap();
    assert_eq!(full.status, 503);
    assert!(header(&full, "Retry-After").is_some());
    assert_eq!(dashboard_refusal(0, 0).unwrap().status, 503, "0 turns them off");
}
