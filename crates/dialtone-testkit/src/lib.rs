//! Test helpers that run the **real binaries** (`dialtone-directory`, `dialtone`) as processes
//! on loopback, each in its own temporary directory.
//!
//! Build the binaries first (`cargo build --bins`, which `scripts/test.sh` does); the helpers
//! find them next to the test executable, or in `DIALTONE_BIN_DIR`.
//!
//! Every process is killed when its handle drops, also when a test fails. Every wait is
//! bounded and fails the test with a clear message.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod netns;
pub mod skip;

pub use skip::{skip, skip_if};

/// A command for `program`, run inside network namespace `netns` if given
/// (`ip netns exec NS PROGRAM`).
pub fn command_in(netns: Option<&str>, program: &Path) -> Command {
    match netns {
        None => Command::new(program),
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
    }
}

/// Path of a workspace binary.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("DIALTONE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // target/<profile>/deps/<test-exe> → target/<profile>; a binary such as the benchmark
            // lives in target/<profile> itself.
            let exe = std::env::current_exe().unwrap();
            let here = exe.parent().unwrap();
            if here.join(name).exists() {
                here.to_path_buf()
            } else {
                here.parent().unwrap().to_path_buf()
            }
        });
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first with `cargo build --bins` (or set DIALTONE_BIN_DIR)",
        p.display()
    );
    p
}

/// A running `dialtone-directory` with its data and verification outbox.
#[derive(Debug)]
pub struct Directory {
    child: Option<Child>,
    pub url: String,
    pub addr: String,
    pub data: PathBuf,
    pub outbox: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    extra: Vec<String>,
    netns: Option<String>,
    binary: &'static str,
    /// Where its log goes (appended) and at which `DIALTONE_LOG` filter; `None`: inherited.
    log: Option<(PathBuf, String)>,
}

