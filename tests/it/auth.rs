//! Access rules on every route of the table: no key, a wrong key, a key of too low a role,
//! a key of another name prefix.

use leasehold::config::Role;
use leasehold::http::route::{RouteId, ROUTES};

use crate::support::http::once;
use crate::support::{config, Server};

const KEYS: &str = "\
[[auth.keys]]
key = \"read-secret\"
role = \"read\"
[[auth.keys]]
key = \"lock-secret\"
role = \"lock\"
[[auth.keys]]
key = \"write-secret\"
role = \"write\"
[[auth.keys]]
key = \"other-secret\"
role = \"write\"
prefix = \"other:\"
";

fn key_below(role: Role) -> Option<&'static str> {
    match role {
        Role::Read => None,
        Role::Lock => Some("read-secret"),
        Role::Write => Some("lock-secret"),
    }
}

#[test]
fn every_route_is_checked_for_no_key_a_wrong_key_a_lower_role_and_another_prefix() {
    let s = Server::start(&config("workers = 1", KEYS));
    let mut checked = 0;
    for def in ROUTES {
        let mut path = def
            .pattern
            .replace("{name}", "guarded")
            .replace("{ticket}", "AAAAAAAAAAAAAAAAAAAAAA")
            .replace("{key}", "k")
            .replace("{selector}", "sel");
        if def.id == RouteId::Events {
            path.push_str("?ticket=AAAAAAAAAAAAAAAAAAAAAA");
        }
        let method = def.method.map_or("GET", |m| m.as_str());
        let body = if def.id == RouteId::CompatCreate { r#"{"name":"guarded","timeout":-1}"# } else { "{}" };
        let status = |key: Option<&str>| {
            let headers: Vec<(&str, &str)> = key.map(|k| vec![("x-api-key", k)]).unwrap_or_default();
            once(s.addr, method, &path, &headers, body).status
        };
        let what = format!("{method} {path}");
        let Some(role) = def.role else {
            let open = status(None);
            assert!(open != 401 && open != 403, "{what} is open to anyone, got {open}");
            continue;
        };
        assert_eq!(status(None), 401, "{what} without a key");
        assert_eq!(status(Some("wrong-secret")), 401, "{what} with a wrong key");
        if let Some(lower) = key_below(role) {
            let expected = if def.id.is_compat() { 401 } else { 403 };
            assert_eq!(status(Some(lower)), expected, "{what} with a key below {role:?}");
        }
        let names_a_lock = def.pattern.contains("{name}") || def.id == RouteId::CompatCreate;
        if names_a_lock {
            assert_eq!(status(Some("other-secret")), 403, "{what} with a key of another prefix");
        }
        let right = status(Some("write-secret"));
        assert!(right != 401 && right != 403, "{what} with a good key got {right}");
        checked += 1;
    }
    assert!(checked >= 18, "only {checked} guarded routes were checked");
    // A prefixed key lists only its own names.
    let listed = once(s.addr, "GET", "/v1/locks?prefix=guarded", &[("x-api-key", "other-secret")], "");
    assert_eq!(listed.status, 403);
    let own = once(s.addr, "GET", "/v1/locks", &[("x-api-key", "other-secret")], "");
    assert_eq!(own.status, 200);
}

#[test]
fn without_keys_loopback_clients_need_none_and_other_listeners_are_refused() {
    let s = Server::start(&config("workers = 1", ""));
    assert_eq!(once(s.addr, "POST", "/v1/locks/free/acquire", &[], "{}").status, 200);
    // Listening beyond loopback without a key does not start (the access rules refuse a
    // non-loopback client too, as a second line: see http::auth's tests).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args(["serve"])
        .env("LEASEHOLD_LISTEN", "0.0.0.0:0")
        .env_remove("RESOURCE_READ")
        .env_remove("RESOURCE_READ_LOCK")
        .env_remove("RESOURCE_WRITE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("insecure_anonymous"));
}
