//! Admission, pure: the step between a parsed request and the API. [`admit`] finds the
//! request's row in the one route table ([`super::route`]) and checks its key against the
//! access rules ([`super::auth`]); it returns what the API may act on (the route, its
//! parameters and the caller's grant) or the whole refusal to send. It owns the statuses
//! of those refusals; it must not look at the body or ask the keeper anything.
//!
//! The refusals, as README.md's API section states them: 404 `not_found` for no such route,
//! 405 `method_not_allowed` with `Allow` for a known path with another method, 400
//! `bad_request` for a path with an invalid %-escape; 401 `unauthorized` with
//! `WWW-Authenticate` for a missing or unknown key, 403 `forbidden` for a key whose role or
//! prefix does not allow the request (and for a client off loopback while no key is
//! configured), except that on the Small Resource Server routes a role too low is 401, as
//! its client expects.

use super::auth::{Access, Credentials, Denied, Grant};
use super::parse::Method;
use super::response::Response;
use super::route::{needed_role, route, RouteDef, RouteError, LABEL_UNROUTED};
use super::status::{error, ErrorCode};

/// The `WWW-Authenticate` value of every 401: where the key goes, as two challenges (the
/// `x-api-key` header, or `Authorization: Bearer`).
pub const WWW_AUTHENTICATE: &str = "ApiKey header=\"x-api-key\", Bearer realm=\"leasehold\"";

/// A request the API may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted<'a> {
    /// Its row of the route table.
    pub def: &'static RouteDef,
    /// Path parameters, percent-decoded, in pattern order.
    pub params: Vec<String>,
    /// The query string (without `?`; empty if none).
    pub query: &'a str,
    /// What the caller may do (the name prefix its key is limited to, and its role).
    pub grant: Grant<'a>,
}

/// A request refused before the API saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The metrics label: the route's, or [`LABEL_UNROUTED`] when no route matched.
    pub label: &'static str,
    /// The whole answer.
    pub response: Response,
}

/// Routes and authorises one request. `target` is the request target (path and query),
/// `api_key` the key the request carries (`x-api-key` or `Authorization: Bearer`),
/// `peer_loopback` whether the client connected from a loopback address.
pub fn admit<'a>(
    method: Method,
    target: &'a str,
    api_key: Option<&str>,
    peer_loopback: bool,
    access: &'a Access,
) -> Result<Admitted<'a>, Refused> {
    admit_as(method, target, Credentials { api_key, certificate_cn: None, peer_loopback }, access)
}

/// [`admit`] for a request that may also carry a client certificate.
pub fn admit_as<'a>(
    method: Method,
    target: &'a str,
    credentials: Credentials<'_>,
    access: &'a Access,
) -> Result<Admitted<'a>, Refused> {
    let matched = route(method, target).map_err(|e| Refused { label: LABEL_UNROUTED, response: unrouted(e) })?;
    let def = matched.def;
    // A key limited to a prefix is checked on the lock (or resource) the route names.
    let name = if def.id.names_lock() { matched.params.first().map(String::as_str) } else { None };
    let needed = needed_role(def, matched.query);
    match access.check_as(credentials, needed, name) {
        Ok(grant) => Ok(Admitted { def, params: matched.params, query: matched.query, grant }),
        Err(denied) => Err(Refused { label: def.label, response: refusal(def, denied) }),
    }
}

/// The answer to a request that matched no route.
fn unrouted(e: RouteError) -> Response {
    match e {
        RouteError::NotFound => error(ErrorCode::NotFound, "no such route"),
        RouteError::MethodNotAllowed { allow } => {
            error(ErrorCode::MethodNotAllowed, "this route does not take this method").with_header("Allow", allow)
        }
        RouteError::BadPath => error(ErrorCode::BadRequest, "the path has an invalid %-escape"),
    }
}

