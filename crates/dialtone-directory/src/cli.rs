//! The `dialtone-directory` binary's command line and run loop, as a library so that a
//! binary built on the directory (the lying test directory) takes the same flags.
//!
//! Exit codes: 0 clean stop (SIGINT/SIGTERM); 1 runtime failure (address in use, database
//! unusable); 2 bad configuration (unreadable config, plain HTTP off loopback, bad TLS files).
//! Logs go to stderr (`DIALTONE_LOG` or `RUST_LOG`, default `dialtone=info`).

use std::{io::Write, net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::Parser;

use crate::{BindError, Config, Server, ServerBuilder, config::TlsConfig};

/// The directory's command line.
#[derive(Parser, Debug)]
#[command(
    name = "dialtone-directory",
    version,
    about = "Dialtone's directory: identities, presence, contacts"
)]
pub struct Args {
    /// TOML configuration file (see config.example.toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Directory for durable state.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Write verification codes to files in this directory (demos and tests).
    #[arg(long)]
    verify_outbox: Option<PathBuf>,
    /// TLS certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Allow plain HTTP on a non-loopback address (never in production).
    #[arg(long)]
    insecure_http: bool,
    /// Run a relay on this address (like `[relay] listen`); agents learn its URL.
    #[arg(long, value_name = "ADDR")]
    relay: Option<SocketAddr>,
}

/// Every session is a socket: lift the soft open-file limit to the hard one, as servers do.
fn raise_open_file_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Runs the directory as the binary does: logs to stderr, binds, prints `listening on URL`,
/// and serves until SIGINT or SIGTERM. `setup` may plug things into the server's seams
/// before it binds (the lying test directory does); the binary passes it through.
pub fn run(args: Args, setup: impl FnOnce(&Config, ServerBuilder) -> ServerBuilder) -> ExitCode {
    raise_open_file_limit();
    let filter = tracing_subscriber::EnvFilter::try_from_env("DIALTONE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("dialtone=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let mut config = match &args.config {
        Some(path) => match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|s| Config::from_toml(&s).map_err(|e| e.to_string()))
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("dialtone-directory: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(d) = args.data {
        config.data_dir = d;
    }
    if let Some(o) = args.verify_outbox {
        config.verify_outbox = Some(o);
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls = Some(TlsConfig { cert, key });
    }
    config.insecure_http |= args.insecure_http;
    if let Some(listen) = args.relay {
        let public_url = config.relay.take().and_then(|r| r.public_url);
        config.relay = Some(crate::config::RelaySection { listen, public_url });
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dialtone-directory: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let builder = setup(&config, Server::builder(config.clone()));
        let server = match builder.bind().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("dialtone-directory: {e}");
                return match e {
                    BindError::Listen { .. }
                    | BindError::Store(_)
                    | BindError::Relay(_)
                    | BindError::Echo(_)
                    | BindError::Transparency(_) => ExitCode::from(1),
                    _ => ExitCode::from(2),
                };
            }
        };
        println!("listening on {}", server.url());
        if let Some(relay) = server.relay_addr() {
            println!("relay on {relay}");
        }
        let _ = std::io::stdout().flush();
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("dialtone-directory: {e}");
                    return ExitCode::from(1);
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}
