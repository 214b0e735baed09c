//! Target rules: the URL spellings an attacker tries, the address classes, and the host
//! lists on names and on addresses.

use super::*;

fn open() -> TargetPolicy {
    TargetPolicy::default()
}

fn rules(list: &[&str]) -> Vec<HostRule> {
    list.iter().map(|r| HostRule::parse(r).unwrap()).collect()
}

fn is_denied(url: &str, policy: &TargetPolicy) -> bool {
    matches!(parse_target(url, policy), Err(TargetError::Denied { .. }))
}

#[test]
fn parse_target_good_urls_give_scheme_host_port_and_path() {
    let t = parse_target("https://Hooks.Example.com/a/b?x=1#frag", &open()).unwrap();
    assert_eq!((t.scheme(), t.host().as_str(), t.port()), (Scheme::Https, "hooks.example.com", 443));
    assert_eq!(t.as_str(), "https://hooks.example.com/a/b?x=1", "stored as called, without the fragment");
    let t = parse_target("http://192.0.2.7:8080", &open()).unwrap();
    assert_eq!((t.port(), t.url().path(), t.as_str()), (8080, "/", "http://192.0.2.7:8080/"));
    let t = parse_target("http://[2001:db8::1]:81?q", &open()).unwrap();
    assert_eq!((t.host().as_str(), t.port(), t.url().query()), ("2001:db8::1", 81, Some("q")));
    assert_eq!(t.without_query(), "http://[2001:db8::1]:81/");
}

#[test]
fn parse_target_other_schemes_and_malformed_urls_are_refused() {
    for url in ["ftp://h/x", "file:///etc/passwd", "h/x", "javascript:alert(1)", "gopher://h/"] {
        assert_eq!(parse_target(url, &open()), Err(TargetError::Scheme), "{url}");
    }
    for url in
        ["http://", "http://:80/", "http://h:0/", "http://h:99999/", "http://u:p@h/", "http://u@h/", "http://[::1/"]
    {
        assert!(matches!(parse_target(url, &open()), Err(TargetError::Malformed(_))), "{url}");
    }
    for url in ["http://h /", "http://h/\u{e9}", "http://h/\n"] {
        assert!(matches!(parse_target(url, &open()), Err(TargetError::Malformed(_))), "{url}");
    }
    assert_eq!(parse_target(&format!("http://h/{}", "a".repeat(MAX_URL_BYTES)), &open()), Err(TargetError::TooLong));
}

#[test]
fn r12_every_spelling_of_loopback_is_refused_unless_allow_local() {
    for url in [
        "http://127.0.0.1/",
        "http://127.8.9.10:8080/",
        "http://127.1/",
        "http://0x7f000001/",
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://0x7f.1/",
        "http://127.0.0.1./",
        "http://127%2e0.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://[::127.0.0.1]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[2002:7f00:1::]/",
        "http://localhost:8080/",
        "http://LOCALHOST./",
        "http://api.localhost/",
        "http://0.0.0.0/",
        "http://0/",
        "http://[::]/",
    ] {
        assert!(is_denied(url, &open()), "{url}");
        let local = TargetPolicy { allow_local: true, ..open() };
        assert!(parse_target(url, &local).is_ok(), "{url} with allow_local");
    }
}

#[test]
fn r12_link_local_multicast_and_reserved_are_refused_unless_allow_local() {
    for url in [
        "http://169.254.169.254/latest/meta-data",
        "http://0xa9fea9fe/",
        "http://[fe80::1]/",
        "http://224.0.0.1/",
        "http://[ff02::1]/",
        "http://255.255.255.255/",
        "http://240.0.0.1/",
    ] {
        assert!(is_denied(url, &open()), "{url}");
        assert!(parse_target(url, &TargetPolicy { allow_local: true, ..open() }).is_ok(), "{url}");
        assert!(is_denied(url, &TargetPolicy { allow_private: true, ..open() }), "{url} with only allow_private");
    }
}

#[test]
fn r12_private_networks_are_refused_unless_allow_private() {
    for url in [
        "http://10.0.0.7/",
        "http://10.255.255.255/",
        "http://172.16.0.1/",
        "http://172.31.255.1/",
        "http://192.168.1.5/",
        "http://0xc0a80105/",
        "http://100.64.0.1/",
        "http://100.127.255.254/",
        "http://[fc00::1]/",
        "http://[fd12:3456::1]/",
        "http://[fec0::1]/",
        "http://[::ffff:10.0.0.1]/",
    ] {
        assert!(is_denied(url, &open()), "{url}");
        assert!(parse_target(url, &TargetPolicy { allow_private: true, ..open() }).is_ok(), "{url}");
        assert!(is_denied(url, &TargetPolicy { allow_local: true, ..open() }), "{url} with only allow_local");
    }
    // Neighbours of the private blocks are public.
    for url in ["http://172.32.0.1/", "http://100.128.0.1/", "http://11.0.0.1/", "http://192.169.0.1/"] {
        assert!(parse_target(url, &open()).is_ok(), "{url}");
    }
}

