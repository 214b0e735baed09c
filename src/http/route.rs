//! The one route table: method + path pattern → route, with the role it needs. Path
//! parameters are percent-decoded; the handlers validate them (lock names, tickets).
//! Unknown paths are 404; a known path with another method is 405 with `Allow`.

use super::parse::Method;
use crate::config::Role;

/// Every route the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteId {
    /// Liveness.
    Healthz,
    /// Readiness (the keeper answers).
    Readyz,
    /// Prometheus metrics.
    Metrics,
    /// Take a lease or queue.
    Acquire,
    /// Extend a lease.
    Renew,
    /// Give up a lease or leave the queue.
    Release,
}

/// One row of the route table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteDef {
    /// Method.
    pub method: Method,
    /// Path pattern; `{…}` is one path segment.
    pub pattern: &'static str,
    /// The route.
    pub id: RouteId,
    /// The role a key needs (`None`: open to anyone who can connect).
    pub role: Option<Role>,
    /// Label in metrics.
    pub label: &'static str,
}

/// The route table.
pub const ROUTES: &[RouteDef] = &[
    RouteDef { method: Method::Get, pattern: "/healthz", id: RouteId::Healthz, role: None, label: "healthz" },
    RouteDef { method: Method::Get, pattern: "/readyz", id: RouteId::Readyz, role: None, label: "readyz" },
    RouteDef {
        method: Method::Get,
        pattern: "/metrics",
        id: RouteId::Metrics,
        role: Some(Role::Read),
        label: "metrics",
    },
    RouteDef {
        method: Method::Post,
        pattern: "/v1/locks/{name}/acquire",
        id: RouteId::Acquire,
        role: Some(Role::Lock),
        label: "acquire",
    },
    RouteDef {
        method: Method::Post,
        pattern: "/v1/locks/{name}/renew",
        id: RouteId::Renew,
        role: Some(Role::Lock),
        label: "renew",
    },
    RouteDef {
        method: Method::Post,
        pattern: "/v1/locks/{name}/release",
        id: RouteId::Release,
        role: Some(Role::Lock),
        label: "release",
    },
];

/// Metrics label of requests that matched no route.
pub const LABEL_UNROUTED: &str = "unrouted";

/// A matched request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched<'a> {
    /// The table row.
    pub def: &'static RouteDef,
    /// Path parameters, decoded, in pattern order.
    pub params: Vec<String>,
    /// The query string (without `?`; empty if none).
    pub query: &'a str,
}

/// Why no route matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// No such path.
    NotFound,
    /// The path exists with other methods (listed for `Allow`).
    MethodNotAllowed {
        /// Methods, comma-separated.
        allow: String,
    },
    /// A path segment is not valid percent-encoding.
    BadPath,
}

/// Decodes `%XX` escapes; `None` on a bad escape or a result that is not UTF-8.
pub fn percent_decode(segment: &str) -> Option<String> {
    if !segment.contains('%') {
        return Some(segment.to_string());
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let value = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(value);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Matches `path` against `pattern`, collecting the placeholder segments (not decoded yet).
fn match_path<'a>(pattern: &str, path: &'a str, params: &mut Vec<&'a str>) -> bool {
    params.clear();
    let mut p = pattern.split('/');
    let mut s = path.split('/');
    loop {
        match (p.next(), s.next()) {
            (None, None) => return true,
            (Some(want), Some(got)) if want.starts_with('{') && !got.is_empty() => params.push(got),
            (Some(want), Some(got)) if want == got => {}
            _ => return false,
        }
    }
}

/// Finds the route for `method` and `target` (path and query).
pub fn route(method: Method, target: &str) -> Result<Matched<'_>, RouteError> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut allow: Vec<&str> = Vec::new();
    let mut raw = Vec::new();
    for def in ROUTES {
        if !match_path(def.pattern, path, &mut raw) {
            continue;
        }
        if def.method != method {
            allow.push(def.method.as_str());
            continue;
        }
        let params = raw.iter().map(|p| percent_decode(p)).collect::<Option<Vec<_>>>().ok_or(RouteError::BadPath)?;
        return Ok(Matched { def, params, query });
    }
    if allow.is_empty() {
        Err(RouteError::NotFound)
    } else {
        Err(RouteError::MethodNotAllowed { allow: allow.join(", ") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_in_the_table_resolves_to_itself() {
        for def in ROUTES {
            let path = def.pattern.replace("{name}", "some-lock");
            let target = format!("{path}?x=1");
            let m = route(def.method, &target).unwrap();
            assert_eq!(m.def.id, def.id);
            assert_eq!(m.query, "x=1");
            if def.pattern.contains("{name}") {
                assert_eq!(m.params, vec!["some-lock".to_string()]);
            }
        }
    }

    #[test]
    fn names_are_percent_decoded() {
        let m = route(Method::Post, "/v1/locks/a%3Ab%2Fc/acquire").unwrap();
        assert_eq!(m.params, vec!["a:b/c".to_string()]);
        assert_eq!(route(Method::Post, "/v1/locks/a%zz/acquire"), Err(RouteError::BadPath));
    }

    #[test]
    fn unknown_paths_and_wrong_methods() {
        assert_eq!(route(Method::Get, "/nope"), Err(RouteError::NotFound));
        assert_eq!(route(Method::Post, "/v1/locks//acquire"), Err(RouteError::NotFound));
        assert_eq!(
            route(Method::Get, "/v1/locks/x/acquire"),
            Err(RouteError::MethodNotAllowed { allow: "POST".into() })
        );
        assert_eq!(route(Method::Post, "/healthz/"), Err(RouteError::NotFound));
    }
}
