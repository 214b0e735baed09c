//! The OpenAPI document of the native API (docs/openapi.json): the server serves it as
//! committed (`GET /v1/openapi.json`, open to anyone, as docs/api.md says), and it agrees
//! with the route table both ways: every route is an operation, except the ones the
//! document itself lists in `x-leasehold-omitted`, and every operation is a route, with the
//! role the table gives it (`x-leasehold-role`). Its schemas are checked against the
//! README's examples by tests/python/test_openapi.py.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;

use leasehold::config::Role;
use leasehold::http::parse::Method;
use leasehold::http::route::ROUTES;
use serde_json::Value;

use crate::support::http::once;
use crate::support::{config, Server};

/// The committed document, read from the tree (not from the binary under test).
fn committed() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn document() -> Value {
    serde_json::from_str(&committed()).unwrap_or_else(|e| panic!("docs/openapi.json is not JSON: {e}"))
}

/// A path template with every `{param}` as `{}`, so names need not agree to compare.
fn normalised(template: &str) -> String {
    template
        .split('/')
        .map(|segment| if segment.starts_with('{') && segment.ends_with('}') { "{}" } else { segment })
        .collect::<Vec<_>>()
        .join("/")
}

/// Operation keys of an OpenAPI path item (the other keys are parameters, summaries, …).
const OPERATIONS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// A row's method as the document spells it: lower case, `*` for a route of any method.
fn method_key(method: Option<Method>) -> String {
    method.map_or_else(|| "*".to_string(), |m| m.as_str().to_ascii_lowercase())
}

fn role_name(role: Option<Role>) -> Value {
    match role {
        None => Value::Null,
        Some(Role::Read) => "read".into(),
        Some(Role::Lock) => "lock".into(),
        Some(Role::Write) => "write".into(),
    }
}

/// `x-leasehold-omitted`: the (method, normalised path) pairs the document leaves out.
fn omitted(doc: &Value) -> BTreeSet<(String, String)> {
    let list = doc["x-leasehold-omitted"].as_array().expect("x-leasehold-omitted is a list");
    list.iter()
        .map(|entry| {
            let method = entry["method"].as_str().expect("an omitted entry has a method");
            let path = entry["path"].as_str().expect("an omitted entry has a path");
            let method = if method == "*" { "*".to_string() } else { method.to_ascii_lowercase() };
            (method, normalised(path))
        })
        .collect()
}

/// Resolves a local `$ref` (`#/components/...`).
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(pointer) => doc.pointer(pointer.trim_start_matches('#')).unwrap_or_else(|| panic!("no {pointer}")),
        None => v,
    }
}

#[test]
fn openapi_json_is_served_as_committed_to_anyone_with_its_head_for_head() {
    // With keys configured: the document is public, as /healthz is.
    let keys = "[[auth.keys]]\nkey = \"reader-secret\"\nrole = \"read\"\n";
    let s = Server::start(&config("workers = 1", keys));
    let r = once(s.addr, "GET", "/v1/openapi.json", &[], "");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let committed = committed();
    assert!(r.body == committed.as_bytes(), "GET /v1/openapi.json differs from docs/openapi.json (rebuild?)");

    // HEAD: the same head, no body.
    let mut stream = TcpStream::connect(s.addr).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    write!(stream, "HEAD /v1/openapi.json HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8(answer).unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no whole head: {text:?}"));
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let length = format!("\r\ncontent-length: {}", committed.len());
    assert!(head.to_ascii_lowercase().contains(&length), "{head}");
    assert_eq!(rest, "", "HEAD answered with a body");
}

#[test]
fn openapi_json_and_the_route_table_agree_both_ways() {
    let doc = document();
    assert_eq!(doc["openapi"].as_str().map(|v| v.starts_with("3.1.")), Some(true), "not OpenAPI 3.1");
    let paths = doc["paths"].as_object().expect("paths");
    let omitted = omitted(&doc);
    let documented: Vec<(String, String, &Value)> = paths
        .iter()
        .flat_map(|(path, item)| {
            let item = item.as_object().unwrap_or_else(|| panic!("{path} is not a path item"));
            item.iter()
                .filter(|(k, _)| OPERATIONS.contains(&k.as_str()))
                .map(move |(m, o)| (m.clone(), path.clone(), o))
        })
        .collect();

    // Every route is documented (or declared omitted), with the table's role.
    let mut checked = 0;
    for def in ROUTES {
        let (method, pattern) = (method_key(def.method), normalised(def.pattern));
        if omitted.contains(&(method.clone(), pattern.clone())) {
            continue;
        }
        let found = documented.iter().find(|(m, p, _)| *m == method && normalised(p) == pattern);
        let (_, path, op) = found.unwrap_or_else(|| {
            panic!(
                "{method} {} is in the route table but not in docs/openapi.json (nor in x-leasehold-omitted)",
                def.pattern
            )
        });
        assert_eq!(op["x-leasehold-role"], role_name(def.role), "x-leasehold-role of {method} {path}");
        // Every path parameter of the template is declared, by its name.
        let declared: BTreeSet<&str> = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| resolve(&doc, p))
            .filter(|p| p["in"] == "path")
            .filter_map(|p| p["name"].as_str())
            .collect();
        let wanted: BTreeSet<&str> =
            path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect();
        assert_eq!(declared, wanted, "path parameters of {method} {path}");
        checked += 1;
    }
    assert!(checked + omitted.len() >= ROUTES.len(), "only {checked} routes were checked");

    // Everything documented is a route (HEAD: a GET route).
    for (method, path, _) in &documented {
        let pattern = normalised(path);
        let exists = ROUTES.iter().any(|def| {
            let m = method_key(def.method);
            normalised(def.pattern) == pattern && (m == *method || (method == "head" && m == "get"))
        });
        assert!(exists, "docs/openapi.json documents {method} {path}, which is not a route");
        assert!(!omitted.contains(&(method.clone(), pattern)), "{method} {path} is documented and declared omitted");
    }
    // Every omission names a route (so the list cannot hide a typo or a route that went).
    for (method, pattern) in &omitted {
        let exists = ROUTES.iter().any(|def| method_key(def.method) == *method && normalised(def.pattern) == *pattern);
        assert!(exists, "x-leasehold-omitted names {method} {pattern}, which is not a route");
    }
}
