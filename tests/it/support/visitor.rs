//! A simulated website visitor without a browser: one kept connection to a site (nginx in
//! front of a waiting room, or the server itself) and a cookie jar of its own, so that tens of
//! visitors can be run side by side where a Chromium each would be too heavy. Keeps every
//! `Set-Cookie` it is answered (name and value; `Max-Age=0` removes), sends them back, and
//! follows redirects itself, hop by hop, so a test sees each answer. Also reads a waiting
//! page's fields by element id. It checks nothing about the server: the tests do.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::http::{Client, Reply};

/// Most redirects [`Visitor::follow`] takes before it gives up (a loop).
pub const MAX_REDIRECTS: usize = 10;

/// One visitor: a cookie jar and a connection, opened again when the site closed it.
pub struct Visitor {
    addr: SocketAddr,
    client: Option<Client>,
    cookies: BTreeMap<String, String>,
}

impl Visitor {
    /// A visitor of the site at `addr`, with no cookies yet.
    pub fn new(addr: SocketAddr) -> Visitor {
        Visitor { addr, client: None, cookies: BTreeMap::new() }
    }

    /// `GET path` (path and query) with the visitor's cookies; keeps the cookies the answer
    /// sets. No redirect is followed.
    pub fn get(&mut self, path: &str) -> Reply {
        self.request("GET", path, &[])
    }

    /// `method path` with the visitor's cookies and `headers`; keeps the cookies the answer
    /// sets. No redirect is followed.
    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let cookie = self.cookie_header();
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if !cookie.is_empty() {
            all.push(("Cookie", &cookie));
        }
        // A kept connection the site closed meanwhile fails at once: once more on a new one.
        let reply = match self.connection().request(method, path, &all, "") {
            Ok(reply) => reply,
            Err(_) => {
                self.client = None;
                self.connection().request(method, path, &all, "").unwrap_or_else(|e| panic!("{method} {path}: {e}"))
            }
        };
        if reply.closes() {
            self.client = None;
        }
        self.keep_cookies(&reply);
        reply
    }

    /// `GET path`, then each redirect's `Location` (a path of the same site, or a URL naming
    /// this site's address), up to [`MAX_REDIRECTS`]; returns every answer in order (the
    /// last is not a redirect) with the path each answered.
    pub fn follow(&mut self, path: &str) -> Vec<(String, Reply)> {
        let mut hops = Vec::new();
        let mut path = path.to_string();
        loop {
            let reply = self.get(&path);
            let next = match reply.status {
                301 | 302 | 303 | 307 | 308 => reply.header("location").map(|l| self.local_path(l)),
                _ => None,
            };
            hops.push((path, reply));
            match next {
                Some(next) => {
                    assert!(hops.len() <= MAX_REDIRECTS, "more than {MAX_REDIRECTS} redirects: {:?}", paths(&hops));
                    path = next;
                }
                None => return hops,
            }
        }
    }

    /// The value of the visitor's cookie `name`.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    /// Every cookie the visitor holds, by name.
    pub fn cookies(&self) -> &BTreeMap<String, String> {
        &self.cookies
    }

    /// Sets the cookie `name` (a forged or borrowed one, say).
    pub fn set_cookie(&mut self, name: &str, value: &str) {
        self.cookies.insert(name.to_string(), value.to_string());
    }

    /// Forgets the cookie `name`.
    pub fn remove_cookie(&mut self, name: &str) {
        self.cookies.remove(name);
    }

    /// The `Cookie` header the visitor sends (empty with no cookies).
    pub fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("; ")
    }

    fn connection(&mut self) -> &mut Client {
        let addr = self.addr;
        self.client.get_or_insert_with(|| Client::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}")))
    }

    /// Keeps the name and value of every `Set-Cookie` of `reply`; one with `Max-Age=0` (or
    /// less) removes the cookie. Path, domain and expiry dates are not looked at: the tests'
    /// cookies are all `Path=/` on one host.
    fn keep_cookies(&mut self, reply: &Reply) {
        for (_, line) in reply.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie")) {
            let mut parts = line.split(';').map(str::trim);
            let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else { continue };
            let gone = parts.any(|attr| {
                attr.split_once('=').is_some_and(|(k, v)| {
                    k.eq_ignore_ascii_case("max-age") && v.parse::<i64>().is_ok_and(|age| age <= 0)
                })
            });
            if gone {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_string(), value.to_string());
            }
        }
    }

    /// A `Location` as a path on this site; panics on one that leaves the site (an open
    /// redirect is a failure for the tests).
    fn local_path(&self, location: &str) -> String {
        if location.starts_with('/') && !location.starts_with("//") {
            return location.to_string();
        }
        let own = format!("http://{}", self.addr);
        match location.strip_prefix(&own) {
            Some("") => "/".to_string(),
            Some(rest) if rest.starts_with('/') => rest.to_string(),
            _ => panic!("a redirect off the site {own}: {location:?}"),
        }
    }
}

fn paths(hops: &[(String, Reply)]) -> Vec<(&str, u16)> {
    hops.iter().map(|(p, r)| (p.as_str(), r.status)).collect()
}

/// The text inside the element with `id="ID"` in `html` (up to the next tag), HTML entities
/// `&amp; &lt; &gt; &quot; &#39;` decoded and whitespace trimmed; None when there is no such
/// element. Enough for the waiting page's `position`, `eta` and `queue-length` fields.
pub fn text_by_id(html: &str, id: &str) -> Option<String> {
    let at = [format!("id=\"{id}\""), format!("id='{id}'"), format!("id={id}>"), format!("id={id} ")]
        .iter()
        .find_map(|needle| html.find(needle.as_str()))?;
    let open_end = at + html[at..].find('>')? + 1;
    let text = &html[open_end..];
    let text = &text[..text.find('<').unwrap_or(text.len())];
    let decoded = text
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    Some(decoded.trim().to_string())
}