impl Directory {
    /// Starts a directory on 127.0.0.1 (a free port) with a fresh data dir.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a directory with extra command-line arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_binary("dialtone-directory", extra)
    }

    /// Starts `dialtone-directory-malicious` (crate `dialtone-directory-malicious`, built by
    /// `cargo build --workspace --bins`) telling `lie`
    /// (e.g. `rollback`, `forged-key:bob@example.com`).
    pub fn start_lying(lie: &str) -> Self {
        Self::start_binary("dialtone-directory-malicious", &["--lie", lie])
    }

    /// Starts a directory whose log (standard error) is appended to `log`, with
    /// `DIALTONE_LOG=filter` (e.g. `debug`).
    pub fn start_logging(log: &Path, filter: &str) -> Self {
        Self::start_binary_logging(
            "dialtone-directory",
            &[],
            Some((log.to_owned(), filter.to_owned())),
        )
    }

    fn start_binary(binary: &'static str, extra: &[&str]) -> Self {
        Self::start_binary_logging(binary, extra, None)
    }

    fn start_binary_logging(
        binary: &'static str,
        extra: &[&str],
        log: Option<(PathBuf, String)>,
    ) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let outbox = tmp.path().join("outbox");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, url) = spawn_directory(
            None,
            binary,
            "127.0.0.1:0",
            &data,
            &outbox,
            &extra,
            log.as_ref(),
        );
        let addr = url.split("://").nth(1).unwrap().to_owned();
        Self {
            child: Some(child),
            url,
            addr,
            data,
            outbox,
            _tmp: Some(tmp),
            extra,
            netns: None,
            binary,
            log,
        }
    }

    /// Starts a directory inside network namespace `netns`, listening on `listen`; `url` is
    /// what agents use to reach it (the listen address may be a wildcard).
    pub fn start_in(netns: &str, listen: &str, url: &str, extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let outbox = tmp.path().join("outbox");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, _) = spawn_directory(
            Some(netns),
            "dialtone-directory",
            listen,
            &data,
            &outbox,
            &extra,
            None,
        );
        Self {
            child: Some(child),
            url: url.to_owned(),
            addr: listen.to_owned(),
            data,
            outbox,
            _tmp: Some(tmp),
            extra,
            netns: Some(netns.to_owned()),
            binary: "dialtone-directory",
            log: None,
        }
    }

    /// Changes the lie of a lying directory (`POST /v1/malicious/lie` with this JSON).
    pub fn set_lie(&self, lie: Value) {
        use std::io::{Read, Write};
        let body = lie.to_string();
        let mut s = std::net::TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "POST /v1/malicious/lie HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            self.addr,
            body.len(),
            body
        )
        .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "set_lie: {answer}");
    }

    /// The code last sent to `identifier`.
    pub fn code_for(&self, identifier: &str) -> String {
        let path = self.outbox.join(identifier);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(s) = std::fs::read_to_string(&path)
                && !s.trim().is_empty()
            {
                return s.trim().to_owned();
            }
            assert!(Instant::now() < deadline, "no code in {}", path.display());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the directory (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the directory again on the same address and data.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The port may take a moment to be free again.
            match try_spawn_directory(
                self.netns.as_deref(),
                self.binary,
                &self.addr,
                &self.data,
                &self.outbox,
                &self.extra,
                self.log.as_ref(),
            ) {
                Ok((child, url)) => {
                    assert_eq!(url, self.url);
                    self.child = Some(child);
                    return;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "directory did not restart: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
}

impl Drop for Directory {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_directory(
    netns: Option<&str>,
    binary: &str,
    listen: &str,
    data: &Path,
    outbox: &Path,
    extra: &[String],
    log: Option<&(PathBuf, String)>,
) -> (Child, String) {
    try_spawn_directory(netns, binary, listen, data, outbox, extra, log)
        .unwrap_or_else(|e| panic!("directory: {e}"))
}

fn try_spawn_directory(
    netns: Option<&str>,
    binary: &str,
    listen: &str,
    data: &Path,
    outbox: &Path,
    extra: &[String],
    log: Option<&(PathBuf, String)>,
) -> Result<(Child, String), String> {
    let mut cmd = command_in(netns, &bin(binary));
    cmd.args(["--listen", listen])
        .arg("--data")
        .arg(data)
        .arg("--verify-outbox")
        .arg(outbox)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some((path, filter)) = log {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        cmd.env("DIALTONE_LOG", filter).stderr(file);
    }
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(l)) = lines.next() {
            let _ = tx.send(l);
        }
        // Keep draining so the directory never blocks on a full pipe.
        for _ in lines {}
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(line) => {
            let url = line
                .strip_prefix("listening on ")
                .ok_or_else(|| format!("unexpected first line {line:?}"))?;
            Ok((child, url.trim().to_owned()))
        }
        Err(_) => {
            let _ = child.kill();
            let status = child.wait().ok();
            Err(format!(
                "directory did not print its address (exit {status:?})"
            ))
        }
    }
}

/// The result of one `dialtone` command.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    fn from(out: Output, elapsed: Duration) -> Self {
        Self {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed,
        }
    }

    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "command failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn fails_with(&self, code: i32, needle: &str) -> &Self {
        assert_eq!(
            self.code, code,
            "unexpected exit code:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(needle) || self.stdout.contains(needle),
            "expected {needle:?} in output:\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// One person with one device: a home directory and (once `up`) a running agent.
#[derive(Debug)]
pub struct Person {
    pub identifier: String,
    pub home: PathBuf,
    /// The network namespace its commands (and agent) run in, if any.
    pub netns: Option<String>,
    _tmp: tempfile::TempDir,
}

impl Person {
    /// A person with a fresh identity (unencrypted key: tests only).
    pub fn new(identifier: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let p = Self {
            identifier: identifier.to_owned(),
            home,
            netns: None,
            _tmp: tmp,
        };
        p.run(&["id", "new", "--no-passphrase", "--name", "test-device"])
            .ok();
        p
    }

    /// A home with no identity yet (a device about to be linked).
    pub fn empty(identifier: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        Self {
            identifier: identifier.to_owned(),
            home,
            netns: None,
            _tmp: tmp,
        }
    }

    /// Starts `dialtone --home H ARGS…` without waiting; its standard output is piped.
    pub fn spawn(&self, args: &[&str]) -> Child {
        command_in(self.netns.as_deref(), &bin("dialtone"))
            .arg("--home")
            .arg(&self.home)
            .args(args)
            .env_remove("DIALTONE_PASSPHRASE")
            .env_remove("DIALTONE_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// A person whose commands and agent run inside network namespace `netns`.
    pub fn new_in(netns: &str, identifier: &str) -> Self {
        let mut p = Self::new(identifier);
        p.netns = Some(netns.to_owned());
        p
    }

    /// A person whose identity key is encrypted with the passphrase in `file`.
    pub fn new_with_passphrase_file(identifier: &str, file: &Path) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let p = Self {
            identifier: identifier.to_owned(),
            home,
            netns: None,
            _tmp: tmp,
        };
        p.run(&["id", "new", "--passphrase-file", file.to_str().unwrap()])
            .ok();
        p
    }

    /// A person registered and verified with `dir`, not yet online.
    pub fn registered(dir: &Directory, identifier: &str) -> Self {
        let p = Self::new(identifier);
        p.register(dir);
        p
    }

    /// A person registered, verified and online.
    pub fn online(dir: &Directory, identifier: &str) -> Self {
        let p = Self::registered(dir, identifier);
        p.up();
        p
    }

    pub fn register(&self, dir: &Directory) {
        self.register_with(dir, &[]);
    }

    /// Registers with extra `register` arguments (e.g. `--directory-ca`).
    pub fn register_with(&self, dir: &Directory, extra: &[&str]) {
        let mut args = vec!["register", &self.identifier, "--directory", &dir.url];
        args.extend_from_slice(extra);
        self.run(&args).ok();
        let code = dir.code_for(&self.identifier);
        self.run(&["verify", &code]).ok();
    }

    /// Runs `dialtone --home H ARGS…` (60 s at most).
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let started = Instant::now();
        let mut cmd = command_in(self.netns.as_deref(), &bin("dialtone"));
        cmd.arg("--home")
            .arg(&self.home)
            .args(args)
            .stdin(Stdio::null());
        cmd.env_remove("DIALTONE_PASSPHRASE")
            .env_remove("DIALTONE_HOME");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = wait_output(child, Duration::from_secs(60));
        Run::from(out, started.elapsed())
    }

    /// Starts the agent in the background on loopback.
    pub fn up(&self) {
        self.up_with(&[]);
    }

    /// Starts the agent in the background on loopback, with extra `up` arguments.
    pub fn up_with(&self, extra: &[&str]) {
        let mut args = UP_ARGS.to_vec();
        args.extend_from_slice(extra);
        self.run(&args).ok();
    }

    /// The agent's pid (from `agent.pid`).
    pub fn agent_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.home.join("agent.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Sends a signal to the agent.
    pub fn signal(&self, sig: i32) {
        let pid = self.agent_pid().expect("agent is not running");
        // SAFETY: plain kill(2) on a pid we started.
        unsafe { libc::kill(pid, sig) };
    }

    /// Kills the agent with SIGKILL and waits until it is gone.
    pub fn kill9(&self) {
        let pid = self.agent_pid().expect("agent is not running");
        unsafe { libc::kill(pid, libc::SIGKILL) };
        wait_until(
            Duration::from_secs(10),
            "agent to die",
            || unsafe { libc::kill(pid, 0) } != 0,
        );
        let _ = std::fs::remove_file(self.home.join("agent.pid"));
    }

    /// Streams `dialtone watch --json`.
    pub fn watch(&self) -> Watch {
        let mut child = Command::new(bin("dialtone"))
            .arg("--home")
            .arg(&self.home)
            .args(["watch", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        let mut w = Watch {
            child,
            rx,
            seen: Vec::new(),
        };
        // `watch --json` prints {"event":"watching"} once it is subscribed.
        w.expect("watch to subscribe", Duration::from_secs(10), |e| {
            e["event"] == "watching"
        });
        w.seen.clear();
        w
    }

    /// `contacts list --json`, as (identifier → entry).
    pub fn contacts(&self) -> Vec<Value> {
        self.run(&["contacts", "list", "--json"])
            .ok()
            .json()
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The state of `who` in our contact list (`None` if not listed).
    pub fn state_of(&self, who: &str) -> Option<String> {
        self.contacts()
            .into_iter()
            .find(|c| c["identifier"] == who)
            .and_then(|c| c["state"].as_str().map(str::to_owned))
    }

    /// Makes `self` and `other` mutual contacts (both online).
    pub fn befriend(&self, other: &Person) {
        let w = other.watch();
        self.run(&["contacts", "add", &other.identifier]).ok();
        let mut w = w;
        w.expect("contact request", Duration::from_secs(10), |e| {
            e["event"] == "contact_request" && e["from"] == self.identifier.as_str()
        });
        other.run(&["contacts", "accept", &self.identifier]).ok();
        wait_until(Duration::from_secs(10), "contact to show online", || {
            self.state_of(&other.identifier).as_deref() == Some("online")
        });
    }

    /// Stops the agent if it runs.
    pub fn down(&self) {
        if self.home.join("agent.sock").exists() {
            let _ = self.run(&["down"]);
        }
    }
}

impl Drop for Person {
    fn drop(&mut self) {
        // DIALTONE_TEST_LOGS=DIR keeps every agent's log as DIR/<identifier>.log.
        if let Some(dir) = std::env::var_os("DIALTONE_TEST_LOGS") {
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::copy(
                self.home.join("agent.log"),
                Path::new(&dir).join(format!("{}.log", self.identifier)),
            );
        }
        if std::thread::panicking()
            && let Ok(log) = std::fs::read_to_string(self.home.join("agent.log"))
        {
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "--- {} agent.log (last {} lines) ---\n{}",
                self.identifier,
                tail.len(),
                tail.join("\n")
            );
        }
        if let Some(pid) = self.agent_pid() {
            unsafe {
                libc::kill(pid, libc::SIGCONT);
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// A running `dialtone watch --json`.
#[derive(Debug)]
pub struct Watch {
    child: Child,
    rx: mpsc::Receiver<Value>,
    /// Every event seen so far.
    pub seen: Vec<Value>,
}

impl Watch {
    /// Waits for an event matching `pred` (events before it are kept in `seen`).
    #[track_caller]
    pub fn expect(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!("no {what} within {timeout:?}; saw {:#?}", self.seen),
            }
        }
    }

    /// Collects events for `window` and asserts none matches `pred`.
    #[track_caller]
    pub fn expect_none(&mut self, what: &str, window: Duration, pred: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + window;
        while let Ok(v) = self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(v);
        }
        assert!(
            !self.seen.iter().any(&pred),
            "unexpected {what}: {:#?}",
            self.seen
        );
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `dialtone up` in the background on loopback, without the portmapper: how tests start an
/// agent ([`Person::up`]).
pub const UP_ARGS: [&str; 7] = [
    "up",
    "--detach",
    "--bind",
    "127.0.0.1:0",
    "--bind",
    "[::1]:0",
    "--no-portmapper",
];

/// A private CA and a certificate for `names` signed by it, as PEM files `ca.pem`,
/// `cert.pem` and `key.pem` in `dir`: `(ca, cert, key)`.
pub fn private_ca(dir: &Path, names: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let leaf = rcgen::CertificateParams::new(names)
        .and_then(|p| p.signed_by(&leaf_key, &ca))
        .expect("certificate");
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.as_ref().pem()).expect("ca.pem");
    std::fs::write(&paths.1, leaf.pem()).expect("cert.pem");
    std::fs::write(&paths.2, leaf_key.serialize_pem()).expect("key.pem");
    paths
}

/// Polls `cond` every 50 ms until it holds, or fails after `timeout`.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for `child` to exit and collects its output, at most `timeout`. It returns as soon as
/// the child exits (a thread blocks in `wait`; no polling), so `Run::elapsed` measures the
/// command itself, not a polling interval; and it reads stdout and stderr while the child
/// runs, so a child that writes more than a pipe holds cannot block on a full pipe.
fn wait_output(child: Child, timeout: Duration) -> Output {
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: plain kill(2) of our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let stderr = rx
                .recv_timeout(Duration::from_secs(5))
                .ok()
                .and_then(Result::ok)
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default();
            panic!("command timed out after {timeout:?}: {stderr}");
        }
    }
}

/// Turns the terminal QR code (half blocks, light modules drawn) back into a PGM image.
pub fn terminal_qr_to_pgm(output: &str, path: &Path) {
    let rows: Vec<Vec<char>> = output
        .lines()
        .filter(|l| !l.is_empty() && l.chars().all(|c| " █▀▄".contains(c)) && l.contains('█'))
        .map(|l| l.chars().collect())
        .collect();
    assert!(rows.len() > 10, "no QR code in the output:\n{output}");
    let width = rows.iter().map(Vec::len).max().unwrap();
    let mut pixels: Vec<Vec<u8>> = Vec::new();
    for row in &rows {
        let (mut top, mut bottom) = (vec![0u8; width], vec![0u8; width]);
        for (x, c) in row.iter().enumerate() {
            let (t, b) = match c {
                '█' => (true, true),
                '▀' => (true, false),
                '▄' => (false, true),
                _ => (false, false),
            };
            top[x] = if t { 255 } else { 0 };
            bottom[x] = if b { 255 } else { 0 };
        }
        pixels.push(top);
        pixels.push(bottom);
    }
    let scale = 4;
    let (w, h) = (width * scale, pixels.len() * scale);
    let mut data = format!("P5\n{w} {h}\n255\n").into_bytes();
    for row in &pixels {
        for _ in 0..scale {
            for px in row {
                data.extend(std::iter::repeat_n(*px, scale));
            }
        }
    }
    std::fs::write(path, data).unwrap();
}

/// Decodes the QR code printed in `output` with `zbarimg` (Debian's zbar-tools, installed by
/// `scripts/setup.sh`) and returns its text.
pub fn decode_terminal_qr(output: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let pgm = tmp.path().join("qr.pgm");
    terminal_qr_to_pgm(output, &pgm);
    let out = Command::new("zbarimg")
        .args(["--raw", "-q"])
        .arg(&pgm)
        .output()
        .expect("zbarimg is installed (scripts/setup.sh installs zbar-tools)");
    assert!(
        out.status.success(),
        "zbarimg could not read the QR code: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
