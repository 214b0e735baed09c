//! The waiting page of a room (`GET /v1/rooms/{room}/wait`, docs/api.md "Waiting rooms"):
//! where the visitor stands, a `<noscript>` meta refresh that keeps the place without
//! JavaScript, and a small script that follows the visitor's ticket over Server-Sent Events
//! and reloads the page once admitted (the wait route, or the proxy's gate, then sends the
//! visitor on). Also the page of a room that cannot take more visitors now.
//!
//! The page's style and script are inline, allowed by their hashes in the
//! `Content-Security-Policy` ([`content_security_policy`]); the room's state reaches the
//! script as JSON in `<script type="application/json" id="room-state">`, never as code.

use super::{csp_hash, escape_html, fill, json_for_script};

const TEMPLATE: &str = include_str!("wait.html");
const STYLE: &str = include_str!("wait.css");
const SCRIPT: &str = include_str!("wait.js");

/// Shortest and longest meta refresh, in seconds.
const REFRESH_S: (u64, u64) = (1, 5);

/// What the waiting page shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitPage<'a> {
    /// The room's name.
    pub room: &'a str,
    /// Heading (plain text).
    pub title: &'a str,
    /// Message (plain text).
    pub message: &'a str,
    /// Place in line (1 is next), if known.
    pub position: Option<u32>,
    /// Waiters in line.
    pub queue_length: u32,
    /// Estimated wait, if the lock has a history.
    pub eta_ms: Option<u64>,
    /// Seconds between reloads without JavaScript.
    pub refresh_s: u64,
    /// The event stream of the visitor's ticket (path and query, token included).
    pub events: &'a str,
    /// Where the visitor goes once admitted.
    pub next: &'a str,
}

/// Seconds between reloads of a page without JavaScript: a third of the waiter TTL (so a
/// missed reload or two does not lose the place), 1 to 5 s, rounded to whole seconds.
pub fn refresh_s(waiter_ttl_ms: u64) -> u64 {
    ((waiter_ttl_ms / 3 + 500) / 1000).clamp(REFRESH_S.0, REFRESH_S.1)
}

/// An estimated wait as words.
pub fn eta_text(eta_ms: Option<u64>) -> String {
    match eta_ms {
        None => "unknown".into(),
        Some(ms) if ms < 60_000 => "less than a minute".into(),
        Some(ms) => {
            let minutes = ms.div_ceil(60_000);
            if minutes < 120 {
                format!("about {minutes} minutes")
            } else {
                format!("about {} hours", (minutes + 30) / 60)
            }
        }
    }
}

/// The page, as HTML.
pub fn render(p: &WaitPage<'_>) -> String {
    let state = serde_json::json!({
        "room": p.room,
        "events": p.events,
        "next": p.next,
        "position": p.position,
        "queue_length": p.queue_length,
        "eta_ms": p.eta_ms,
        "refresh_s": p.refresh_s,
    });
    let position = p.position.map_or_else(|| "—".to_string(), |n| n.to_string());
    fill(
        TEMPLATE,
        &[
            ("title", &escape_html(p.title)),
            ("message", &escape_html(p.message)),
            ("position", &position),
            ("queue_length", &p.queue_length.to_string()),
            ("eta", &eta_text(p.eta_ms)),
            ("refresh_s", &p.refresh_s.to_string()),
            ("state", &json_for_script(&state)),
            ("style", STYLE),
            ("script", SCRIPT),
        ],
    )
}

/// The page of a room that takes nobody more now (its queue or the server is full): it
/// says so and tries again after `refresh_s` (a meta refresh that works with or without
/// JavaScript).
pub fn render_full(title: &str, refresh_s: u64) -> String {
    let title = escape_html(title);
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta http-equiv=\"refresh\" content=\"{refresh_s}\">\n<title>{title}</title>\n\
         <style>{STYLE}</style>\n</head>\n<body>\n<main>\n<h1>{title}</h1>\n\
         <p class=\"message\" role=\"status\">The line is full right now. This page tries again in \
         {refresh_s} seconds.</p>\n</main>\n</body>\n</html>\n"
    )
}

