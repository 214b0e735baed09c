//! Pages for browsers, embedded in the binary (no framework, no build step): each page is
//! an HTML template with its CSS and JavaScript beside it, put together by a pure function
//! from plain values. Everything that comes from configuration or from a request is
//! escaped for where it goes ([`escape_html`], [`json_for_script`]).

pub mod wait;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256};

/// `text` escaped for HTML text and quoted attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A value as JSON text that is safe inside an HTML `<script>` element: `<`, `>`, `&` and
/// the two line separators JavaScript does not allow in strings are written as `\u`
/// escapes, so no value can close the element or start markup.
pub fn json_for_script<T: serde::Serialize>(value: &T) -> String {
    let json = serde_json::to_string(value).unwrap_or_else(|_| "{}".into());
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// The CSP source of an inline element's text: `'sha256-…'`.
pub fn csp_hash(text: &str) -> String {
    format!("'sha256-{}'", STANDARD.encode(Sha256::digest(text.as_bytes())))
}

/// Fills `{{name}}` placeholders of `template` in one pass (a value is never scanned for
/// placeholders again); an unknown name is left as it is.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 1024);
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        match after.find("}}").and_then(|close| {
            values.iter().find(|(name, _)| *name == &after[..close]).map(|(_, value)| (close, *value))
        }) {
            Some((close, value)) => {
                out.push_str(value);
                rest = &after[close + 2..];
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_html_escapes_the_five_specials_and_nothing_else() {
        assert_eq!(
            escape_html(r#"<a href="x">Tom & Jerry's</a> é"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; Jerry&#39;s&lt;/a&gt; é"
        );
    }

    #[test]
    fn json_for_script_cannot_close_the_script() {
        let text = json_for_script(&serde_json::json!({"next": "</script><script>alert(1)</script><!--&"}));
        assert!(!text.contains('<') && !text.contains('>') && !text.contains('&'), "{text}");
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["next"], "</script><script>alert(1)</script><!--&");
    }

    #[test]
    fn fill_replaces_once_and_never_inside_values() {
        let out = fill("{{a}} {{b}} {{c}} {{", &[("a", "{{b}}"), ("b", "2")]);
        assert_eq!(out, "{{b}} 2 {{c}} {{");
    }

    #[test]
    fn csp_hash_is_the_base64_sha256() {
        assert_eq!(csp_hash(""), "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='");
    }
}
