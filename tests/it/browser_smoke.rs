//! The rig the waiting-room and dashboard tests stand on, checked on its own: headless
//! Chromium over WebDriver against the real server (a page loaded, read, scripted, and kept
//! as a screenshot that is a whole PNG), with and without JavaScript (the meta refresh a
//! waiting page falls back on); and `contrib/nginx/waiting-room.conf`, included unmodified,
//! that passes `nginx -t`, fails closed in front of a server with no such room, and routes
//! a visitor through a stand-in gate and waiting page (nginx server blocks here, not
//! leasehold's) to the origin with the admitted ticket, which only nginx can set.

use std::net::SocketAddr;

use crate::support::browser::{png_size, Browser, Options, WINDOW};
use crate::support::nginx::{self, waiting_room_conf, waiting_room_http, Nginx};
use crate::support::visitor::{text_by_id, Visitor};
use crate::support::{config, Server};

#[test]
fn browser_smoke_chromium_reads_a_page_of_the_server_and_keeps_a_png_screenshot() {
    let s = Server::start(&config("workers = 1", ""));
    let browser = Browser::start("browser_smoke");
    let url = format!("http://{}/healthz", s.addr);
    browser.goto(&url);
    assert_eq!(browser.url(), url);
    let body = browser.wait_text("body", "the health answer on the page", |t| t.contains("\"status\":\"ok\""));
    assert!(browser.source().contains("\"status\":\"ok\""), "{body}");
    assert_eq!(browser.execute("return arguments[0] + 1;", &[serde_json::json!(41)]), serde_json::json!(42));
    assert_eq!(browser.text("#no-such-element"), None);
    assert!(browser.cookies().is_empty(), "{:?}", browser.cookies());
    browser.add_cookie("lh_place_smoke", "forged");
    assert_eq!(browser.cookie("lh_place_smoke").as_deref(), Some("forged"));
    browser.delete_cookies();
    assert_eq!(browser.cookie("lh_place_smoke"), None);

    let path = browser.screenshot("healthz");
    let png = std::fs::read(&path).unwrap();
    let (width, height) = png_size(&png).unwrap_or_else(|e| panic!("{}: not a PNG: {e}", path.display()));
    assert!(path.starts_with(crate::support::browser::artifacts_dir("browser_smoke")), "{}", path.display());
    assert_eq!((width, height), WINDOW, "the viewport's size");
}

/// An nginx server block on `listen` with two pages: `/a` refreshes to `/b` after a second,
/// in `<noscript>` (as the waiting page does), and says whether JavaScript ran.
fn refresh_pages(listen: SocketAddr) -> String {
    format!(
        "server {{
        listen {listen};
        default_type text/html;
        location = /a {{
            return 200 '<!doctype html><html lang=\"en\"><head><title>a</title><noscript><meta http-equiv=\"refresh\" content=\"1; url=/b\"></noscript></head><body><p id=\"js\">off</p><script>document.getElementById(\"js\").textContent = \"on\";</script></body></html>';
        }}
        location = /b {{
            return 200 '<!doctype html><html lang=\"en\"><head><title>b</title></head><body><p id=\"page\">b</p></body></html>';
        }}
    }}"
    )
}

#[test]
fn browser_smoke_without_javascript_the_noscript_meta_refresh_moves_the_page_on() {
    let pages = Nginx::start(&[], 1, |_, addrs| refresh_pages(addrs[0]));
    let a = format!("http://{}/a", pages.addr());

    let scripted = Browser::start("browser_smoke_no_js");
    scripted.goto(&a);
    assert_eq!(scripted.wait_text("#js", "the script to run", |t| t == "on"), "on");
    let plain = Browser::start_with("browser_smoke_no_js", Options { javascript: false });
    plain.goto(&a);
    assert_eq!(plain.text("#js").as_deref(), Some("off"), "no script ran");
    plain.wait_url("the meta refresh to /b", |u| u.ends_with("/b"));
    assert_eq!(plain.wait_text("#page", "page b", |t| t == "b"), "b");
    assert_eq!(plain.title(), "b");
    plain.refresh();
    assert_eq!(plain.wait_text("#page", "page b again", |t| t == "b"), "b");
    plain.screenshot("refreshed");
    // With JavaScript the noscript refresh is not followed.
    assert!(scripted.url().ends_with("/a"), "{}", scripted.url());
}

