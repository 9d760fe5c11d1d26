//! A verification channel that fails must not put the code or the identifier in the
//! directory's log: an SMS gateway URL carries both (`{to}`, `{code}`), and the HTTP client's
//! error names the URL it failed to reach. Found by the log-privacy review of point 9; the
//! debug-level log test of the whole system is `crates/dialtone-cli/tests/log_privacy.rs`.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use dialtone_directory::{Config, Server, config::SmsConfig};

mod support;
use support::{curl, keys, now, start_body};

/// Every log line the directory writes, in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sms_gateway_logs_neither_code_nor_number() {
    let log = Captured::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    // A gateway port where nothing listens: the request fails at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = tmp.path().join("data");
    config.sms = Some(SmsConfig {
        url: format!("http://127.0.0.1:{port}/send?to={{to}}&text=code-{{code}}"),
        method: "POST".into(),
        headers: Default::default(),
        body: None,
        content_type: "application/json".into(),
        ca_file: None,
    });
    let srv = Server::bind(config).await.unwrap();
    let url = format!("{}/v1/register/start", srv.url());
    let a = tokio::task::spawn_blocking(move || {
        curl(
            "POST",
            &url,
            Some(&start_body(&keys(30), "+14155550177", now())),
            &[],
        )
    })
    .await
    .unwrap();
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (502, Some("delivery_failed")),
        "{}",
        a.body
    );
    srv.shutdown().await;

    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("verification channel failed"),
        "the failure is logged:\n{text}"
    );
    for secret in ["code-", "4155550177", "/send?"] {
        assert!(!text.contains(secret), "{secret:?} in the log:\n{text}");
    }
}
