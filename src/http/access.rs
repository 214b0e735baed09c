//! What the access log may show of a request target. Pure.
//!
//! A ticket is the bearer credential of a lease (whoever has it may renew, release or write
//! under it), so one in a path (`/v1/locks/{name}/tickets/{ticket}`) is masked. In the query
//! only the values of parameters known to hold no secret are kept ([`SHOWN_QUERY_PARAMS`]);
//! every other value (`ticket=`, and whatever a client or a proxy adds, such as a token) is
//! masked, its name kept. Bytes outside printable ASCII are percent-encoded, so a line read
//! back is the line written, and a target is cut at [`MAX_LOGGED_TARGET_BYTES`].

use super::route::ROUTES;

/// What a masked value reads as.
pub const MASK: &str = "***";
/// Longest target a log line shows (a request line may be 8 KiB).
pub const MAX_LOGGED_TARGET_BYTES: usize = 1024;
/// Query parameters whose values are shown: every one the API reads, except `ticket`.
pub const SHOWN_QUERY_PARAMS: &[&str] = &["lock", "state", "limit", "after", "prefix"];

/// The target (path and query, as received) as an access log line shows it.
pub fn loggable_target(target: &str) -> String {
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let mut out = mask_tickets(path);
    if let Some(query) = query {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, value)) if SHOWN_QUERY_PARAMS.contains(&name) => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(value);
                }
                Some((name, _)) => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(MASK);
                }
                None => out.push_str(pair),
            }
        }
    }
    let mut shown = printable(&out);
    if shown.len() > MAX_LOGGED_TARGET_BYTES {
        // All ASCII now: any byte is a character boundary.
        shown.truncate(MAX_LOGGED_TARGET_BYTES);
        shown.push_str("...");
    }
    shown
}

/// `path` with every segment that a route's pattern calls `{ticket}` masked.
fn mask_tickets(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').collect();
    for def in ROUTES.iter().filter(|d| d.pattern.contains("{ticket}")) {
        let pattern: Vec<&str> = def.pattern.split('/').collect();
        let matches = pattern.len() == segments.len()
            && pattern.iter().zip(&segments).all(|(p, s)| if p.starts_with('{') { !s.is_empty() } else { p == s });
        if matches {
            let masked: Vec<&str> =
                pattern.iter().zip(&segments).map(|(p, s)| if *p == "{ticket}" { MASK } else { s }).collect();
            return masked.join("/");
        }
    }
    path.to_string()
}

/// `text` with every byte outside printable ASCII percent-encoded.
fn printable(text: &str) -> String {
    if text.bytes().all(|b| b.is_ascii_graphic()) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for b in text.bytes() {
        if b.is_ascii_graphic() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_targets_are_shown_as_they_came() {
        for target in ["/healthz", "/v1/locks/nightly-report", "/v1/locks?prefix=team-a:&limit=10&after=x", "/"] {
            assert_eq!(loggable_target(target), target);
        }
    }

    #[test]
    fn tickets_in_paths_and_query_values_that_may_be_secret_are_masked() {
        assert_eq!(loggable_target("/v1/locks/job/tickets/Hx3abcSECRET"), "/v1/locks/job/tickets/***");
        assert_eq!(loggable_target("/v1/locks/job/events?ticket=Hx3abcSECRET"), "/v1/locks/job/events?ticket=***");
        assert_eq!(
            loggable_target("/resource/a/b?lock=0&token=SECRET&api_key=SECRET&flag"),
            "/resource/a/b?lock=0&token=***&api_key=***&flag"
        );
        assert_eq!(loggable_target("/v1/outbox?state=failed&limit=5"), "/v1/outbox?state=failed&limit=5");
        // A lock named "tickets" is not a ticket; a data key is not either.
        assert_eq!(loggable_target("/v1/locks/tickets"), "/v1/locks/tickets");
        assert_eq!(loggable_target("/v1/locks/job/data/tickets"), "/v1/locks/job/data/tickets");
    }

    #[test]
    fn hostile_targets_stay_one_printable_bounded_token() {
        let shown = loggable_target("/a b\n\"c\"\u{7f}é");
        assert_eq!(shown, "/a%20b%0A\"c\"%7F%C3%A9");
        let long = format!("/{}", "x".repeat(9000));
        let shown = loggable_target(&long);
        assert_eq!(shown.len(), MAX_LOGGED_TARGET_BYTES + 3);
        assert!(shown.ends_with("..."));
        let secret_late = format!("/v1/locks/{}/tickets/SECRET", "n".repeat(2000));
        assert!(!loggable_target(&secret_late).contains("SECRET"));
        for odd in ["", "?", "??=&=", "/v1/locks//tickets/", "/v1/locks/a/tickets/"] {
            let _ = loggable_target(odd);
        }
    }
}
