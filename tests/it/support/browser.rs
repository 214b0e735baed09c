//! A headless Chromium driven by a test over WebDriver: Debian's `chromium` and
//! `chromedriver` (installed by `tests/deps.sh`), one chromedriver per [`Browser`] on a free
//! loopback port, spoken to in W3C WebDriver JSON over the tests' own HTTP client. Navigate,
//! read the URL, the page's source and an element's text, run a script, read and set cookies,
//! take screenshots (PNG files under `target/test-artifacts/<test>/`, kept after the run).
//! Every wait is on a condition with the tests' deadline. Dropping a [`Browser`] ends its
//! session and kills its chromedriver's process group; a failed test shows chromedriver's log.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use base64::Engine as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use super::http::Client;
use super::wait_for;

/// The browser Debian's `chromium` package installs.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Its WebDriver server, from Debian's `chromium-driver`.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The page's viewport, in CSS pixels at one device pixel each: the screenshots' size.
pub const WINDOW: (u32, u32) = (1024, 768);

/// WebDriver's key for an element reference in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where a test's artifacts (screenshots) go: `test-artifacts/<test>/` in cargo's target
/// directory, made when missing. Kept after the run, for people and CI to look at.
pub fn artifacts_dir(test: &str) -> PathBuf {
    // Cargo sets CARGO_TARGET_TMPDIR to `<target>/tmp` for integration tests, wherever the
    // target directory is.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("the target directory");
    let dir = target.join("test-artifacts").join(test);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("make {}: {e}", dir.display()));
    dir
}

/// A WebDriver error: the status, WebDriver's error code (`no such element`, …) and message.
#[derive(Debug, Clone)]
pub struct WebDriverError {
    /// The HTTP status chromedriver answered with.
    pub status: u16,
    /// WebDriver's error code.
    pub error: String,
    /// What chromedriver said.
    pub message: String,
}

/// A cookie as the browser holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cookie {
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: String,
    /// Its path.
    pub path: String,
    /// Whether scripts cannot read it.
    pub http_only: bool,
    /// Whether it is sent over HTTPS only.
    pub secure: bool,
    /// Its SameSite attribute (`Lax`, `Strict`, `None`) when set.
    pub same_site: Option<String>,
    /// When it expires, in seconds since the epoch; None for a session cookie.
    pub expiry: Option<u64>,
}

/// How to start the browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Whether pages may run JavaScript (the waiting page's fallback is tested without).
    pub javascript: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { javascript: true }
    }
}

