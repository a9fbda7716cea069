//! Headless Chromium (Debian's package) for the dashboard's tests, and a reader for the DOM it
//! dumps. Shared with the e2e suite's dashboard test (`#[path]`), so it uses only std.
//!
//! Chromium runs as a subprocess (`--dump-dom`, `--screenshot`) under virtual time
//! (`--virtual-time-budget`): the page's timers fire as fast as its fetches allow, and virtual
//! time stands still while a fetch waits for its answer, so the DOM dumped is the page after a
//! few of its 2 s refreshes, with no sleeps and no DevTools client. (It does not wait for a
//! streamed body to end, only for its answer to start.)

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const CHROMIUM: &str = "/usr/bin/chromium";
/// The page's virtual time: four of its 2 s refreshes.
const VIRTUAL_TIME_MS: u32 = 8000;
const TIMEOUT: Duration = Duration::from_secs(60);

/// Where the test run keeps what it makes: `target/test-artifacts`.
pub fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // target/<profile>/deps/<test binary>
            let exe = std::env::current_exe().expect("the test binary's path");
            exe.ancestors()
                .nth(3)
                .expect("target/<profile>/deps")
                .to_path_buf()
        });
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("creating target/test-artifacts");
    dir
}

/// The page at `url` after its scripts ran, as HTML. Blocks for at most a minute.
pub fn dump_dom(url: &str) -> String {
    chromium(&["--dump-dom".to_string()], url)
}

/// A 1400x900 PNG of the page at `url`, written to `path`. Blocks for at most a minute.
pub fn screenshot(url: &str, path: &Path) {
    let _ = std::fs::remove_file(path);
    chromium(
        &[
            format!("--screenshot={}", path.display()),
            "--window-size=1400,900".to_string(),
        ],
        url,
    );
    let png = std::fs::read(path).unwrap_or_default();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} is no screenshot of a page ({} bytes)",
        path.display(),
        png.len()
    );
}

/// Runs headless Chromium with `args` and then `url`: its stdout. Panics when Chromium is
/// missing (scripts/test installs it: these tests never skip), fails or outlives the timeout.
fn chromium(args: &[String], url: &str) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium (scripts/test does)"
    );
    // A profile of its own: runs in parallel must not share one.
    static RUN: AtomicUsize = AtomicUsize::new(0);
    let profile = std::env::temp_dir().join(format!(
        "ambit-dashboard-chromium-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    let mut child = Command::new(CHROMIUM)
        // No sandbox: the tests run as root, where Chromium's sandbox refuses to start.
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
        ])
        .arg(format!("--virtual-time-budget={VIRTUAL_TIME_MS}"))
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting chromium");
    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&profile);
            panic!("chromium did not finish {url} within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = std::fs::remove_dir_all(&profile);
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    assert!(
        status.success(),
        "chromium {args:?} {url}: {status}\n{stderr}"
    );
    stdout
}

fn read_in_background(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

/// An element of a dumped DOM: its attributes and its text.
#[derive(Debug)]
pub struct Element {
    pub attributes: Vec<(String, String)>,
    pub text: String,
}

impl Element {
    /// The attribute's value; empty when it has none.
    pub fn get(&self, name: &str) -> &str {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.attributes.iter().any(|(n, _)| n == name)
    }

    /// Its text with runs of white space made one space.
    pub fn words(&self) -> String {
        self.text.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

/// The `<tag>` elements with `data-testid="testid"`, each with its text up to the first
/// `</tag>` (the elements the tests read hold none of their own tag). This reads the DOM
/// Chromium serialises, whose attribute values are always quoted; values may hold `>` (the
/// graph's edge names do).
pub fn elements(dom: &str, tag: &str, testid: &str) -> Vec<Element> {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut found = Vec::new();
    let mut rest = dom;
    while let Some(at) = rest.find(&open) {
        let after = &rest[at + open.len()..];
        rest = after;
        if !after.starts_with(|c: char| c.is_ascii_whitespace() || c == '>' || c == '/') {
            continue; // a longer tag name
        }
        let (attributes, body) = attributes(after);
        let inner = &body[..body.find(&close).unwrap_or(body.len())];
        found.push(Element {
            attributes,
            text: unescape(&without_tags(inner)),
        });
        rest = body;
    }
    found.retain(|e| e.get("data-testid") == testid);
    found
}

/// The attributes of the tag `s` starts inside, and what follows the tag.
fn attributes(s: &str) -> (Vec<(String, String)>, &str) {
    let bytes = s.as_bytes();
    let mut at = 0;
    let mut attributes = Vec::new();
    loop {
        while at < bytes.len() && (bytes[at].is_ascii_whitespace() || bytes[at] == b'/') {
            at += 1;
        }
        match bytes.get(at) {
            None => return (attributes, ""),
            Some(b'>') => return (attributes, &s[at + 1..]),
            Some(_) => {}
        }
        let start = at;
        while at < bytes.len()
            && !matches!(bytes[at], b'=' | b'>' | b'/')
            && !bytes[at].is_ascii_whitespace()
        {
            at += 1;
        }
        let name = s[start..at].to_string();
        let mut value = String::new();
        if bytes.get(at) == Some(&b'=') && bytes.get(at + 1) == Some(&b'"') {
            let end = s[at + 2..].find('"').map_or(s.len(), |e| at + 2 + e);
            value = unescape(&s[at + 2..end]);
            at = (end + 1).min(s.len());
        }
        attributes.push((name, value));
    }
}

fn without_tags(html: &str) -> String {
    let mut text = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::elements;

    #[test]
    fn reads_elements_whose_attributes_hold_angle_brackets() {
        let dom = r#"<g data-testid="edge" data-edge="a->b" class="x"><text>1 &lt;2</text></g>
            <gx data-testid="edge"></gx><g data-testid="node" hidden=""></g>"#;
        let edges = elements(dom, "g", "edge");
        assert_eq!(edges.len(), 1, "{edges:?}");
        assert_eq!(edges[0].get("data-edge"), "a->b");
        assert_eq!(edges[0].get("class"), "x");
        assert_eq!(edges[0].words(), "1 <2");
        let nodes = elements(dom, "g", "node");
        assert!(nodes[0].has("hidden") && !nodes[0].has("class"));
    }
}
