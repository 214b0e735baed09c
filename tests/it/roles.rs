//! The role every route needs, taken from the README's API table rather than from the route
//! table under test: the table is parsed, compared both ways with `ROUTES` (every route is
//! documented with the role it has, `HEAD` and `?lock=0` variants included; every
//! documented route exists), then the real server is driven route by route: a key one role
//! below the documented one is refused with the documented status, a key of exactly the
//! documented role is not.
//!
//! The parser is strict: a row it cannot read fails the test with the row, so a README
//! change cannot silently drop routes from the check. docs/api.md's route table is compared
//! with `ROUTES` both ways too, with each route's role and metrics label.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use leasehold::config::Role;
use leasehold::http::parse::Method;
use leasehold::http::route::{needed_role, route, ROUTES};

use crate::support::http::once;
use crate::support::{config, Server};

const README: &str = include_str!("../../README.md");

/// The heading row of the API table.
const TABLE_HEAD: &str = "| route | role | what |";

/// A query that changes a route's role (`lock=0`), with the role it needs then.
pub type Variant = Option<(String, Option<Role>)>;

/// One documented route: a method (`None`: any) and a path pattern, with its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Documented {
    /// `GET`, `POST`, …; `None` for a path documented without a method (any method).
    pub method: Option<String>,
    /// The path pattern, `{…}` placeholders as the README writes them, without the query.
    pub pattern: String,
    /// The role the README gives (`None`: open, written `—`).
    pub role: Option<Role>,
    /// A query that changes the role, with the role it needs then (`lock=0`).
    pub variant: Variant,
    /// A Small Resource Server route (its row's description says so).
    pub compat: bool,
    /// The README line, for messages.
    pub line: usize,
}

impl Documented {
    /// `METHOD /pattern` as the README would write it.
    pub fn what(&self) -> String {
        format!("{} {}", self.method.as_deref().unwrap_or("(any)"), self.pattern)
    }
}

/// Whether the README says `claim` (line breaks in its text count as spaces).
fn readme_says(claim: &str) -> bool {
    README.split_whitespace().collect::<Vec<_>>().join(" ").contains(claim)
}

/// Every route of the README's API table.
pub fn documented_routes() -> Vec<Documented> {
    parse_table(README).unwrap_or_else(|e| panic!("the README's API table cannot be read: {e}"))
}

/// Parses the API table of `text` (the README, or a piece of one in the parser's own tests).
fn parse_table(text: &str) -> Result<Vec<Documented>, String> {
    let mut lines = text.lines().enumerate().skip_while(|(_, l)| l.trim() != TABLE_HEAD);
    lines.next().ok_or_else(|| format!("no line {TABLE_HEAD:?}"))?;
    let mut out = Vec::new();
    for (index, line) in lines.take_while(|(_, l)| l.starts_with('|')) {
        if line.starts_with("|---") {
            continue;
        }
        let number = index + 1;
        parse_row(line, number, &mut out).map_err(|e| format!("line {number}: {e}: {line}"))?;
    }
    if out.is_empty() {
        return Err("the table has no rows".into());
    }
    Ok(out)
}

/// Splits a table row at the `|` that are not escaped as `\|`, and unescapes them.
fn cells(line: &str) -> Vec<String> {
    let mut cells = vec![String::new()];
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                chars.next();
                cells.last_mut().unwrap().push('|');
            }
            '|' => cells.push(String::new()),
            c => cells.last_mut().unwrap().push(c),
        }
    }
    // A row starts and ends with `|`: drop the empty outer cells.
    cells.into_iter().skip(1).collect::<Vec<_>>().split_last().map(|(_, inner)| inner.to_vec()).unwrap_or_default()
}

/// The code spans of a routes cell, grouped into items: items are separated by `, `
/// outside code spans, spans inside one item by `/` (`PUT`/`POST …/unlock`).
fn items(cell: &str) -> Result<Vec<Vec<String>>, String> {
    let mut items = vec![Vec::new()];
    let mut between = String::new();
    let mut rest = cell.trim();
    while !rest.is_empty() {
        let Some(open) = rest.find('`') else { return Err(format!("text outside a code span: {rest:?}")) };
        between.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('`').ok_or("an unclosed code span")?;
        match between.as_str() {
            "" if items.last().unwrap().is_empty() => {}
            ", " => items.push(Vec::new()),
            "/" => {}
            other => return Err(format!("unexpected text {other:?} between code spans")),
        }
        between.clear();
        items.last_mut().unwrap().push(after[..close].to_string());
        rest = &after[close + 1..];
    }
    if items.iter().any(Vec::is_empty) {
        return Err("an empty route item".into());
    }
    Ok(items)
}