/// One headless Chromium session and the chromedriver that runs it.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    test: String,
    /// Chromium's profile and chromedriver's log, gone with the browser.
    dir: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with JavaScript on. `test` names the
    /// directory the screenshots go to ([`artifacts_dir`]): the test's name.
    pub fn start(test: &str) -> Browser {
        Browser::start_with(test, Options::default())
    }

    /// Starts chromedriver and a headless Chromium with `options`.
    pub fn start_with(test: &str, options: Options) -> Browser {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the browser tests run Debian's chromium and chromium-driver; install them with `sudo bash tests/deps.sh`"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let (driver, addr) = spawn_driver(dir.path());
        let mut browser = Browser { driver, addr, session: String::new(), test: test.to_string(), dir };
        let args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".to_string(),
            "--disable-gpu".to_string(),
            format!("--window-size={},{}", WINDOW.0, WINDOW.1),
            // /dev/shm is small in containers; Chromium then crashes tabs rather than wait.
            "--disable-dev-shm-usage".to_string(),
            // Nothing but the test's own requests: no updates, no sync, no first-run pages.
            "--disable-background-networking".to_string(),
            "--disable-component-update".to_string(),
            "--disable-sync".to_string(),
            "--no-first-run".to_string(),
            "--no-default-browser-check".to_string(),
            "--lang=en-US".to_string(),
            format!("--user-data-dir={}", browser.dir.path().join("profile").display()),
        ];
        let mut chrome = json!({"binary": CHROMIUM, "args": args});
        if !options.javascript {
            chrome["prefs"] = json!({"profile.managed_default_content_settings.javascript": 2});
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "timeouts": {"pageLoad": super::DEADLINE.as_millis() as u64, "script": super::DEADLINE.as_millis() as u64, "implicit": 0},
            "goog:chromeOptions": chrome,
        }}});
        let value = browser.call("POST", "/session", Some(capabilities)).unwrap_or_else(|e| {
            panic!("chromedriver started no browser: {e:?}\nchromedriver's log:\n{}", browser.driver_log())
        });
        browser.session = value["sessionId"].as_str().expect("a session id").to_string();
        // The window's size includes room for a frame headless Chromium does not draw; the
        // page's viewport is set to exactly WINDOW so that screenshots have that size.
        let viewport = json!({"cmd": "Emulation.setDeviceMetricsOverride", "params": {
            "width": WINDOW.0, "height": WINDOW.1, "deviceScaleFactor": 1, "mobile": false,
        }});
        browser.session_call("POST", "/goog/cdp/execute", Some(viewport)).expect("set the viewport's size");
        browser
    }

    /// Loads `url` and returns once the page has loaded (its `load` event).
    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({"url": url}))).unwrap_or_else(|e| panic!("load {url}: {e:?}"));
    }

    /// Reloads the page.
    pub fn refresh(&self) {
        self.session_call("POST", "/refresh", Some(json!({}))).unwrap_or_else(|e| panic!("refresh: {e:?}"));
    }

    /// The page's URL.
    pub fn url(&self) -> String {
        self.session_call("GET", "/url", None).expect("the URL").as_str().unwrap_or_default().to_string()
    }

    /// The page's title.
    pub fn title(&self) -> String {
        self.session_call("GET", "/title", None).expect("the title").as_str().unwrap_or_default().to_string()
    }

    /// The page's source as the browser serialises the document now (after scripts ran).
    pub fn source(&self) -> String {
        self.session_call("GET", "/source", None).expect("the source").as_str().unwrap_or_default().to_string()
    }

    /// The rendered text of the first element `css` selects, None when none does.
    pub fn text(&self, css: &str) -> Option<String> {
        let found = match self.session_call("POST", "/element", Some(json!({"using": "css selector", "value": css}))) {
            Ok(found) => found,
            Err(e) if e.status == 404 && e.error == "no such element" => return None,
            Err(e) => panic!("find {css:?}: {e:?}"),
        };
        let id = found[ELEMENT_KEY].as_str().expect("an element reference");
        match self.session_call("GET", &format!("/element/{id}/text"), None) {
            Ok(text) => Some(text.as_str().unwrap_or_default().to_string()),
            // Replaced between the two calls (a live page): as if not found yet.
            Err(e) if e.error == "stale element reference" => None,
            Err(e) => panic!("text of {css:?}: {e:?}"),
        }
    }

    /// Waits until the first element `css` selects exists and its text satisfies `accept`;
    /// returns that text. Panics after the deadline naming `what` and the text last seen.
    pub fn wait_text(&self, css: &str, what: &str, accept: impl Fn(&str) -> bool) -> String {
        wait_for(what, || match self.text(css) {
            Some(text) if accept(&text) => Ok(text),
            seen => Err(seen),
        })
    }

    /// Waits until the page's URL satisfies `accept`; returns it.
    pub fn wait_url(&self, what: &str, accept: impl Fn(&str) -> bool) -> String {
        wait_for(what, || {
            let url = self.url();
            if accept(&url) {
                Ok(url)
            } else {
                Err(url)
            }
        })
    }

    /// Runs `script` (a function body: `return …` gives the value) with `args` as its
    /// `arguments`; returns what it returned.
    pub fn execute(&self, script: &str, args: &[Value]) -> Value {
        self.session_call("POST", "/execute/sync", Some(json!({"script": script, "args": args})))
            .unwrap_or_else(|e| panic!("execute {script:?}: {e:?}"))
    }

    /// Every cookie the browser holds for the page's URL.
    pub fn cookies(&self) -> Vec<Cookie> {
        let all = self.session_call("GET", "/cookie", None).expect("the cookies");
        all.as_array().into_iter().flatten().map(cookie).collect()
    }

    /// The value of the cookie `name` for the page's URL.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.cookies().into_iter().find(|c| c.name == name).map(|c| c.value)
    }

    /// Sets the cookie `name` for the page's host and path `/` (a forged one, say). The
    /// browser must be on a page of that host.
    pub fn add_cookie(&self, name: &str, value: &str) {
        let cookie = json!({"cookie": {"name": name, "value": value, "path": "/"}});
        self.session_call("POST", "/cookie", Some(cookie)).unwrap_or_else(|e| panic!("set cookie {name}: {e:?}"));
    }

    /// Forgets every cookie of the page's host.
    pub fn delete_cookies(&self) {
        self.session_call("DELETE", "/cookie", None).expect("delete the cookies");
    }

    /// The screen as PNG bytes.
    pub fn screenshot_png(&self) -> Vec<u8> {
        let encoded = self.session_call("GET", "/screenshot", None).expect("a screenshot");
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("base64 text"))
            .expect("a screenshot in base64")
    }

    /// Takes a screenshot and keeps it as `<name>.png` in the test's [`artifacts_dir`];
    /// prints and returns the path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.screenshot_png();
        let path = artifacts_dir(&self.test).join(format!("{name}.png"));
        std::fs::write(&path, &png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        println!("screenshot: {}", path.display());
        path
    }

    /// What chromedriver logged so far.
    pub fn driver_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default()
    }

    /// One command of this session.
    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, WebDriverError> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    /// One WebDriver command: its `value` when it succeeded.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, WebDriverError> {
        call(self.addr, method, path, body)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Chromium quits with its session; its processes are chromedriver's children.
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = kill(Pid::from_raw(-(self.driver.id() as i32)), Signal::SIGKILL);
        let _ = self.driver.wait();
        if std::thread::panicking() {
            eprintln!("chromedriver's log:\n{}", self.driver_log());
        }
    }
}