#[test]
fn r12_this_hosts_own_addresses_are_refused_unless_allow_local() {
    let policy = TargetPolicy { own_addresses: vec!["203.0.113.9".parse().unwrap()], ..open() };
    assert!(is_denied("http://203.0.113.9/", &policy));
    assert!(is_denied("http://[::ffff:203.0.113.9]/", &policy));
    assert_eq!(
        check_resolved("203.0.113.9".parse().unwrap(), &policy),
        Err(TargetError::Denied { host: "203.0.113.9".into(), why: "an address of this host" })
    );
    assert!(parse_target("http://203.0.113.10/", &policy).is_ok());
    assert!(parse_target("http://203.0.113.9/", &TargetPolicy { allow_local: true, ..policy }).is_ok());
}

#[test]
fn r12_deny_hosts_holds_for_every_spelling_of_an_address() {
    let policy = TargetPolicy { deny_hosts: rules(&["192.0.2.2"]), ..open() };
    for url in [
        "http://192.0.2.2/",
        "http://0xc0000202/",
        "http://3221225986/",
        "http://192%2e0.2.2/",
        "http://192.0.2.2./",
        "http://0300.0.2.2/",
        "http://[::ffff:192.0.2.2]/",
    ] {
        assert!(is_denied(url, &policy), "{url}");
    }
    assert!(parse_target("http://192.0.2.3/", &policy).is_ok());
    // An address rule also holds for the addresses a name resolves to.
    assert!(check_resolved("192.0.2.2".parse().unwrap(), &policy).is_err());
    let block = TargetPolicy { deny_hosts: rules(&["198.51.100.0/24", "2001:db8::/32"]), ..open() };
    assert!(check_resolved("198.51.100.77".parse().unwrap(), &block).is_err());
    assert!(check_resolved("2001:db8:1::5".parse().unwrap(), &block).is_err());
    assert!(check_resolved("198.51.101.1".parse().unwrap(), &block).is_ok());
}

#[test]
fn r12_allow_hosts_cannot_be_escaped_by_backslashes_or_user_info() {
    let policy = TargetPolicy { allow_hosts: rules(&["*.example.com"]), ..open() };
    // The delivery client reads `\` as `/`: the host here is 192.0.2.2, not example.com.
    assert!(is_denied("http://192.0.2.2\\.example.com/x", &policy));
    assert!(is_denied("http://192.0.2.2\\@a.example.com/x", &policy));
    assert!(parse_target("http://a.example.com@192.0.2.2/", &policy).is_err());
    assert!(is_denied("http://example.com.evil.net/", &policy));
    assert!(parse_target("http://a.example.com./x", &policy).is_ok(), "a trailing dot names the same host");
}

#[test]
fn host_lists_take_names_suffixes_addresses_and_blocks() {
    let policy = TargetPolicy {
        allow_hosts: rules(&["*.example.com", "hooks.partner.net", "192.0.2.0/28"]),
        deny_hosts: rules(&["admin.example.com"]),
        ..open()
    };
    for ok in ["https://a.example.com/", "https://x.y.example.com/", "https://HOOKS.partner.net/", "http://192.0.2.9/"]
    {
        assert!(parse_target(ok, &policy).is_ok(), "{ok}");
    }
    for no in [
        "https://example.com/",
        "https://badexample.com/",
        "https://partner.net/",
        "https://admin.example.com/",
        "https://ADMIN.example.com./",
        "http://192.0.2.16/",
    ] {
        assert!(is_denied(no, &policy), "{no}");
    }
}

#[test]
fn host_rule_parse_refuses_what_is_not_a_rule() {
    for bad in ["", "*.", "a b", "10.0.0.0/33", "::/129", "http://x", "x/y", "*.*.x", "a..b"] {
        assert!(HostRule::parse(bad).is_err(), "{bad:?}");
    }
    assert_eq!(HostRule::parse("Hooks.Example.COM.").unwrap(), HostRule::Name("hooks.example.com".into()));
    assert_eq!(HostRule::parse("*.Example.com").unwrap().to_string(), "*.example.com");
    assert_eq!(HostRule::parse("[::1]").unwrap().to_string(), "::1/128");
}

#[test]
fn check_resolved_ordinary_public_addresses_pass() {
    for ip in ["192.0.2.5", "8.8.8.8", "2001:db8::5", "2606:4700::1111"] {
        assert_eq!(check_resolved(ip.parse().unwrap(), &open()), Ok(()), "{ip}");
    }
}