/// A role cell token: `—`, a role name, or a role name with `(read with `q`)`.
fn role_token(token: &str) -> Result<(Option<Role>, Variant), String> {
    let role = |word: &str| match word {
        "—" => Ok(None),
        "read" => Ok(Some(Role::Read)),
        "lock" => Ok(Some(Role::Lock)),
        "write" => Ok(Some(Role::Write)),
        other => Err(format!("unknown role {other:?}")),
    };
    let token = token.trim();
    let (word, rest) = token.split_once(' ').unwrap_or((token, ""));
    let main = role(word)?;
    if rest.is_empty() {
        return Ok((main, None));
    }
    // `(read with `lock=0`)`: another role when the query has this parameter.
    let inner = rest.strip_prefix('(').and_then(|r| r.strip_suffix(')')).ok_or(format!("cannot read {rest:?}"))?;
    let (other, query) = inner.split_once(" with ").ok_or(format!("cannot read {rest:?}"))?;
    let query = query.strip_prefix('`').and_then(|q| q.strip_suffix('`')).ok_or(format!("cannot read {rest:?}"))?;
    Ok((main, Some((query.to_string(), role(other)?))))
}

fn is_method(word: &str) -> bool {
    !word.is_empty() && word.chars().all(|c| c.is_ascii_uppercase())
}

fn parse_row(line: &str, number: usize, out: &mut Vec<Documented>) -> Result<(), String> {
    let cells = cells(line);
    let [routes, roles, what] = cells.as_slice() else { return Err(format!("{} cells, not 3", cells.len())) };
    let items = items(routes)?;
    let separator = if roles.contains(" / ") { " / " } else { ", " };
    let roles = roles.split(separator).map(role_token).collect::<Result<Vec<_>, _>>()?;
    if roles.len() != 1 && roles.len() != items.len() {
        return Err(format!("{} route items but {} roles", items.len(), roles.len()));
    }
    // Split every span into its method and its path (either may be missing).
    let spans: Vec<(usize, Option<String>, Option<String>)> = items
        .iter()
        .enumerate()
        .flat_map(|(i, spans)| spans.iter().map(move |s| (i, s)))
        .map(|(i, span)| {
            let (first, rest) = span.split_once(' ').unwrap_or((span, ""));
            if is_method(first) {
                Ok((i, Some(first.to_string()), Some(rest.to_string()).filter(|r| !r.is_empty())))
            } else if span.starts_with('/') || span.starts_with('…') {
                Ok((i, None, Some(span.to_string())))
            } else {
                Err(format!("cannot read the route {span:?}"))
            }
        })
        .collect::<Result<_, String>>()?;
    let compat = what.trim_start().starts_with("Small Resource Server");
    // The last path written in full: `…` abbreviates it.
    let mut base: Option<String> = None;
    let mut previous_method: Option<String> = None;
    for (k, (item, method, path)) in spans.iter().enumerate() {
        // A method alone takes the path of the next span that has one.
        let path = match path {
            Some(p) => p.clone(),
            None => spans[k + 1..].iter().find_map(|(_, _, p)| p.clone()).ok_or("a method without a path")?,
        };
        // A path alone takes the method before it in the row (none at all: any method).
        let method = method.clone().or_else(|| previous_method.clone());
        previous_method = method.clone();
        let (path, optional_query) = match path.split_once('[') {
            Some((p, opt)) => {
                let q =
                    opt.strip_suffix(']').and_then(|q| q.strip_prefix('?')).ok_or("cannot read an optional part")?;
                (p.to_string(), Some(q.to_string()))
            }
            None => (path, None),
        };
        let path = path.split_once('?').map_or(path.as_str(), |(p, _)| p).to_string();
        let pattern = match path.strip_prefix('…') {
            Some(tail) => {
                let base = base.as_deref().ok_or("`…` with no path before it")?;
                let first = tail.trim_start_matches('/').split('/').next().unwrap_or_default();
                let cut = base
                    .split('/')
                    .position(|s| s == first)
                    .map_or(base.to_string(), |at| base.split('/').take(at).collect::<Vec<_>>().join("/"));
                format!("{cut}{tail}")
            }
            None => {
                base = Some(path.clone());
                path
            }
        };
        if !pattern.starts_with('/') {
            return Err(format!("cannot read the path {pattern:?}"));
        }
        let (role, variant) = roles[if roles.len() == 1 { 0 } else { *item }].clone();
        if variant.as_ref().map(|(q, _)| q) != optional_query.as_ref() && variant.is_some() {
            return Err(format!("the role names `{:?}` but the route's optional query is {optional_query:?}", variant));
        }
        out.push(Documented { method, pattern, role, variant, compat, line: number });
    }
    Ok(())
}

