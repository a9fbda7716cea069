//! Running the Python HBONE peers in `tests/interop/` (Python's `ssl`, that is OpenSSL, and the
//! `h2` package from PyPI) against our HBONE code: starting the scripts with timeouts, reading
//! their `key=value` lines, PEM files for them in a temporary directory, and skipping the tests
//! where `python3` with `h2` is missing (failing them under CI).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ambit_proto::identity::{CertificateAuthority, SpiffeId, Validity};

use super::TD;

/// How long any one Python run may take before it is killed and the test fails.
pub const PYTHON_TIMEOUT: Duration = Duration::from_secs(60);
/// How long any single wait on our side may take.
pub const STEP: Duration = Duration::from_secs(20);
pub const MIB: usize = 1024 * 1024;
/// A W3C trace context both sides pass along unchanged.
pub const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

// ---------------------------------------------------------------------------------------------
// Running the Python scripts

fn script(name: &str) -> String {
    format!("{}/tests/interop/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A running Python script whose stdout lines are collected as they come.
pub struct Python {
    what: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Option<thread::JoinHandle<String>>,
}

/// What a finished (or killed) Python script printed.
pub struct Finished {
    pub what: String,
    pub code: Option<i32>,
    pub out: Vec<String>,
    pub err: String,
}

impl Python {
    pub fn spawn(name: &str, args: &[String]) -> Python {
        let what = format!("python3 {name} {}", args.join(" "));
        let mut child = Command::new("python3")
            .args(["-u", "-B"])
            .arg(script(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start `{what}`: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Python {
            what,
            child,
            lines,
            seen: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// Waits for a `key=value` line and returns the value.
    pub fn wait_for(&mut self, key: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let prefix = format!("{key}=");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.strip_prefix(&prefix).map(str::to_string);
                    self.seen.push(line);
                    if let Some(value) = found {
                        return value;
                    }
                }
                Err(e) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let out = self.seen.join("\n");
                    let err = self.stderr.take().map(|h| h.join().unwrap_or_default());
                    panic!(
                        "`{}` did not print {key}= ({e:?} after {timeout:?})\nstdout:\n{out}\nstderr:\n{}",
                        self.what,
                        err.unwrap_or_default()
                    );
                }
            }
        }
    }

    /// Waits for the script to exit by itself; kills it and fails the test after `timeout`.
    pub fn finish(mut self, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait().expect("try_wait on the python child") {
                Some(status) => break status,
                None if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let done = self.collect(None);
                    panic!("`{}` did not exit within {timeout:?}\n{done}", done.what);
                }
                None => thread::sleep(Duration::from_millis(20)),
            }
        };
        self.collect(status.code())
    }

    /// Kills the script (one that waits for more connections than it will get) and returns
    /// what it printed until then.
    pub fn stop(mut self) -> Finished {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.collect(None)
    }

    fn collect(&mut self, code: Option<i32>) -> Finished {
        // The stdout thread ends at EOF, which comes once the child is gone.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        let err = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        Finished {
            what: self.what.clone(),
            code,
            out: std::mem::take(&mut self.seen),
            err,
        }
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        // A failing test never leaves a script behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Finished {
    pub fn values(&self, key: &str) -> Vec<&str> {
        let prefix = format!("{key}=");
        self.out
            .iter()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .collect()
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values(key).into_iter().next()
    }

    /// The value of `key`, failing the test with everything the script said when it is absent.
    pub fn value(&self, key: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| panic!("`{}` printed no {key}=\n{self}", self.what))
    }

    /// Lines `prefix:NAME=VALUE` as a map from NAME to VALUE.
    pub fn map(&self, prefix: &str) -> BTreeMap<String, String> {
        let prefix = format!("{prefix}:");
        self.out
            .iter()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    pub fn assert_ok(&self) {
        assert!(
            self.code == Some(0) && self.get("result") == Some("ok"),
            "`{}` failed\n{self}",
            self.what
        );
    }
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "exit code: {:?}", self.code)?;
        writeln!(f, "stdout:\n{}", self.out.join("\n"))?;
        write!(f, "stderr:\n{}", self.err)
    }
}

/// Runs a script to completion off the async runtime.
pub async fn run(name: &'static str, args: Vec<String>) -> Finished {
    tokio::task::spawn_blocking(move || Python::spawn(name, &args).finish(PYTHON_TIMEOUT))
        .await
        .expect("the python runner panicked")
}

/// Waits, off the async runtime, for a script to exit by itself (within `PYTHON_TIMEOUT`).
pub async fn finish(py: Python) -> Finished {
    tokio::task::spawn_blocking(move || py.finish(PYTHON_TIMEOUT))
        .await
        .expect("the python runner panicked")
}

/// Waits, off the async runtime, for a script to print `key=` (within `STEP`), then kills it.
pub async fn stop_after(mut py: Python, key: &'static str) -> Finished {
    tokio::task::spawn_blocking(move || {
        py.wait_for(key, STEP);
        py.stop()
    })
    .await
    .expect("the python runner panicked")
}

