//! Verification codes through real channels: email through a real SMTP server on loopback
//! (aiosmtpd, with STARTTLS and authentication required), and SMS through a real HTTP receiver
//! standing in for the operator's gateway, filled from the configured request template.

use dialtone_directory::{
    Config, Server,
    config::{SmsConfig, SmtpConfig, SmtpSecurity},
};

mod support;
use support::{Peer, code_in, confirm_body, curl, first_file, keys, now, start_body};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_arrive_by_smtp_and_by_sms_gateway() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().to_path_buf();
    // A private CA and a certificate for the SMTP server at 127.0.0.1.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    std::fs::write(t.join("ca.pem"), ca.as_ref().pem()).unwrap();
    std::fs::write(t.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(t.join("key.pem"), leaf_key.serialize_pem()).unwrap();
    std::fs::create_dir_all(t.join("mail")).unwrap();
    std::fs::create_dir_all(t.join("sms")).unwrap();

    let port = free_port();
    let p = |name: &str| t.join(name).to_str().unwrap().to_owned();
    let _smtp = Peer::start(
        "smtp_sink.py",
        &[&port.to_string(), &p("cert.pem"), &p("key.pem"), &p("mail")],
    );
    let http = Peer::start("http_sink.py", &[&p("sms")]);

    let smtp_config = |password: &str| SmtpConfig {
        host: "127.0.0.1".into(),
        port,
        security: SmtpSecurity::Starttls,
        username: Some("dialtone".into()),
        password: Some(password.into()),
        password_file: None,
        from: "Dialtone <no-reply@example.com>".into(),
        subject: "Your Dialtone code".into(),
        ca_file: Some(t.join("ca.pem")),
    };
    let mut config = Config::default();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = t.join("data");
    config.smtp = Some(smtp_config("s3cret"));
    config.sms = Some(SmsConfig {
        url: format!("http://127.0.0.1:{}/v1/send", http.ready),
        method: "POST".into(),
        headers: [("Authorization".to_owned(), "Bearer t0ken".to_owned())].into(),
        body: Some(r#"{"to": "{to}", "text": "Your Dialtone code is {code}"}"#.into()),
        content_type: "application/json".into(),
        ca_file: None,
    });
    let srv = Server::bind(config.clone()).await.unwrap();
    let base = srv.url().to_owned();
    let t2 = t.clone();
    blocking(move || {
        // Email: the code arrives in a real mail over STARTTLS with AUTH.
        let k = keys(20);
        let a = curl(
            "POST",
            &format!("{base}/v1/register/start"),
            Some(&start_body(&k, "dora@example.com", now())),
            &[],
        );
        assert_eq!(
            (a.status, a.body["channel"].as_str()),
            (202, Some("email")),
            "{}",
            a.body
        );
        let mail = first_file(&t2.join("mail"));
        assert!(mail.contains("To: dora@example.com"), "{mail}");
        assert!(mail.contains("Subject: Your Dialtone code"), "{mail}");
        let code = code_in(&mail);
        let a = curl(
            "POST",
            &format!("{base}/v1/register/confirm"),
            Some(&confirm_body(&k, "dora@example.com", &code)),
            &[],
        );
        assert_eq!(a.status, 200, "{}", a.body);

        // SMS: the gateway gets the filled-in template.
        let k = keys(21);
        let a = curl(
            "POST",
            &format!("{base}/v1/register/start"),
            Some(&start_body(&k, "+14155550123", now())),
            &[],
        );
        assert_eq!(
            (a.status, a.body["channel"].as_str()),
            (202, Some("sms")),
            "{}",
            a.body
        );
        let req: serde_json::Value = serde_json::from_str(&first_file(&t2.join("sms"))).unwrap();
        assert_eq!(req["path"], "/v1/send");
        assert_eq!(req["headers"]["authorization"], "Bearer t0ken");
        let body: serde_json::Value = serde_json::from_str(req["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["to"], "+14155550123");
        let code = code_in(body["text"].as_str().unwrap());
        let a = curl(
            "POST",
            &format!("{base}/v1/register/confirm"),
            Some(&confirm_body(&k, "+14155550123", &code)),
            &[],
        );
        assert_eq!(a.status, 200, "{}", a.body);
    })
    .await;
    srv.shutdown().await;

    // A relay that refuses our credentials: a clear error, not a 500.
    let mut bad = config;
    bad.smtp = Some(smtp_config("wrong"));
    let srv = Server::bind(bad).await.unwrap();
    let base = srv.url().to_owned();
    blocking(move || {
        let a = curl(
            "POST",
            &format!("{base}/v1/register/start"),
            Some(&start_body(&keys(22), "erin@example.com", now())),
            &[],
        );
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (502, Some("delivery_failed")),
            "{}",
            a.body
        );
    })
    .await;
    srv.shutdown().await;
}