/// A concrete path for a pattern.
pub fn example_path(pattern: &str) -> String {
    pattern
        .replace("{name}", "guarded")
        .replace("{ticket}", "AAAAAAAAAAAAAAAAAAAAAA")
        .replace("{key}", "k")
        .replace("{selector}", "sel")
        .replace("{id}", "AAAAAAAAAAAAAAAAAAAAAA")
}

/// One documented route in a line: method, pattern, role, and whether it is compat.
fn summary(d: &Documented) -> String {
    let role = d.role.map_or("—", leasehold::http::auth::role_name);
    format!("{} {role}{}", d.what(), if d.compat { " compat" } else { "" })
}

fn method_name(method: Option<Method>) -> Option<String> {
    method.map(|m| m.as_str().to_string())
}

#[test]
fn r22_the_api_table_parser_reads_every_row_shape_the_readme_uses() {
    let text = "\
| route | role | what |
|---|---|---|
| `POST /a/{name}/x` | lock | one |
| `GET /a/{name}/events?ticket=` | read | a query \\| with a pipe |
| `PUT`, `DELETE /a/{name}/data/{key}` | write | one role for both |
| `GET`, `DELETE /o/{id}` | read, write | a role each |
| `/health`, `POST /r`, `GET /r/{name}/{s}[?lock=0]`, `PUT …/lock`, `PUT …/{s}`, `PUT`/`POST …/unlock` | — / write / lock (read with `lock=0`) / lock / write / lock | Small Resource Server, below |
| `GET /healthz`, `/readyz`, `/metrics` | —, —, read | three |

after the table
";
    let got: Vec<String> = parse_table(text).unwrap().iter().map(summary).collect();
    let want = [
        "POST /a/{name}/x lock",
        "GET /a/{name}/events read",
        "PUT /a/{name}/data/{key} write",
        "DELETE /a/{name}/data/{key} write",
        "GET /o/{id} read",
        "DELETE /o/{id} write",
        "(any) /health — compat",
        "POST /r write compat",
        "GET /r/{name}/{s} lock compat",
        "PUT /r/{name}/{s}/lock lock compat",
        "PUT /r/{name}/{s} write compat",
        "PUT /r/{name}/{s}/unlock lock compat",
        "POST /r/{name}/{s}/unlock lock compat",
        "GET /healthz —",
        "GET /readyz —",
        "GET /metrics read",
    ];
    assert_eq!(got, want);
    let lock0 = parse_table(text).unwrap().into_iter().find(|d| d.pattern == "/r/{name}/{s}").unwrap();
    assert_eq!(lock0.variant, Some(("lock=0".to_string(), Some(Role::Read))));
    // Rows it cannot read are errors, never skipped.
    for bad in [
        "| `POST /a` | admin | x |",
        "| `POST /a`, `GET /b` | read, write, lock | x |",
        "| POST /a | read | x |",
        "| `POST /a` | read |",
        "| `POST` | read | x |",
        "| `POST /a` and `GET /b` | read | x |",
    ] {
        let table = format!("{TABLE_HEAD}\n|---|---|---|\n{bad}\n");
        assert!(parse_table(&table).is_err(), "{bad} was read as {:?}", parse_table(&table));
    }
}

