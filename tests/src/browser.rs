//! Headless Chromium (Debian's `chromium`), driven over W3C WebDriver by a
//! `chromedriver` the test starts on a free loopback port. The protocol is
//! JSON over HTTP, spoken here with the `ureq` the tests use anyway: the
//! WebDriver crates pull in a Mozilla-licensed dependency this project's
//! licence policy (`deny.toml`) does not take, for a dozen calls.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// The key the W3C protocol names an element reference by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser session; the browser and its driver end when it is dropped.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    session: String,
    agent: ureq::Agent,
}

/// A width and height, in CSS pixels.
pub const DESKTOP: (u32, u32) = (1280, 900);
/// A phone's: an iPhone 12's viewport.
pub const PHONE: (u32, u32) = (390, 844);

impl Browser {
    /// Starts chromedriver and a headless Chromium window of `size`.
    ///
    /// # Panics
    ///
    /// When Chromium or its driver is not installed (`scripts/test.sh`
    /// installs them) or does not start within 30 s.
    pub fn start(size: (u32, u32)) -> Self {
        Self::start_with(size, true)
    }

    /// [`Browser::start`] with JavaScript turned off (`javascript: false`):
    /// what a page must work without.
    ///
    /// # Panics
    ///
    /// As [`Browser::start`].
    pub fn start_with(size: (u32, u32), javascript: bool) -> Self {
        for program in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(program).exists(),
                "{program} is missing: scripts/test.sh installs Debian's chromium and chromium-driver"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let mut browser = Self {
            driver,
            session: format!("http://127.0.0.1:{port}"),
            agent,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = browser
                .agent
                .get(&format!("{}/status", browser.session))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .and_then(|text| serde_json::from_str::<Value>(&text).ok())
                .is_some_and(|status| status["value"]["ready"] == true);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver not ready in 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Chromium's content setting: 2 blocks every page's scripts.
        let scripts = if javascript { 1 } else { 2 };
        let created = browser.call(
            "POST",
            "/session",
            json!({ "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage",
                             format!("--window-size={},{}", size.0, size.1)],
                    "prefs": { "profile.managed_default_content_settings.javascript": scripts },
                },
            }}}),
        );
        let id = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        browser.session = format!("{}/session/{id}", browser.session);
        browser
    }

    /// One WebDriver command; its `value`.
    ///
    /// # Panics
    ///
    /// When the driver answers with an error.
    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|error| panic!("{method} {path}: {error}"))
    }

    /// One WebDriver command; its `value`, or the driver's error.
    fn try_call(&self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        let url = format!("{}{path}", self.session);
        let response = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.to_string()),
        };
        let text = response
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let answer: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {url}: not JSON: {e}"));
        if let Some(error) = answer["value"]["error"].as_str() {
            return Err(format!(
                "{error}: {}",
                answer["value"]["message"].as_str().unwrap_or("")
            ));
        }
        Ok(answer["value"].clone())
    }

    /// Opens `url` and waits for it to load.
    pub fn open(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url }));
    }

    /// Reloads the page.
    pub fn reload(&self) {
        self.call("POST", "/refresh", json!({}));
    }

    /// The address the browser is at.
    pub fn url(&self) -> String {
        self.call("GET", "/url", Value::Null)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The page's text as a person reads it.
    pub fn text(&self) -> String {
        self.text_of("body")
    }

    /// The text of the first element `css` selects.
    pub fn text_of(&self, css: &str) -> String {
        let element = self.element(css);
        self.call("GET", &format!("/element/{element}/text"), Value::Null)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The current value of the form field `css` selects.
    pub fn value_of(&self, css: &str) -> String {
        let element = self.element(css);
        self.call(
            "GET",
            &format!("/element/{element}/property/value"),
            Value::Null,
        )
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// The attribute `name` of the first element `css` selects, if set.
    pub fn attribute_of(&self, css: &str, name: &str) -> Option<String> {
        let element = self.element(css);
        self.call(
            "GET",
            &format!("/element/{element}/attribute/{name}"),
            Value::Null,
        )
        .as_str()
        .map(str::to_owned)
    }

    /// The first element `css` selects (its reference).
    fn element(&self, css: &str) -> String {
        let found = self.call(
            "POST",
            "/element",
            json!({ "using": "css selector", "value": css }),
        );
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    /// Whether anything matches `css`.
    pub fn has(&self, css: &str) -> bool {
        self.call(
            "POST",
            "/elements",
            json!({ "using": "css selector", "value": css }),
        )
        .as_array()
        .is_some_and(|found| !found.is_empty())
    }

    /// Types `text` into the field `css` selects.
    pub fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css);
        self.call("POST", &format!("/element/{element}/clear"), json!({}));
        self.call(
            "POST",
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        );
    }

    /// Clicks the link or button `css` selects, and waits for the page it
    /// loads (until the old page's root is gone and the new one loaded).
    ///
    /// # Panics
    ///
    /// When no new page has loaded within 20 s.
    pub fn click(&self, css: &str) {
        let old_root = self.element("html");
        let element = self.element(css);
        self.call("POST", &format!("/element/{element}/click"), json!({}));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let replaced = self
                .try_call("GET", &format!("/element/{old_root}/name"), Value::Null)
                .is_err();
            let ready = self.try_call(
                "POST",
                "/execute/sync",
                json!({ "script": "return document.readyState", "args": [] }),
            );
            // The driver's own scripts run with the page's off; if they
            // did not, the new root is enough.
            let loaded = match ready {
                Ok(state) => state == "complete",
                Err(_) => true,
            };
            if replaced && loaded {
                return;
            }
            assert!(Instant::now() < deadline, "clicking {css} loaded no page");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reloads until the page's text satisfies `wanted`, for up to
    /// `within`; the text.
    ///
    /// # Panics
    ///
    /// When it does not in time, with the page's text.
    pub fn reload_until(&self, within: Duration, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let text = self.text();
            if wanted(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "not in time; the page says:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(250));
            self.reload();
        }
    }

    /// Resizes the window to `size` (CSS pixels).
    pub fn resize(&self, size: (u32, u32)) {
        self.call(
            "POST",
            "/window/rect",
            json!({ "width": size.0, "height": size.1 }),
        );
    }

    /// Runs `script` in the page (WebDriver's, not subject to the page's
    /// content security policy): how a test plays a page tampered with.
    pub fn run_script(&self, script: &str) {
        self.call(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        );
    }

    /// Saves a PNG of the window to `path`.
    pub fn screenshot(&self, path: &Path) {
        let encoded = self.call("GET", "/screenshot", Value::Null);
        let png = decode_base64(encoded.as_str().expect("base64 text"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("the screenshot directory");
        }
        std::fs::write(path, png).expect("the screenshot is written");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.session.contains("/session/") {
            let _ = self.agent.delete(&self.session).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (with padding), as WebDriver sends screenshots.
fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let digits: Vec<u8> = text.bytes().filter(|c| !b"=\r\n".contains(c)).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut word = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            word |= value(*c) << (18 - 6 * i);
        }
        let bytes = word.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes_what_browsers_send() {
        assert_eq!(super::decode_base64("aGVsbG8="), b"hello");
        assert_eq!(super::decode_base64("aGk="), b"hi");
        assert_eq!(super::decode_base64("YWJj"), b"abc");
    }
}
