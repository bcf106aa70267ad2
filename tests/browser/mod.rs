//! A real headless Chromium driven over WebDriver (Debian's `chromium` and `chromedriver`, which
//! `scripts/setup` installs): chromedriver on a free loopback port, one session with a fresh
//! profile, commands as plain HTTP/1.1 JSON. Without the browser a test fails, naming the script.
//! Chromium and chromedriver are stopped on drop (the session deleted, chromedriver killed by PID).

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// `program` on PATH or at Debian's place for it.
fn find(program: &str, debian: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(program)).find(|p| p.is_file()));
    on_path.or_else(|| Some(PathBuf::from(debian)).filter(|p| p.is_file())).unwrap_or_else(|| {
        panic!(
            "{program} not found (on PATH or at {debian}): the console's browser tests need Debian's chromium and \
             chromium-driver; run scripts/setup"
        )
    })
}

/// One HTTP/1.1 exchange with a JSON body; the status and the JSON answer (`null` if none).
pub fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         {auth}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    // Read the head, then exactly the body (chromedriver keeps the connection open).
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (mut length, mut chunked) = (None, false);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
        chunked |= lower.starts_with("transfer-encoding:") && lower.contains("chunked");
    }
    let body = if chunked {
        let mut out = Vec::new();
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).unwrap();
            out.extend_from_slice(&chunk[..n]);
        }
        out
    } else if let Some(n) = length {
        let mut out = vec![0; n];
        reader.read_exact(&mut out).unwrap();
        out
    } else {
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        out
    };
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session with a `width`×`height` window.
    pub fn start(width: u32, height: u32) -> Browser {
        let chromium = find("chromium", "/usr/bin/chromium");
        let chromedriver = find("chromedriver", "/usr/bin/chromedriver");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("started successfully") => break,
                Some(Ok(_)) => {}
                _ => panic!("chromedriver exited before it was ready: {:?}", driver.wait()),
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // Until the session exists, a failure stops chromedriver by PID.
        let driver = KillOnDrop(Some(driver));
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--force-device-scale-factor=1",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--window-size={width},{height}"),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let (status, answer) = http_json(addr, "POST", "/session", None, Some(&caps));
        assert_eq!(status, 200, "new WebDriver session: {answer}");
        let session = answer["value"]["sessionId"].as_str().unwrap().to_owned();
        let browser = Browser { driver: driver.take(), addr, session, _profile: profile };
        browser.cmd("POST", "/timeouts", json!({"script": 30_000, "pageLoad": 30_000}));
        browser
    }

    /// A session command; its `value`.
    pub fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let body = (method == "POST").then_some(body);
        let (status, answer) =
            http_json(self.addr, method, &format!("/session/{}{path}", self.session), None, body.as_ref());
        assert_eq!(status, 200, "WebDriver {method} {path}: {answer}");
        answer["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url }));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page and returns its value.
    pub fn js(&self, script: &str, args: &Value) -> Value {
        self.cmd("POST", "/execute/sync", json!({"script": script, "args": args}))
    }

    /// The text of the first element matching `css`, or `None`.
    pub fn text(&self, css: &str) -> Option<String> {
        self.js("const e = document.querySelector(arguments[0]); return e ? e.innerText : null;", &json!([css]))
            .as_str()
            .map(str::to_owned)
    }

    /// Clicks the element matching `css` (as a user would: through WebDriver's element click).
    pub fn click(&self, css: &str) {
        let found = self.cmd("POST", "/element", json!({"using": "css selector", "value": css}));
        let id = found.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).unwrap().to_owned();
        self.cmd("POST", &format!("/element/{id}/click"), json!({}));
    }

    /// Types `text` into the element matching `css`.
    pub fn type_into(&self, css: &str, text: &str) {
        let found = self.cmd("POST", "/element", json!({"using": "css selector", "value": css}));
        let id = found.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).unwrap().to_owned();
        self.cmd("POST", &format!("/element/{id}/value"), json!({ "text": text }));
    }

    /// Waits up to `within` for `script` to return a truthy value; the value, or `None`.
    pub fn wait_for(&self, within: Duration, script: &str, args: &Value) -> Option<Value> {
        let deadline = Instant::now() + within;
        loop {
            let v = self.js(script, args);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return Some(v);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the page says it has rendered `page` (`main[data-ready]`).
    pub fn wait_ready(&self, page: &str) {
        let ready = self.wait_for(
            Duration::from_secs(20),
            "return document.querySelector('main').dataset.ready === arguments[0];",
            &json!([page]),
        );
        let text = self.text("main").unwrap_or_default();
        assert!(ready.is_some(), "the {page} page did not render: {text}");
    }

    /// Saves a PNG of the viewport to `path`.
    pub fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        let b64 = self.cmd("GET", "/screenshot", Value::Null);
        let png = base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap()).unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }

    /// Resizes the window so the whole page fits (for a full-page screenshot), at most `max` high.
    pub fn fit_height(&self, width: u32, max: u32) {
        let h = self.js("return document.documentElement.scrollHeight;", &json!([])).as_u64().unwrap_or(1000);
        self.cmd("POST", "/window/rect", json!({"width": width, "height": (h as u32 + 140).min(max)}));
    }
}

struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn take(mut self) -> Child {
        self.0.take().unwrap()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends Chromium; then chromedriver, by PID.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            http_json(self.addr, "DELETE", &format!("/session/{}", self.session), None, None)
        }));
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