/// The page's `Content-Security-Policy`: nothing but this page's own style and script (by
/// hash), event streams and reloads on this site, no framing.
pub fn content_security_policy() -> String {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        csp_hash(SCRIPT),
        csp_hash(STYLE)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page<'a>(title: &'a str, message: &'a str, next: &'a str) -> WaitPage<'a> {
        WaitPage {
            room: "shop",
            title,
            message,
            position: Some(3),
            queue_length: 7,
            eta_ms: Some(90_000),
            refresh_s: 4,
            events: "/v1/rooms/shop/events?token=abc.def",
            next,
        }
    }

    #[test]
    fn render_shows_position_queue_and_eta_in_their_elements() {
        let html = render(&page("Shop", "Wait", "/x"));
        assert!(html.starts_with("<!DOCTYPE html>\n<html lang=\"en\">"), "{html}");
        assert!(html.contains(r#"aria-live="polite">3</dd>"#), "{html}");
        assert!(html.contains(r#"id="queue-length" aria-labelledby="queue-length-label">7</dd>"#), "{html}");
        assert!(html.contains(r#"id="eta" aria-labelledby="eta-label">about 2 minutes</dd>"#), "{html}");
        assert!(html.contains(r#"<noscript><meta http-equiv="refresh" content="4"></noscript>"#), "{html}");
        assert!(html.contains(r#"name="viewport""#) && html.contains("<main>") && html.contains("<h1>Shop</h1>"));
        assert!(html.contains("prefers-reduced-motion: reduce"), "animations can be turned off");
        assert!(!html.contains("{{"), "every placeholder is filled: {html}");
        let handler = html.split_whitespace().any(|w| w.starts_with("on") && w.contains("=\""));
        assert!(!handler, "no inline event handlers");
        let state = html.split(r#"id="room-state">"#).nth(1).unwrap().split("</script>").next().unwrap();
        let state: serde_json::Value = serde_json::from_str(state).unwrap();
        assert_eq!(state["events"], "/v1/rooms/shop/events?token=abc.def");
        assert_eq!(state["next"], "/x");
    }

    #[test]
    fn render_escapes_room_texts_and_the_return_path() {
        let html = render(&page("<b>Shop</b> & co", "\"quoted\" <script>alert(1)</script>", "/x</script><script>"));
        assert!(html.contains("<h1>&lt;b&gt;Shop&lt;/b&gt; &amp; co</h1>"), "{html}");
        assert!(html.contains("<title>&lt;b&gt;Shop&lt;/b&gt; &amp; co</title>"), "{html}");
        assert!(html.contains("&quot;quoted&quot; &lt;script&gt;alert(1)&lt;/script&gt;"), "{html}");
        assert_eq!(html.matches("<script").count(), 2, "only the page's own two scripts: {html}");
        assert!(html.contains(r#"/x\u003c/script\u003e\u003cscript\u003e"#), "{html}");
        // A title that names a placeholder is shown as it is.
        let html = render(&page("{{message}}", "m", "/"));
        assert!(html.contains("<h1>{{message}}</h1>"), "{html}");
    }

    #[test]
    fn content_security_policy_allows_exactly_the_inline_script_and_style() {
        let csp = content_security_policy();
        assert!(csp.contains(&csp_hash(SCRIPT)) && csp.contains(&csp_hash(STYLE)), "{csp}");
        assert!(csp.starts_with("default-src 'none'") && !csp.contains("unsafe-inline"), "{csp}");
        // The hashed text is exactly what sits between the page's tags.
        let html = render(&page("t", "m", "/"));
        assert!(
            html.contains(&format!("<script>{SCRIPT}</script>")) && html.contains(&format!("<style>{STYLE}</style>"))
        );
    }

    #[test]
    fn refresh_is_a_third_of_the_waiter_ttl_between_1_and_5_seconds() {
        assert_eq!([1_000, 3_000, 9_000, 12_000, 30_000, 600_000].map(refresh_s), [1, 1, 3, 4, 5, 5]);
        assert_eq!(eta_text(None), "unknown");
        assert_eq!(eta_text(Some(59_999)), "less than a minute");
        assert_eq!(eta_text(Some(60_001)), "about 2 minutes");
        assert_eq!(eta_text(Some(3 * 3_600_000)), "about 3 hours");
    }

    #[test]
    fn render_full_escapes_and_refreshes() {
        let html = render_full("<Shop>", 3);
        assert!(html.contains(r#"<meta http-equiv="refresh" content="3">"#) && html.contains("<h1>&lt;Shop&gt;</h1>"));
    }
}