#[test]
fn contrib_waiting_room_conf_passes_nginx_t() {
    let include = waiting_room_conf();
    let said = nginx::check(&[], 3, |_, a| waiting_room_http("shop", a[2], a[0], a[1], &include))
        .unwrap_or_else(|said| panic!("nginx -t refused the contrib config:\n{said}"));
    assert!(said.contains("test is successful"), "{said}");
}

#[test]
fn contrib_waiting_room_in_front_of_a_server_without_the_room_fails_closed() {
    let s = Server::start(&config("workers = 1", ""));
    let site = Nginx::waiting_room("shop", s.addr);
    let mut visitor = Visitor::new(site.addr());
    // The gate has no room "shop" to check against: nobody gets through.
    let page = visitor.get("/products");
    assert_eq!(page.status, 500, "{}", String::from_utf8_lossy(&page.body));
    // The room's own paths reach the server (which has no such room).
    let events = visitor.get("/v1/rooms/shop/events?token=nothing");
    assert_eq!(events.status, 404, "{}", String::from_utf8_lossy(&events.body));
    assert_eq!(events.json()["error"], "not_found", "{}", String::from_utf8_lossy(&events.body));
    assert!(site.origin_requests().is_empty(), "{:?}", site.origin_requests());
}

/// A stand-in for leasehold's room routes on `listen`, as nginx server blocks: the gate
/// admits the session cookie `admitted-7` (ticket `t7`, fence 7); the wait page hands out
/// the place cookie `p7` at the first visit (position 3, echoing the method, query and
/// `X-Original-URI` it got) and, when that cookie comes back, the session cookie with a
/// 303 to `X-Original-URI`; the events path sends one event, chunked.
fn stand_in_leasehold(listen: SocketAddr) -> String {
    format!(
        "server {{
        listen {listen};
        absolute_redirect off;
        location = /v1/rooms/shop/gate {{
            if ($cookie_lh_session_shop = admitted-7) {{
                add_header X-Leasehold-Ticket t7;
                add_header X-Leasehold-Fence 7;
                return 200;
            }}
            return 401;
        }}
        location = /v1/rooms/shop/wait {{
            if ($cookie_lh_place_shop = p7) {{
                add_header Set-Cookie 'lh_session_shop=admitted-7; Path=/; HttpOnly; SameSite=Lax';
                add_header Set-Cookie 'lh_place_shop=; Path=/; Max-Age=0';
                return 303 $http_x_original_uri;
            }}
            add_header Set-Cookie 'lh_place_shop=p7; Path=/; HttpOnly; SameSite=Lax';
            add_header Cache-Control no-store;
            default_type text/html;
            return 200 '<!doctype html><html lang=\"en\"><head><title>Waiting</title></head><body><main><h1>Waiting</h1><p>Position <span id=\"position\">3</span></p><p id=\"method\">$request_method</p><p id=\"args\">$args</p><p id=\"original\">$http_x_original_uri</p></main></body></html>';
        }}
        location = /v1/rooms/shop/events {{
            default_type text/event-stream;
            # A body filter drops the length: sent chunked, as leasehold's endless stream is.
            sub_filter_types text/event-stream;
            sub_filter position position;
            return 200 'event: position\\ndata: {{\"position\":3}}\\n\\n';
        }}
    }}"
    )
}