#[test]
fn r22_every_route_has_the_role_the_readme_documents_and_every_documented_route_exists() {
    let documented = documented_routes();
    for (i, d) in documented.iter().enumerate() {
        let twice = documented[..i].iter().find(|e| e.method == d.method && e.pattern == d.pattern);
        assert!(
            twice.is_none(),
            "{} is documented twice (README lines {} and {})",
            d.what(),
            twice.unwrap().line,
            d.line
        );
    }
    // Every route of the table is documented, with the role it has.
    for def in ROUTES {
        let method = method_name(def.method);
        let doc = documented.iter().find(|d| d.method == method && d.pattern == def.pattern).unwrap_or_else(|| {
            panic!(
                "{} {} ({:?}) is in the route table but not in the README's API table",
                method.as_deref().unwrap_or("(any)"),
                def.pattern,
                def.id
            )
        });
        assert_eq!(
            def.role,
            doc.role,
            "{}: the route table's role differs from the README's (line {})",
            doc.what(),
            doc.line
        );
        if let Some((query, role)) = &doc.variant {
            assert_eq!(needed_role(def, query), *role, "{}?{query}: the role differs from the README's", doc.what());
        }
    }
    // Every documented route exists, with that role, and every documented GET takes HEAD.
    let heads = readme_says("Every `GET` route also takes `HEAD`.");
    assert!(heads, "the README no longer says that every GET route takes HEAD: update this test");
    let mut checked = 0;
    for doc in &documented {
        let path = example_path(&doc.pattern);
        let methods: Vec<Method> = match doc.method.as_deref() {
            None => vec![Method::Get, Method::Post, Method::Delete],
            Some("GET") => vec![Method::Get, Method::Head],
            Some(m) => vec![[Method::Post, Method::Put, Method::Delete, Method::Patch]
                .into_iter()
                .find(|x| x.as_str() == m)
                .unwrap_or_else(|| panic!("README line {}: unknown method {m}", doc.line))],
        };
        for method in methods {
            let m = route(method, &path).unwrap_or_else(|e| {
                panic!("{} {path} (README line {}) is not routed: {e:?}", method.as_str(), doc.line)
            });
            assert_eq!(m.def.pattern, doc.pattern, "{} {path} reaches another route", method.as_str());
            assert_eq!(
                needed_role(m.def, ""),
                doc.role,
                "{} {path}: the role differs from the README's",
                method.as_str()
            );
            checked += 1;
        }
    }
    assert!(checked >= ROUTES.len(), "only {checked} documented routes were checked");
}

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
";

/// A key of exactly `role`.
fn key_of(role: Role) -> &'static str {
    match role {
        Role::Read => "read-secret",
        Role::Lock => "lock-secret",
        Role::Write => "write-secret",
    }
}

/// A key one role below `role` (no key at all below `read`).
fn key_below(role: Role) -> Option<&'static str> {
    match role {
        Role::Read => None,
        Role::Lock => Some("read-secret"),
        Role::Write => Some("lock-secret"),
    }
}