/// Starts chromedriver on a free loopback port, in a process group of its own, logging into
/// `dir`; returns once it says it is ready.
fn spawn_driver(dir: &Path) -> (Child, SocketAddr) {
    for _ in 0..3 {
        // A port that was free a moment ago; if it is taken first, chromedriver exits and
        // another one is tried.
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let log = File::create(dir.join("chromedriver.log")).unwrap();
        let mut child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={}", addr.port()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {CHROMEDRIVER}: {e}"));
        let up = wait_for("chromedriver to be ready or exit", || {
            if let Some(status) = child.try_wait().unwrap() {
                return Ok(Err(status));
            }
            match call(addr, "GET", "/status", None) {
                Ok(status) if status["ready"] == json!(true) => Ok(Ok(())),
                Ok(status) => Err(format!("not ready: {status}")),
                Err(e) => Err(e.message),
            }
        });
        match up {
            Ok(()) => return (child, addr),
            Err(status) => {
                let said = std::fs::read_to_string(dir.join("chromedriver.log")).unwrap_or_default();
                assert!(said.contains("bind") || said.contains("in use"), "chromedriver exited ({status}):\n{said}");
            }
        }
    }
    panic!("chromedriver found no free loopback port in 3 tries");
}

/// One WebDriver request to chromedriver at `addr`, on a connection of its own. A failure to
/// connect or read comes back as an error with status 0.
fn call(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Result<Value, WebDriverError> {
    let io = |e: std::io::Error| WebDriverError { status: 0, error: "io".to_string(), message: e.to_string() };
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    // chromedriver answers only requests whose Host is a loopback address.
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut client = Client::connect(addr).map_err(io)?;
    client.send_raw(request.as_bytes()).map_err(io)?;
    let reply = client.read_reply().map_err(io)?;
    let json: Value = serde_json::from_slice(&reply.body).map_err(|e| WebDriverError {
        status: reply.status,
        error: "not JSON".to_string(),
        message: format!("{e}: {}", String::from_utf8_lossy(&reply.body)),
    })?;
    let value = json.get("value").cloned().unwrap_or(Value::Null);
    if reply.status == 200 {
        return Ok(value);
    }
    Err(WebDriverError {
        status: reply.status,
        error: value["error"].as_str().unwrap_or_default().to_string(),
        message: value["message"].as_str().unwrap_or_default().to_string(),
    })
}

fn cookie(c: &Value) -> Cookie {
    Cookie {
        name: c["name"].as_str().unwrap_or_default().to_string(),
        value: c["value"].as_str().unwrap_or_default().to_string(),
        path: c["path"].as_str().unwrap_or_default().to_string(),
        http_only: c["httpOnly"].as_bool().unwrap_or(false),
        secure: c["secure"].as_bool().unwrap_or(false),
        same_site: c["sameSite"].as_str().map(str::to_string),
        expiry: c["expiry"].as_u64(),
    }
}

/// Checks that `bytes` are a whole PNG file (the signature, every chunk's CRC, `IHDR` first,
/// `IEND` last) and returns its width and height; says what is wrong otherwise.
pub fn png_size(bytes: &[u8]) -> Result<(u32, u32), String> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    let mut rest = bytes.strip_prefix(SIGNATURE).ok_or("no PNG signature")?;
    let mut size = None;
    let mut last = [0u8; 4];
    while !rest.is_empty() {
        if rest.len() < 12 {
            return Err(format!("a truncated chunk ({} bytes left)", rest.len()));
        }
        let length = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        if rest.len() < 12 + length {
            return Err(format!("a chunk of {length} bytes with {} left", rest.len() - 12));
        }
        let (kind, data) = (&rest[4..8], &rest[8..8 + length]);
        let crc = u32::from_be_bytes(rest[8 + length..12 + length].try_into().unwrap());
        if crc32fast::hash(&rest[4..8 + length]) != crc {
            return Err(format!("a bad CRC on chunk {:?}", String::from_utf8_lossy(kind)));
        }
        if size.is_none() {
            if kind != b"IHDR" || length != 13 {
                return Err(format!("the first chunk is {:?}, not IHDR", String::from_utf8_lossy(kind)));
            }
            size = Some((
                u32::from_be_bytes(data[..4].try_into().unwrap()),
                u32::from_be_bytes(data[4..8].try_into().unwrap()),
            ));
        }
        last.copy_from_slice(kind);
        rest = &rest[12 + length..];
    }
    if &last != b"IEND" {
        return Err(format!("the last chunk is {:?}, not IEND", String::from_utf8_lossy(&last)));
    }
    size.ok_or_else(|| "no chunks".to_string())
}