#[test]
fn contrib_waiting_room_sends_a_visitor_through_the_gate_and_the_waiting_page_to_the_origin() {
    let include = waiting_room_conf();
    let site = Nginx::start(&[], 3, |_, a| {
        format!("{}\n    {}", waiting_room_http("shop", a[2], a[0], a[1], &include), stand_in_leasehold(a[2]))
    });
    let conf = std::fs::read_to_string(site.dir().join("nginx.conf")).unwrap();
    assert!(conf.contains(&format!("include {};", include.display())), "{conf}");
    let mut visitor = Visitor::new(site.addr());

    // No session: the waiting page at the URL asked for, told that URL, not its query.
    let page = visitor.get("/products?page=2");
    let html = String::from_utf8_lossy(&page.body).to_string();
    assert_eq!(page.status, 200, "{html}");
    assert_eq!(text_by_id(&html, "position").as_deref(), Some("3"), "{html}");
    assert_eq!(text_by_id(&html, "original").as_deref(), Some("/products?page=2"), "{html}");
    assert_eq!(text_by_id(&html, "args").as_deref(), Some(""), "{html}");
    assert_eq!(visitor.cookie("lh_place_shop"), Some("p7"));
    // A form's POST gets the same page, asked for with a GET.
    let posted = Visitor::new(site.addr()).request("POST", "/checkout", &[("X-Leasehold-Ticket", "forged")]);
    let html = String::from_utf8_lossy(&posted.body).to_string();
    assert_eq!((posted.status, text_by_id(&html, "method").as_deref()), (200, Some("GET")), "{html}");

    // The place cookie back: admitted, the session cookie set, sent back to the URL.
    let hops = visitor.follow("/products?page=2");
    let statuses: Vec<(&str, u16)> = hops.iter().map(|(p, r)| (p.as_str(), r.status)).collect();
    assert_eq!(statuses, [("/products?page=2", 303), ("/products?page=2", 200)]);
    assert_eq!(visitor.cookie("lh_session_shop"), Some("admitted-7"));
    let names: Vec<&String> = visitor.cookies().keys().collect();
    assert_eq!(names, ["lh_session_shop"], "the place cookie cleared");
    let origin = String::from_utf8_lossy(&hops[1].1.body).to_string();
    assert_eq!(text_by_id(&origin, "origin").as_deref(), Some("The origin"), "{origin}");
    assert_eq!(text_by_id(&origin, "ticket").as_deref(), Some("t7"), "{origin}");
    // A visitor's own ticket header does not reach the origin: nginx sets it from the gate.
    let own = visitor.request("GET", "/cart", &[("X-Leasehold-Ticket", "forged")]);
    assert_eq!(text_by_id(&String::from_utf8_lossy(&own.body), "ticket").as_deref(), Some("t7"));
    // Without the session cookie, back to the waiting page.
    visitor.remove_cookie("lh_session_shop");
    assert_eq!(text_by_id(&String::from_utf8_lossy(&visitor.get("/cart").body), "position").as_deref(), Some("3"));

    // Only this room's page and event stream are reachable; not the gate, not other rooms.
    let mut stranger = Visitor::new(site.addr());
    assert_eq!(stranger.get("/.leasehold/gate").status, 404);
    assert_eq!(stranger.get("/v1/rooms/other/wait").status, 404);
    let direct = stranger.request("GET", "/v1/rooms/shop/wait?next=/products", &[("X-Original-URI", "/elsewhere")]);
    let html = String::from_utf8_lossy(&direct.body).to_string();
    assert_eq!(direct.status, 200, "{html}");
    assert_eq!(text_by_id(&html, "args").as_deref(), Some("next=/products"), "{html}");
    assert_eq!(text_by_id(&html, "original").as_deref(), Some(""), "no X-Original-URI from the visitor: {html}");
    let mut events = crate::support::sse::Events::open_path(site.addr(), "/v1/rooms/shop/events?token=t", &[]);
    assert_eq!(events.next(), (0, "position".to_string(), serde_json::json!({"position": 3})));
    let streamed = stranger.get("/v1/rooms/shop/events?token=t");
    assert_eq!(streamed.header("transfer-encoding"), Some("chunked"), "{:?}", streamed.headers);
    assert_eq!(streamed.body, b"event: position\ndata: {\"position\":3}\n\n");
    // A forged session cookie is the stand-in gate's to refuse: the waiting page again.
    let mut forger = Visitor::new(site.addr());
    forger.set_cookie("lh_session_shop", "admitted-8");
    assert_eq!(text_by_id(&String::from_utf8_lossy(&forger.get("/").body), "position").as_deref(), Some("3"));

    // The origin saw only admitted requests, each with the ticket.
    let origin = site.origin_requests();
    assert_eq!(origin.len(), 2, "{origin:?}");
    assert!(origin.iter().all(|r| r.ticket.as_deref() == Some("t7") && r.status == 200), "{origin:?}");
}
