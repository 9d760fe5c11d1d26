//! Helpers shared by the directory's integration tests: `curl` as the HTTP client, signed
//! registration bodies, and the Python peers in this folder.
#![allow(dead_code, unreachable_pub)]

use std::{process::Command, time::SystemTime};

use dialtone_proto::{
    DeviceCertificate, DeviceId, Identifier, IdentityKey,
    directory::{RegisterConfirm, RegisterStart},
    keys::{register_confirm_transcript, register_start_transcript, sign},
};
use ed25519_dalek::SigningKey;
use serde_json::Value;

pub struct Answer {
    pub status: u16,
    pub headers: String,
    pub body: Value,
}

/// Whether the `curl` binary is installed; says so on stderr when it is not (the test that
/// asks then skips, and `tests/server.rs` still covers the same answers with a Rust client).
pub fn have_curl() -> bool {
    let ok = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: the curl binary is not installed (scripts/setup.sh installs it)");
    }
    ok
}

/// `curl -s -i` with a JSON body (or none), returning status, headers and parsed body.
pub fn curl(method: &str, url: &str, body: Option<&[u8]>, extra: &[&str]) -> Answer {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-S", "-i", "--max-time", "10", "-X", method])
        .args(extra);
    let tmp;
    if let Some(b) = body {
        tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), b).unwrap();
        cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(format!("@{}", tmp.path().display()));
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("curl is installed (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("non-JSON body ({e}): {body:?}"));
    Answer {
        status,
        headers: head.to_ascii_lowercase(),
        body,
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub struct Keys {
    pub identity: SigningKey,
    pub device: SigningKey,
    pub cert: DeviceCertificate,
}

pub fn keys(seed: u8) -> Keys {
    let identity = SigningKey::from_bytes(&[seed; 32]);
    let device = SigningKey::from_bytes(&[seed.wrapping_add(100); 32]);
    let cert = DeviceCertificate::issue(
        &identity,
        DeviceId::from_signing_key(&device),
        "test",
        now(),
    )
    .unwrap();
    Keys {
        identity,
        device,
        cert,
    }
}

pub fn start_body(k: &Keys, id: &str, ts: u64) -> Vec<u8> {
    let identifier = Identifier::parse(id).unwrap();
    let ik = IdentityKey::from_signing_key(&k.identity);
    let transcript = register_start_transcript(&identifier, &ik, &k.cert, ts);
    let req = RegisterStart {
        signature: sign(&k.identity, &transcript),
        device_signature: sign(&k.device, &transcript),
        identifier,
        identity_key: ik,
        device_cert: k.cert.clone(),
        timestamp: ts,
    };
    serde_json::to_vec(&req).unwrap()
}

pub fn confirm_body(k: &Keys, id: &str, code: &str) -> Vec<u8> {
    let identifier = Identifier::parse(id).unwrap();
    let ik = IdentityKey::from_signing_key(&k.identity);
    let req = RegisterConfirm {
        signature: sign(
            &k.identity,
            &register_confirm_transcript(&identifier, code, &ik),
        ),
        identifier,
        identity_key: ik,
        code: code.into(),
        device_list: None,
        pin: None,
    };
    serde_json::to_vec(&req).unwrap()
}

/// The Python of the repository's `.venv` (made by `scripts/setup.sh`, with aiosmtpd).
pub fn python() -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh (it installs the test peers)",
        p.display()
    );
    p
}

/// A helper process that prints a `ready …` line, and stops when its stdin closes (on drop).
pub struct Peer {
    child: std::process::Child,
    /// The words after `ready` on its first line.
    pub ready: String,
}

impl Peer {
    pub fn start(script: &str, args: &[&str]) -> Self {
        use std::io::BufRead;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/support")
            .join(script);
        let mut child = Command::new(python())
            .arg(path)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("peer did not start");
        let ready = line
            .trim()
            .strip_prefix("ready")
            .unwrap_or_else(|| panic!("peer said {line:?}"))
            .trim()
            .to_owned();
        Self { child, ready }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (10 s at most) for the first file in `dir` and returns its content.
pub fn first_file(dir: &std::path::Path) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map(|r| {
                r.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x != "tmp"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        if let Some(f) = files.first() {
            return std::fs::read_to_string(f).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing arrived in {}",
            dir.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The 6-digit code after "code is " in a text.
pub fn code_in(text: &str) -> String {
    let at = text
        .find("code is ")
        .unwrap_or_else(|| panic!("no code in {text}"))
        + "code is ".len();
    text[at..at + 6].to_owned()
}