/// The status of a `HEAD` request (its answer has a head only, whatever its
/// `Content-Length` says).
fn head_status(addr: SocketAddr, path: &str, key: Option<&str>) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let key = key.map(|k| format!("x-api-key: {k}\r\n")).unwrap_or_default();
    write!(stream, "HEAD {path} HTTP/1.1\r\nHost: test\r\n{key}Connection: close\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).unwrap_or_else(|e| panic!("HEAD {path}: {e}"));
        assert!(n == 1, "HEAD {path}: closed before a whole head: {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("HEAD {path}: bad head {text:?}"))
}

#[test]
fn r22_every_documented_route_refuses_a_key_one_role_below_and_admits_the_documented_role() {
    // What the README says about refusals: 401 without a valid key, 403 for a role too
    // low, but 401 on the Small Resource Server routes.
    for claim in ["401 `unauthorized`", "403 `forbidden`", "on the Small Resource Server routes a role too low is 401"]
    {
        assert!(readme_says(claim), "the README no longer says {claim:?}: update this test");
    }
    let s = Server::start(&config("workers = 1", KEYS));
    let mut cases: Vec<(String, String, Option<Role>, bool)> = Vec::new();
    for doc in documented_routes() {
        let mut path = example_path(&doc.pattern);
        if doc.pattern.ends_with("/events") {
            path.push_str("?ticket=AAAAAAAAAAAAAAAAAAAAAA");
        }
        let methods: Vec<&str> = match doc.method.as_deref() {
            None => vec!["GET", "POST"],
            Some("GET") => vec!["GET", "HEAD"],
            Some(m) => vec![m],
        };
        for method in methods {
            cases.push((method.to_string(), path.clone(), doc.role, doc.compat));
            if let Some((query, role)) = &doc.variant {
                let sep = if path.contains('?') { '&' } else { '?' };
                cases.push((method.to_string(), format!("{path}{sep}{query}"), *role, doc.compat));
            }
        }
    }
    let status = |method: &str, path: &str, key: Option<&str>| {
        if method == "HEAD" {
            return (head_status(s.addr, path, key), None);
        }
        let headers: Vec<(&str, &str)> = key.map(|k| vec![("x-api-key", k)]).unwrap_or_default();
        let body = if path == "/resource" { r#"{"name":"guarded","timeout":-1}"# } else { "{}" };
        let r = once(s.addr, method, path, &headers, body);
        let code =
            (r.status == 401 || r.status == 403).then(|| r.json()["error"].as_str().unwrap_or_default().to_string());
        (r.status, code)
    };
    for (method, path, role, compat) in &cases {
        let what = format!("{method} {path}");
        let Some(role) = role else {
            let (open, _) = status(method, path, None);
            assert!(open != 401 && open != 403, "{what} is documented open, got {open}");
            continue;
        };
        let below = key_below(*role);
        let expected = match below {
            None => (401, "unauthorized"),
            Some(_) if *compat => (401, "unauthorized"),
            Some(_) => (403, "forbidden"),
        };
        let (refused, code) = status(method, path, below);
        assert_eq!(refused, expected.0, "{what} with a key below {role:?} ({below:?})");
        if let Some(code) = code {
            assert_eq!(code, expected.1, "{what}: the error code");
        }
        let (admitted, _) = status(method, path, Some(key_of(*role)));
        assert!(admitted != 401 && admitted != 403, "{what} with a {role:?} key was refused: {admitted}");
    }
    println!("{} documented requests checked", cases.len());
    assert!(cases.len() >= ROUTES.len() + 8, "only {} cases", cases.len());
}

/// One row of docs/api.md's route table: methods (`None`: any), path pattern (query
/// dropped), role (the cell's first word), metrics label.
type ApiDocRow = (Vec<Option<String>>, String, Option<Role>, String);

/// The rows of docs/api.md's route table.
fn api_doc_rows() -> Vec<ApiDocRow> {
    const API_DOC: &str = include_str!("../../docs/api.md");
    const HEAD: &str = "| method | path | role | metrics label | what |";
    let mut lines = API_DOC.lines().skip_while(|l| l.trim() != HEAD);
    assert!(lines.next().is_some(), "docs/api.md has no route table ({HEAD:?})");
    let mut rows = Vec::new();
    for line in lines.take_while(|l| l.starts_with('|')).filter(|l| !l.starts_with("|---")) {
        let cells = cells(line);
        assert_eq!(cells.len(), 5, "docs/api.md: a route row of 5 cells: {line}");
        let unquote = |s: &str| s.trim().trim_matches('`').to_string();
        let methods: Vec<Option<String>> = match cells[0].trim() {
            "any" => vec![None],
            list => list.split(", ").map(|m| Some(unquote(m))).collect(),
        };
        let path = unquote(&cells[1]);
        let pattern = path.split('?').next().unwrap_or_default().to_string();
        let (role, _) = role_token(cells[2].split(" (").next().unwrap_or_default())
            .unwrap_or_else(|e| panic!("docs/api.md: {e}: {line}"));
        rows.push((methods, pattern, role, unquote(&cells[3])));
    }
    assert!(!rows.is_empty(), "docs/api.md's route table has no rows");
    rows
}

#[test]
fn docs_api_lists_every_route_with_its_role_and_metrics_label_and_nothing_else() {
    let rows = api_doc_rows();
    let mut documented = Vec::new();
    for (methods, pattern, role, label) in &rows {
        for method in methods {
            documented.push((method.clone(), pattern.clone(), *role, label.clone()));
        }
    }
    // Every route of the table is in the reference, with its role and label.
    for def in ROUTES {
        let method = method_name(def.method);
        let doc = documented.iter().find(|d| d.0 == method && d.1 == def.pattern).unwrap_or_else(|| {
            panic!(
                "{} {} is in the route table but not in docs/api.md",
                method.as_deref().unwrap_or("any"),
                def.pattern
            )
        });
        assert_eq!((doc.2, doc.3.as_str()), (def.role, def.label), "docs/api.md: {:?} {}", method, def.pattern);
    }
    // Everything in the reference is a route.
    for (method, pattern, _, _) in &documented {
        let exists = ROUTES.iter().any(|def| method_name(def.method) == *method && def.pattern == pattern);
        assert!(exists, "docs/api.md documents {method:?} {pattern}, which is not a route");
    }
}
