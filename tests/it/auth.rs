//! Access rules on every documented route: no key, a wrong key, a key of another name
//! prefix. The routes and whether each is open come from the README's API table (see
//! `roles.rs`, which also checks each route's role), not from the route table under test.

use crate::roles::{documented_routes, example_path};
use crate::support::http::once;
use crate::support::{config, Server};

const KEYS: &str = "\
[[auth.keys]]
key = \"write-secret\"
role = \"write\"
[[auth.keys]]
key = \"other-secret\"
role = \"write\"
prefix = \"other:\"
";

#[test]
fn every_route_is_checked_for_no_key_a_wrong_key_and_another_prefix() {
    let s = Server::start(&config("workers = 1", KEYS));
    let mut checked = 0;
    for doc in documented_routes() {
        let mut path = example_path(&doc.pattern);
        if doc.pattern.ends_with("/events") {
            path.push_str("?ticket=AAAAAAAAAAAAAAAAAAAAAA");
        }
        let method = doc.method.as_deref().unwrap_or("GET");
        let registers = method == "POST" && doc.pattern == "/resource";
        let body = if registers { r#"{"name":"guarded","timeout":-1}"# } else { "{}" };
        let status = |key: Option<&str>| {
            let headers: Vec<(&str, &str)> = key.map(|k| vec![("x-api-key", k)]).unwrap_or_default();
            once(s.addr, method, &path, &headers, body).status
        };
        let what = format!("{method} {path}");
        if doc.role.is_none() {
            let open = status(None);
            assert!(open != 401 && open != 403, "{what} is open to anyone, got {open}");
            continue;
        }
        assert_eq!(status(None), 401, "{what} without a key");
        assert_eq!(status(Some("wrong-secret")), 401, "{what} with a wrong key");
        if doc.pattern.contains("{name}") || registers {
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

#[test]
fn a_bearer_token_is_a_key_like_x_api_key_and_two_different_keys_are_refused() {
    let keys = "[[auth.keys]]\nkey = \"reader-secret\"\nrole = \"read\"\n[[auth.keys]]\nkey = \"jobs-secret\"\nrole = \"lock\"\nprefix = \"jobs:\"\n";
    let s = Server::start(&config("workers = 1", keys));
    let bearer = |key: &str| format!("Bearer {key}");
    let acquire = |headers: &[(&str, &str)]| once(s.addr, "POST", "/v1/locks/jobs:b/acquire", headers, "{}");
    // The same rules as x-api-key: a good key, a wrong key (401 with both challenges), a
    // role too low, a name outside the prefix.
    let jobs = bearer("jobs-secret");
    let held = acquire(&[("Authorization", &jobs)]);
    assert_eq!((held.status, held.json()["status"].as_str()), (200, Some("acquired")), "{:?}", held.json());
    let wrong = acquire(&[("authorization", &bearer("wrong"))]);
    assert_eq!((wrong.status, wrong.json()["error"].as_str()), (401, Some("unauthorized")));
    let challenge = wrong.header("www-authenticate").unwrap_or_default();
    assert!(challenge.contains("x-api-key") && challenge.contains("Bearer"), "{challenge}");
    assert_eq!(acquire(&[("Authorization", &bearer("reader-secret"))]).status, 403);
    let other = once(s.addr, "POST", "/v1/locks/other/acquire", &[("Authorization", &jobs)], "{}");
    assert_eq!(other.status, 403);
    let view = once(s.addr, "GET", "/v1/locks/jobs:b", &[("Authorization", &bearer("reader-secret"))], "");
    assert_eq!((view.status, view.json()["used"].as_u64()), (200, Some(1)));
    // Another scheme is no key at all.
    assert_eq!(acquire(&[("Authorization", "Basic am9iczpzZWNyZXQ=")]).status, 401);
    // Both headers with the same key: one key. With different keys, whichever would
    // allow it: 400 with a JSON error naming the headers, not the keys.
    let same = once(
        s.addr,
        "GET",
        "/metrics",
        &[("x-api-key", "reader-secret"), ("Authorization", "Bearer reader-secret")],
        "",
    );
    assert_eq!(same.status, 200);
    for (x_api_key, token) in [("reader-secret", "jobs-secret"), ("jobs-secret", "wrong")] {
        let both = acquire(&[("x-api-key", x_api_key), ("Authorization", &bearer(token))]);
        let body = both.json();
        assert_eq!((both.status, body["error"].as_str()), (400, Some("bad_request")), "{body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains("x-api-key") && message.contains("Bearer"), "{message}");
        assert!(!message.contains("secret"), "the keys are not echoed: {message}");
    }
}