/// The answer to a request the access rules refused on route `def`.
fn refusal(def: &RouteDef, denied: Denied) -> Response {
    let unauthorized = match denied {
        Denied::MissingKey | Denied::UnknownKey => true,
        // The Small Resource Server answers a missing role with 401, and its client relies
        // on it (README.md, "API keys").
        Denied::Role { .. } => def.id.is_compat(),
        Denied::Prefix | Denied::NotLoopback => false,
    };
    if unauthorized {
        error(ErrorCode::Unauthorized, &denied.message()).with_header("WWW-Authenticate", WWW_AUTHENTICATE)
    } else {
        error(ErrorCode::Forbidden, &denied.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiKey, Role};
    use crate::http::route::RouteId;

    fn keys() -> Access {
        let key = |k: &str, role, prefix: &str| ApiKey { key: k.into(), role, prefix: prefix.into() };
        Access::new(
            vec![
                key("reader", Role::Read, ""),
                key("locker", Role::Lock, ""),
                key("writer", Role::Write, ""),
                key("team-a-locker", Role::Lock, "team-a:"),
            ],
            false,
        )
    }

    /// Status, wire code and the named header of a refusal.
    fn refused(r: Result<Admitted<'_>, Refused>, header: &str) -> (u16, String, Option<String>, &'static str) {
        let refused = r.expect_err("refused");
        let body: serde_json::Value = serde_json::from_slice(&refused.response.body).unwrap();
        assert!(body["message"].is_string(), "an error body has a message: {body}");
        let value = refused.response.headers.iter().find(|(h, _)| *h == header).map(|(_, v)| v.clone());
        (refused.response.status, body["error"].as_str().unwrap().to_string(), value, refused.label)
    }

    #[test]
    fn admit_unknown_route_is_404_not_found_unrouted() {
        let access = keys();
        let r = admit(Method::Get, "/v2/locks", Some("writer"), true, &access);
        assert_eq!(refused(r, "Allow"), (404, "not_found".into(), None, "unrouted"));
    }

    #[test]
    fn admit_wrong_method_is_405_with_allow() {
        let access = keys();
        let r = admit(Method::Get, "/v1/locks/a/acquire", Some("writer"), true, &access);
        assert_eq!(refused(r, "Allow"), (405, "method_not_allowed".into(), Some("POST".into()), "unrouted"));
        let r = admit(Method::Post, "/v1/locks/a/data/k", Some("writer"), true, &access);
        let allow = Some("GET, HEAD, PUT, DELETE".into());
        assert_eq!(refused(r, "Allow"), (405, "method_not_allowed".into(), allow, "unrouted"));
    }

    #[test]
    fn admit_bad_percent_escape_is_400() {
        let access = keys();
        for target in ["/v1/locks/a%zz/acquire", "/v1/locks/a%2/acquire", "/v1/locks/%ff/acquire"] {
            let r = admit(Method::Post, target, Some("writer"), true, &access);
            assert_eq!(refused(r, "Allow"), (400, "bad_request".into(), None, "unrouted"), "{target}");
        }
    }

    #[test]
    fn admit_missing_or_unknown_key_is_401_with_www_authenticate() {
        let access = keys();
        let challenge = Some(WWW_AUTHENTICATE.to_string());
        for key in [None, Some("nope"), Some("")] {
            // Loopback does not stand in for a key once keys are configured.
            let r = admit(Method::Post, "/v1/locks/a/acquire", key, true, &access);
            assert_eq!(refused(r, "WWW-Authenticate"), (401, "unauthorized".into(), challenge.clone(), "acquire"));
            let r = admit(Method::Put, "/resource/a/s/lock", key, true, &access);
            let expected = (401, "unauthorized".into(), challenge.clone(), "compat_lock");
            assert_eq!(refused(r, "WWW-Authenticate"), expected);
        }
    }

    #[test]
    fn admit_role_too_low_is_403_without_a_challenge() {
        let access = keys();
        let r = admit(Method::Post, "/v1/locks/a/acquire", Some("reader"), false, &access);
        assert_eq!(refused(r, "WWW-Authenticate"), (403, "forbidden".into(), None, "acquire"));
        let r = admit(Method::Put, "/v1/locks/a/data/k", Some("locker"), false, &access);
        assert_eq!(refused(r, "WWW-Authenticate"), (403, "forbidden".into(), None, "data_put"));
        let r = admit(Method::Delete, "/resource/a", Some("locker"), false, &access);
        assert_eq!(refused(r, "WWW-Authenticate"), (403, "forbidden".into(), None, "resource_delete"), "native");
    }

    #[test]
    fn admit_compat_route_role_too_low_is_401_with_www_authenticate() {
        let access = keys();
        let challenge = Some(WWW_AUTHENTICATE.to_string());
        for (method, target, key, label) in [
            (Method::Put, "/resource/a/s/lock", "reader", "compat_lock"),
            (Method::Get, "/resource/a/s", "reader", "compat_get"),
            (Method::Put, "/resource/a/s", "locker", "compat_put"),
            (Method::Post, "/resource", "locker", "compat_create"),
            (Method::Post, "/resource/a/s/unlock", "reader", "compat_unlock"),
        ] {
            let r = admit(method, target, Some(key), false, &access);
            let expected = (401, "unauthorized".into(), challenge.clone(), label);
            assert_eq!(refused(r, "WWW-Authenticate"), expected, "{method:?} {target} with {key}");
        }
        // Reading without the lock needs only `read`.
        let a = admit(Method::Get, "/resource/a/s?lock=0", Some("reader"), false, &access).unwrap();
        assert_eq!((a.def.id, a.grant.role), (RouteId::CompatGet, Role::Read));
    }

    #[test]
    fn admit_name_outside_the_key_prefix_is_403_on_every_kind_of_route() {
        let access = keys();
        let key = Some("team-a-locker");
        let r = admit(Method::Post, "/v1/locks/team-b:x/acquire", key, false, &access);
        assert_eq!(refused(r, "WWW-Authenticate"), (403, "forbidden".into(), None, "acquire"));
        // A prefix refusal stays 403 on the Small Resource Server routes: only the role is 401.
        let r = admit(Method::Put, "/resource/team-b:x/s/lock", key, false, &access);
        assert_eq!(refused(r, "WWW-Authenticate"), (403, "forbidden".into(), None, "compat_lock"));
        // The name is checked decoded.
        let r = admit(Method::Post, "/v1/locks/team-b%3Ax/acquire", key, false, &access);
        assert_eq!(refused(r, "WWW-Authenticate").0, 403);
    }

    #[test]
    fn admit_passes_the_route_params_query_and_the_grant_with_its_prefix() {
        let access = keys();
        let a = admit(Method::Post, "/v1/locks/team-a%3Ajob/acquire?x=1", Some("team-a-locker"), false, &access)
            .expect("admitted");
        assert_eq!(a.def.id, RouteId::Acquire);
        assert_eq!(a.params, vec!["team-a:job".to_string()]);
        assert_eq!(a.query, "x=1");
        assert_eq!(a.grant, Grant { prefix: "team-a:", role: Role::Lock });
        // A route that names no lock is admitted on the role alone; the API narrows it.
        let a = admit(Method::Get, "/v1/locks?prefix=team-b:", Some("team-a-locker"), false, &access).unwrap();
        assert_eq!((a.def.id, a.grant.prefix), (RouteId::LockList, "team-a:"));
        let a = admit(Method::Get, "/v1/locks/any", Some("writer"), false, &access).unwrap();
        assert_eq!(a.grant, Grant { prefix: "", role: Role::Write });
    }

    #[test]
    fn admit_open_routes_need_no_key() {
        let access = keys();
        for (method, target) in [(Method::Get, "/healthz"), (Method::Get, "/readyz"), (Method::Delete, "/health")] {
            let a = admit(method, target, None, false, &access).expect(target);
            assert_eq!(a.params, Vec::<String>::new(), "{target}");
        }
    }

    #[test]
    fn admit_without_keys_serves_loopback_only_unless_insecure() {
        let closed = Access::new(Vec::new(), false);
        let r = admit(Method::Get, "/v1/locks", None, false, &closed);
        assert_eq!(refused(r, "WWW-Authenticate"), (403, "forbidden".into(), None, "lock_list"));
        let a = admit(Method::Get, "/v1/locks", None, true, &closed).unwrap();
        assert_eq!(a.grant, Grant { prefix: "", role: Role::Write });
        let open = Access::new(Vec::new(), true);
        assert!(admit(Method::Post, "/v1/locks/a/acquire", None, false, &open).is_ok());
    }
}