/// Starts `hbone_server.py` and waits for the address it listens on.
pub async fn start_server(args: Vec<String>) -> (Python, SocketAddr) {
    tokio::task::spawn_blocking(move || {
        let mut py = Python::spawn("hbone_server.py", &args);
        let addr = py.wait_for("listening", STEP);
        let addr = addr
            .parse()
            .unwrap_or_else(|e| panic!("hbone_server.py listens on {addr:?}, not an ip:port: {e}"));
        (py, addr)
    })
    .await
    .expect("starting hbone_server.py panicked")
}

pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Skipping without python3 and h2

/// Returns from the test unless `python3` with `h2` is here (see `python_h2_available`).
macro_rules! require_python_h2 {
    () => {
        if !$crate::support::interop::python_h2_available() {
            return;
        }
    };
}
pub(crate) use require_python_h2;

/// Whether `python3` with `h2` is here. Under CI its absence fails the test; elsewhere the test
/// is skipped with a one-line note.
pub fn python_h2_available() -> bool {
    let check = "import ssl, h2; assert ssl.HAS_TLSv1_3, 'this OpenSSL lacks TLS 1.3'";
    let why = match probe_python(check) {
        Ok(()) => return true,
        Err(why) => why,
    };
    if std::env::var_os("CI").is_some() {
        panic!(
            "the HBONE interop tests need python3 with the h2 package ({why}): run `pip install h2`"
        );
    }
    eprintln!(
        "skipping HBONE interop test: python3 with the h2 package is not available ({why}); `pip install h2` to run it"
    );
    false
}

/// Runs `python3 -c code` (within `STEP`); on failure, says why in one line.
fn probe_python(code: &str) -> Result<(), String> {
    let mut child = Command::new("python3")
        .args(["-c", code])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("python3 could not be started: {e}"))?;
    let deadline = Instant::now() + STEP;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("python3 did not answer within {STEP:?}"));
            }
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut err);
    }
    Err(err
        .lines()
        .last()
        .unwrap_or("the import failed")
        .to_string())
}

// ---------------------------------------------------------------------------------------------
// Certificates as PEM files for Python

/// A CA whose self-signed root has its own name (`CertificateAuthority::generate` always uses
/// ours), standing for a mesh that shares nothing with this one.
pub fn root_named(name: &str) -> CertificateAuthority {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    CertificateAuthority::from_pem(TD, &cert.pem(), &key.serialize_pem()).unwrap()
}

/// A temporary directory of PEM files, removed when dropped.
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "ambit-hbone-interop-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Pki { dir }
    }

    fn write(&self, name: &str, contents: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path.to_str().expect("temp paths are UTF-8").to_string()
    }

    /// Writes `ca`'s root certificate as `<name>.pem`.
    pub fn root(&self, ca: &CertificateAuthority, name: &str) -> String {
        self.write(&format!("{name}.pem"), ca.root_pem())
    }

    /// A fresh P-256 key and a certificate for `identity` signed by `ca`, as our CA signs
    /// workload CSRs; returns the certificate and key file paths.
    pub fn issue(
        &self,
        ca: &CertificateAuthority,
        identity: &SpiffeId,
        name: &str,
    ) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            identity.to_string().try_into().unwrap(),
        )];
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let chain = ca
            .sign_csr(&csr, identity, Validity::for_ttl(Duration::from_secs(3600)))
            .unwrap();
        // The leaf only: peers hold the root already (the chain's last element).
        let cert = self.write(&format!("{name}.cert.pem"), &chain[0]);
        let key = self.write(&format!("{name}.key.pem"), &key.serialize_pem());
        (cert, key)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// What Python saw of our side

/// Asserts what Python says about the TLS session: TLS 1.3, an AES-GCM suite, ALPN h2.
pub fn assert_mesh_tls(py: &Finished) {
    assert_eq!(py.value("tls_version"), "TLSv1.3", "{py}");
    let cipher = py.value("cipher");
    assert!(
        cipher == "TLS_AES_128_GCM_SHA256" || cipher == "TLS_AES_256_GCM_SHA384",
        "negotiated {cipher}, not an AES-GCM suite\n{py}"
    );
    assert_eq!(py.value("alpn"), "h2", "{py}");
}

/// Asserts that the certificate our `side` ("server" or "client") presented, as Python read
/// it, has `uri` as its one and only SAN.
pub fn assert_only_san(py: &Finished, side: &str, uri: &str) {
    assert_eq!(py.values(&format!("{side}_san")), [uri], "{py}");
    assert!(
        py.get(&format!("{side}_other_san")).is_none(),
        "only a URI SAN\n{py}"
    );
}

/// Asserts the HTTP/2 flow control our `side` ("server" or "client") announced, as Python
/// received it: 4 MiB stream windows, 1 MiB frames, a 16 MiB connection window. Returns all of
/// that side's settings (`<side>_setting:NAME=VALUE`) for further checks.
pub fn assert_our_flow_control(py: &Finished, side: &str) -> BTreeMap<String, String> {
    let settings = py.map(&format!("{side}_setting"));
    let setting = |name: &str| settings.get(name).map(String::as_str);
    assert_eq!(setting("INITIAL_WINDOW_SIZE"), Some("4194304"), "{py}");
    assert_eq!(setting("MAX_FRAME_SIZE"), Some("1048576"), "{py}");
    assert_eq!(
        py.value(&format!("{side}_connection_window_increment")),
        (16 * MIB - 65_535).to_string(),
        "a 16 MiB connection window\n{py}"
    );
    settings
}
