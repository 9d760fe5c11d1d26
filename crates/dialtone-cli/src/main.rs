//! `dialtone`: the command-line front end of the Dialtone agent.
//!
//! `id`, `register` and `verify` work on the home directory and the directory server directly;
//! `up` runs the agent; every other command is a client of the running agent's local API.
//!
//! Exit codes: 0 success; 1 error; 2 usage; 3 the agent is not running; 4 the directory
//! refused or could not be reached; 10–17 a message was refused (see `Refusal::exit_code`:
//! 10 offline, 11 unreachable, 12 not-a-contact, 13 blocked, 14 do-not-disturb, 15 timeout,
//! 16 key-changed, 17 peer-refused).

use std::{
    io::{BufRead, Write},
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

mod devices;
use dialtone_agent::{
    Agent, AgentConfig, DirectoryClient, DirectoryError, Home,
    api::{Client, ClientError, RpcError, codes},
    home::Settings,
};
use dialtone_proto::{
    Identifier,
    devices::{DeviceEntry, DeviceList, DeviceListContent},
    directory::{ErrorCode, RegisterConfirm, RegisterStart, check_pin},
    keys::{register_confirm_transcript, register_start_transcript, sign},
    rules::clean_code,
};
use serde_json::{Value, json};

/// Exit code: the agent is not running.
const EXIT_NOT_RUNNING: u8 = 3;
/// Exit code: the directory refused or is unreachable.
const EXIT_DIRECTORY: u8 = 4;

#[derive(Parser, Debug)]
#[command(
    name = "dialtone",
    version,
    about = "Instant messaging that works like a phone call"
)]
struct Cli {
    /// Home directory with keys and settings [env: DIALTONE_HOME; default: the platform's data dir].
    #[arg(long, global = true, env = "DIALTONE_HOME")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create or show this device's identity.
    #[command(subcommand)]
    Id(IdCommand),
    /// Register an email address or phone number with a directory (sends a code).
    Register {
        /// alice@example.com or +14155550100.
        identifier: String,
        /// The directory's URL (https://…; http:// only on loopback).
        #[arg(long)]
        directory: String,
        /// PEM file with the CA that signed the directory's certificate, if not a public CA.
        #[arg(long)]
        directory_ca: Option<PathBuf>,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// Confirm a registration with the code that was sent.
    Verify {
        /// The code.
        code: String,
        #[command(flatten)]
        pass: PassArgs,
        #[command(flatten)]
        pin: PinArgs,
    },
    /// Link, list and revoke this account's devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// The registration lock: a PIN the directory asks for before anyone who re-verified
    /// your identifier can bind another key to it.
    #[command(subcommand)]
    Lock(LockCommand),
    /// Run the agent (go online).
    Up(UpArgs),
    /// Stop the running agent (go offline at once).
    Down,
    /// Manage contacts.
    #[command(subcommand)]
    Contacts(ContactsCommand),
    /// Show or set your presence.
    Status {
        #[command(subcommand)]
        set: Option<StatusCommand>,
        /// List open peer connections: direct or relayed, remote address, round-trip time.
        #[arg(long)]
        connections: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Devices seen on the LAN (with `up --lan`), and which contact each one is.
    Lan {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check this device's network: IPv6, NAT kind, the relay's latency, and whether direct
    /// connections to others are likely to work.
    Doctor {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send a message; exits 0 only once the recipient's device acknowledged it.
    Send {
        /// Recipient.
        to: String,
        /// The text (several words are joined with spaces; `-` reads standard input).
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stream incoming messages and events.
    Watch {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Interactive line-mode chat with one contact (/quit to leave).
    Chat {
        /// The contact.
        with: String,
    },
}

#[derive(Subcommand, Debug)]
enum IdCommand {
    /// Create an identity key and a device key certified by it.
    New {
        /// A name for this device.
        #[arg(long, default_value = "device")]
        name: String,
        /// Store the identity key unencrypted (not recommended).
        #[arg(long)]
        no_passphrase: bool,
        /// Replace an existing identity (the old key is lost).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// Print the identity's fingerprint.
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum DeviceCommand {
    /// On a device with the identity key (agent up): show a code for a new device and link
    /// it when it connects. On a new device: `dialtone device link CODE --directory URL
    /// --name NAME` (or `--ticket` with the QR code's text) joins the account.
    Link {
        /// The code shown by the other device (only on the new device).
        code: Option<String>,
        /// The QR code's text (`dialtone-link:…`), instead of CODE and --directory.
        #[arg(long, conflicts_with = "code")]
        ticket: Option<String>,
        /// The directory's URL (new device; the ticket carries it).
        #[arg(long)]
        directory: Option<String>,
        /// PEM file with the CA that signed the directory's certificate, if not a public CA.
        #[arg(long)]
        directory_ca: Option<PathBuf>,
        /// This device's name (new device), e.g. "laptop".
        #[arg(long)]
        name: Option<String>,
        /// Local address for the direct connection (repeatable; new device).
        #[arg(long = "bind")]
        bind: Vec<SocketAddr>,
        /// Seconds to wait for the new device (existing device). Default 600.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// List this account's devices, as the transparency log proves them.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a device from the account: it can no longer connect to anyone.
    Revoke {
        /// The device's name (see `dialtone device list`).
        name: String,
        #[command(flatten)]
        pass: PassArgs,
    },
}

#[derive(Subcommand, Debug)]
enum LockCommand {
    /// Turn the registration lock on, or change its PIN.
    Set {
        #[command(flatten)]
        pin: PinArgs,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// Turn the registration lock off.
    Clear {
        #[command(flatten)]
        pass: PassArgs,
    },
}

#[derive(Args, Debug)]
struct PinArgs {
    /// File whose first line is the registration-lock PIN [or env DIALTONE_PIN].
    #[arg(long)]
    pin_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct PassArgs {
    /// File whose first line is the passphrase of the identity key [or env DIALTONE_PASSPHRASE].
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct UpArgs {
    /// Run in the background (logs to agent.log in the home).
    #[arg(long)]
    detach: bool,
    /// Local address for peer connections (repeatable). Default: every interface, IPv6 and IPv4.
    #[arg(long = "bind")]
    bind: Vec<SocketAddr>,
    /// Do not ask the router for a port mapping (UPnP/PCP/NAT-PMP).
    #[arg(long)]
    no_portmapper: bool,
    /// Never send or accept messages over the relay: wait for a direct path and refuse
    /// (`unreachable`) if none comes up.
    #[arg(long)]
    direct_only: bool,
    /// LAN mode: announce this device with mDNS and reach contacts you talked to before on
    /// the LAN, even while the directory is down.
    #[arg(long)]
    lan: bool,
    /// Seconds between checks of your own identifier's key history in the directory's
    /// transparency log (also checked at every login). Default 300.
    #[arg(long, value_name = "SECS")]
    kt_monitor_interval: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum ContactsCommand {
    /// List contacts, requests and blocks with live presence.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask someone to be your contact (they must be online).
    Add { identifier: String },
    /// Accept a contact request.
    Accept { identifier: String },
    /// Reject a contact request.
    Reject { identifier: String },
    /// Remove a contact.
    Remove { identifier: String },
    /// Block someone.
    Block { identifier: String },
    /// Unblock someone.
    Unblock { identifier: String },
    /// Accept a contact's new identity key after a key-change warning (check with them first).
    Trust { identifier: String },
    /// Show the safety number (and QR code) to compare with a contact; --confirm marks them verified.
    Verify {
        identifier: String,
        /// The numbers matched: mark this key verified (a later key change is then a hard block).
        #[arg(long)]
        confirm: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum StatusCommand {
    /// Set your presence: online, away, busy or invisible.
    Set {
        /// online | away | busy | invisible.
        state: String,
        /// A status ("away") message.
        #[arg(long)]
        message: Option<String>,
    },
}

/// An error with its exit code.
#[derive(Debug)]
struct Fail {
    code: u8,
    message: String,
}

impl<E: Into<anyhow::Error>> From<E> for Fail {
    fn from(e: E) -> Self {
        let e: anyhow::Error = e.into();
        if let Some(c) = e.downcast_ref::<ClientError>() {
            return client_fail(c);
        }
        if let Some(d) = e.downcast_ref::<DirectoryError>() {
            return Self {
                code: EXIT_DIRECTORY,
                message: d.to_string(),
            };
        }
        Self {
            code: 1,
            message: format!("{e:#}"),
        }
    }
}

fn client_fail(e: &ClientError) -> Fail {
    let code = match e {
        ClientError::NotRunning(_) => EXIT_NOT_RUNNING,
        ClientError::Rpc(rpc) => rpc_exit_code(rpc),
        _ => 1,
    };
    Fail {
        code,
        message: e.to_string(),
    }
}

fn rpc_exit_code(rpc: &RpcError) -> u8 {
    if let Some(r) = rpc.refusal() {
        return r.exit_code();
    }
    let directory_code = rpc
        .data
        .as_ref()
        .and_then(|d| d.get("error"))
        .and_then(Value::as_str);
    if rpc.code == codes::DIRECTORY && directory_code == Some("offline") {
        // A contact request to someone offline: refused like a message would be.
        return dialtone_proto::Refusal::Offline.exit_code();
    }
    match rpc.code {
        codes::NOT_CONNECTED | codes::DIRECTORY => EXIT_DIRECTORY,
        codes::INVALID_PARAMS => 2,
        _ => 1,
    }
}

type Result<T = ()> = std::result::Result<T, Fail>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match dialtone_agent::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dialtone: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("dialtone: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn home_dir(cli_home: Option<PathBuf>) -> Result<Home> {
    let path = match cli_home {
        Some(p) => p,
        None => directories::ProjectDirs::from("im", "dialtone", "dialtone")
            .map(|d| d.data_dir().to_path_buf())
            .ok_or_else(|| {
                anyhow::anyhow!("cannot find a home directory: pass --home or set DIALTONE_HOME")
            })?,
    };
    Ok(Home::open(path)?)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn pin(args: &PinArgs) -> Result<Option<String>> {
    if let Some(f) = &args.pin_file {
        let s = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read PIN file {}", f.display()))?;
        let line = s.lines().next().unwrap_or("").to_owned();
        if line.is_empty() {
            return Err(anyhow::anyhow!("the PIN file {} is empty", f.display()).into());
        }
        return Ok(Some(line));
    }
    Ok(std::env::var("DIALTONE_PIN").ok().filter(|s| !s.is_empty()))
}

fn passphrase(args: &PassArgs) -> Result<Option<String>> {
    if let Some(f) = &args.passphrase_file {
        let s = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read passphrase file {}", f.display()))?;
        let line = s.lines().next().unwrap_or("").to_owned();
        if line.is_empty() {
            return Err(anyhow::anyhow!("the passphrase file {} is empty", f.display()).into());
        }
        return Ok(Some(line));
    }
    Ok(std::env::var("DIALTONE_PASSPHRASE")
        .ok()
        .filter(|s| !s.is_empty()))
}

async fn run(cli: Cli) -> Result {
    let home = home_dir(cli.home)?;
    match cli.command {
        Command::Id(IdCommand::New {
            name,
            no_passphrase,
            force,
            pass,
        }) => {
            let pass = passphrase(&pass)?;
            if pass.is_none() && !no_passphrase {
                return Err(anyhow::anyhow!(
                    "the identity key must be protected: give a passphrase with --passphrase-file FILE \
                     or DIALTONE_PASSPHRASE, or pass --no-passphrase to store it unencrypted"
                )
                .into());
            }
            // Keys are written 0600 anyway; a strict umask also covers any temporary file.
            // SAFETY: umask only changes this process's file-creation mask.
            unsafe { libc::umask(0o077) };
            let (ik, cert) = home.create_identity(pass.as_deref(), &name, now(), force)?;
            println!("created identity {}", ik.fingerprint());
            println!("device {} ({})", cert.device_id.short(), cert.name);
            println!("home {}", home.root().display());
            if pass.is_none() {
                println!("warning: the identity key is stored unencrypted");
            }
            Ok(())
        }
        Command::Id(IdCommand::Show { json }) => {
            let ik = home.identity_key()?;
            let cert = home.device_cert()?;
            let settings = home.settings()?;
            if json {
                println!(
                    "{}",
                    json!({
                        "identity_key": ik, "fingerprint": ik.fingerprint().to_string(),
                        "device": cert.device_id, "device_name": cert.name,
                        "identifier": settings.identifier, "registered": settings.registered,
                        "directory": settings.directory,
                        "encrypted": home.identity_is_encrypted().ok(),
                        "linked": home.is_linked(),
                    })
                );
            } else {
                println!("{}", ik.fingerprint());
                println!("identity key  {ik}");
                println!("device        {} ({})", cert.device_id, cert.name);
                match (&settings.identifier, settings.registered) {
                    (Some(id), true) => println!(
                        "registered    {id} at {}",
                        settings.directory.unwrap_or_default()
                    ),
                    (Some(id), false) => println!("pending       {id}: run `dialtone verify CODE`"),
                    _ => println!("not registered"),
                }
            }
            Ok(())
        }
        Command::Register {
            identifier,
            directory,
            directory_ca,
            pass,
        } => register(&home, &identifier, &directory, directory_ca, &pass).await,
        Command::Verify { code, pass, pin } => verify(&home, &code, &pass, &pin).await,
        Command::Device(c) => devices::run(&home, c).await,
        Command::Lock(c) => devices::lock(&home, c).await,
        Command::Up(args) => up(home, args).await,
        Command::Down => down(&home).await,
        Command::Contacts(c) => contacts(&home, c).await,
        Command::Status {
            set,
            connections: true,
            json,
        } if set.is_none() => connections(&home, json).await,
        Command::Status { set, json, .. } => status(&home, set, json).await,
        Command::Doctor { json } => doctor(&home, json).await,
        Command::Lan { json } => {
            let peers = call(&home, "lan.peers", json!({})).await?;
            if json {
                println!("{peers}");
            } else {
                let list = peers.as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    println!("no Dialtone devices seen on the LAN (is the agent up with --lan?)");
                }
                for p in list {
                    println!(
                        "{}  device {}  {}",
                        p["contact"].as_str().unwrap_or("(not a pinned contact)"),
                        p["device"]
                            .as_str()
                            .unwrap_or("")
                            .chars()
                            .take(10)
                            .collect::<String>(),
                        p["addrs"]
                    );
                }
            }
            Ok(())
        }
        Command::Send { to, text, json } => send(&home, &to, text, json).await,
        Command::Watch { json } => watch(&home, json).await,
        Command::Chat { with } => chat(&home, &with).await,
    }
}

fn parse_identifier(s: &str) -> Result<Identifier> {
    Identifier::parse(s).map_err(|e| Fail {
        code: 2,
        message: e.to_string(),
    })
}

async fn register(
    home: &Home,
    identifier: &str,
    directory: &str,
    ca: Option<PathBuf>,
    pass: &PassArgs,
) -> Result {
    let identifier = parse_identifier(identifier)?;
    let client = DirectoryClient::new(directory, ca.as_deref())?;
    let key = home.identity_signing_key(passphrase(pass)?.as_deref())?;
    let cert = home.device_cert()?;
    let ik = home.identity_key()?;
    let ts = now();
    let transcript = register_start_transcript(&identifier, &ik, &cert, ts);
    let device = ed25519_dalek::SigningKey::from_bytes(&*home.device_secret()?);
    let req = RegisterStart {
        signature: sign(&key, &transcript),
        device_signature: sign(&device, &transcript),
        identifier: identifier.clone(),
        identity_key: ik,
        device_cert: cert,
        timestamp: ts,
    };
    let started = client.register_start(&req).await?;
    let ca = ca.map(|p| std::fs::canonicalize(&p).unwrap_or(p));
    home.save_settings(&Settings {
        directory: Some(client.base().to_owned()),
        directory_ca: ca,
        identifier: Some(identifier.clone()),
        registered: false,
        ..home.settings()?
    })?;
    println!(
        "a verification code was sent to {identifier} (by {}); it is valid for {} minutes",
        started.channel,
        started.expires_in_secs / 60
    );
    println!("next: dialtone verify CODE");
    Ok(())
}

async fn verify(home: &Home, code: &str, pass: &PassArgs, pin_args: &PinArgs) -> Result {
    let mut settings = home.settings()?;
    let (Some(identifier), Some(directory)) =
        (settings.identifier.clone(), settings.directory.clone())
    else {
        return Err(anyhow::anyhow!(
            "nothing to verify: run `dialtone register IDENTIFIER --directory URL` first"
        )
        .into());
    };
    let Some(code) = clean_code(code) else {
        return Err(Fail {
            code: 2,
            message: format!("'{code}' is not a code: codes are 6 digits"),
        });
    };
    let pin = pin(pin_args)?;
    if let Some(p) = &pin {
        check_pin(p).map_err(|m| Fail {
            code: 2,
            message: m,
        })?;
    }
    let client = DirectoryClient::new(&directory, settings.directory_ca.as_deref())?;
    let key = home.identity_signing_key(passphrase(pass)?.as_deref())?;
    let ik = home.identity_key()?;
    let cert = home.device_cert()?;
    // The device list to publish: this device, plus the other devices of this key if the
    // identifier is bound to it already (a re-registration keeps them).
    // Not registered yet is fine; any other failure must stop here, or the list below would
    // drop (revoke) this key's other devices.
    let current = match client.lookup(&identifier).await {
        Ok(rec) => Some(rec),
        Err(DirectoryError::Refused { body, .. }) if body.error == ErrorCode::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    // The list to start from: the newer of the one this device signed last and the one the
    // directory shows (its answer carries no proof: it could be an older list of ours, with a
    // revoked device or without the lock, for us to sign again).
    let mine = devices::last_published(home, &identifier, &ik);
    let mut entries = Vec::new();
    let mut previous_version = mine.as_ref().map(|l| l.version);
    let mut other_key_locked = false;
    let mut own_locked = false;
    let mut own_unlocked = false;
    if let Some(rec) = &current {
        if rec.identity_key == ik {
            // Only a list our own key signed is carried over.
            let shown = rec.device_list.as_ref().filter(|l| {
                l.verify().is_ok() && l.identity_key == ik && l.identifier == identifier
            });
            if let (Some(s), Some(m)) = (shown, &mine)
                && s.version < m.version
            {
                eprintln!(
                    "warning: the directory shows an older device list (version {}) than the one this device published last (version {}); keeping the newer one",
                    s.version, m.version
                );
            }
            let base = match (shown, &mine) {
                (Some(s), Some(m)) if s.version < m.version => Some(m),
                (Some(s), _) => Some(s),
                (None, m) => m.as_ref(),
            };
            if let Some(l) = base {
                entries = l.devices.clone();
                previous_version = previous_version.max(Some(l.version));
                // Re-verifying our own key keeps its lock (`dialtone lock clear` removes it),
                // and how the key was first bound.
                own_locked = l.registration_lock;
                own_unlocked = l.unlocked_with_pin;
            }
        } else {
            other_key_locked = rec
                .device_list
                .as_ref()
                .is_some_and(|l| l.registration_lock);
        }
    }
    if !entries.iter().any(|e| e.device_id == cert.device_id) {
        entries.retain(|e| e.name != cert.name);
        entries.push(DeviceEntry {
            device_id: cert.device_id,
            name: cert.name.clone(),
            added_at: now(),
        });
    }
    let sign_list = |unlocked: bool| {
        DeviceList::sign(
            &key,
            DeviceListContent {
                identifier: identifier.clone(),
                version: DeviceList::next_version(previous_version, now_ms()),
                devices: entries.clone(),
                registration_lock: pin.is_some() || own_locked,
                unlocked_with_pin: unlocked,
            },
        )
        .map_err(|e| Fail {
            code: 2,
            message: format!("cannot make the device list: {e}"),
        })
    };
    let mut unlocked = (pin.is_some() && other_key_locked) || own_unlocked;
    let mut tries = 0;
    let (done, published) = loop {
        let list = sign_list(unlocked)?;
        let req = RegisterConfirm {
            signature: sign(&key, &register_confirm_transcript(&identifier, &code, &ik)),
            identifier: identifier.clone(),
            identity_key: ik,
            code: code.clone(),
            device_list: Some(list.clone()),
            pin: pin.clone(),
        };
        match client.register_confirm(&req).await {
            // The lock lapsed (or was opened) unlike the public record suggested: say so
            // truthfully in the list and try once more.
            Err(DirectoryError::Refused { body, .. })
                if body.error == ErrorCode::BadDeviceList
                    && body.message.contains("unlocked")
                    && tries == 0 =>
            {
                unlocked = !unlocked;
                tries += 1;
            }
            other => break (other?, list),
        }
    };
    settings.registered = true;
    home.save_settings(&settings)?;
    devices::remember(home, &published);
    println!(
        "registered {} with identity {}",
        done.identifier,
        done.identity_key.fingerprint()
    );
    if pin.is_some() {
        println!("registration lock: on (keep the PIN safe; `dialtone lock clear` turns it off)");
    } else if own_locked {
        println!("registration lock: still on, with its PIN (`dialtone lock clear` turns it off)");
    }
    if done.replaced_key {
        println!(
            "note: this replaced the key that was registered for {} before; your contacts will be warned",
            done.identifier
        );
    }
    println!("next: dialtone up");
    Ok(())
}

async fn up(home: Home, args: UpArgs) -> Result {
    if args.detach {
        return detach(&home, &args).await;
    }
    init_tracing();
    let mut config = AgentConfig::new(home.clone());
    if !args.bind.is_empty() {
        config.bind = args.bind.clone();
    }
    config.portmapper = !args.no_portmapper;
    config.direct_only = args.direct_only;
    config.lan = args.lan;
    if let Some(secs) = args.kt_monitor_interval {
        config.kt_monitor_interval = Duration::from_secs(secs.max(1));
    }
    let agent = Agent::start(config).await.map_err(|e| {
        let code = match e {
            dialtone_agent::StartError::Directory(_) => EXIT_DIRECTORY,
            _ => 1,
        };
        Fail {
            code,
            message: e.to_string(),
        }
    })?;
    let _ = std::fs::write(home.path("agent.pid"), format!("{}\n", std::process::id()));
    let st = agent.handle().status();
    println!(
        "dialtone agent up: {} (device {}), directory {}, local API {}",
        st.identifier,
        st.device.short(),
        st.directory,
        home.socket_path().display()
    );
    let _ = std::io::stdout().flush();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install signal handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = agent.shutdown_requested() => {}
    }
    agent.shutdown().await;
    let _ = std::fs::remove_file(home.path("agent.pid"));
    println!("dialtone agent stopped");
    Ok(())
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DIALTONE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("dialtone=info,dialtone_agent=info,warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn detach(home: &Home, args: &UpArgs) -> Result {
    use std::os::unix::process::CommandExt;
    if Client::connect(&home.socket_path()).await.is_ok() {
        println!("the agent is already running");
        return Ok(());
    }
    let exe = std::env::current_exe().context("cannot find the dialtone executable")?;
    let log_path = home.path("agent.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--home").arg(home.root()).arg("up");
    for b in &args.bind {
        cmd.arg("--bind").arg(b.to_string());
    }
    if args.no_portmapper {
        cmd.arg("--no-portmapper");
    }
    if args.direct_only {
        cmd.arg("--direct-only");
    }
    if args.lan {
        cmd.arg("--lan");
    }
    if let Some(secs) = args.kt_monitor_interval {
        cmd.arg("--kt-monitor-interval").arg(secs.to_string());
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone().context("log file")?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the child from our terminal session.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the agent")?;
    let exited = |status: std::process::ExitStatus| -> Fail {
        let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
        let last: Vec<&str> = tail.lines().rev().take(5).collect();
        anyhow::anyhow!(
            "the agent exited ({status}):\n{}",
            last.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
        .into()
    };
    for _ in 0..150 {
        if let Some(status) = child.try_wait().context("agent")? {
            return Err(exited(status));
        }
        if Client::connect(&home.socket_path()).await.is_ok() {
            println!(
                "dialtone agent started in the background (pid {}); log: {}",
                child.id(),
                log_path.display()
            );
            // Return once online (presence published, contacts synced), so that the next
            // command finds us reachable; a directory out of reach is not an error (and in
            // LAN mode, not waited for).
            if !args.lan && !wait_online(home, &mut child, Duration::from_secs(10)).await {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(exited(status));
                }
                println!(
                    "not connected to the directory yet: the agent keeps trying (`dialtone status` shows it)"
                );
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(anyhow::anyhow!(
        "the agent did not start within 15 s; see {}",
        log_path.display()
    )
    .into())
}

/// Waits up to `limit` until the agent's directory session is up (not once it exited).
async fn wait_online(home: &Home, agent: &mut std::process::Child, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if !matches!(agent.try_wait(), Ok(None)) {
            return false;
        }
        if let Ok(st) = call(home, "agent.status", json!({})).await
            && st["directory_connected"].as_bool() == Some(true)
        {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn client(home: &Home) -> Result<Client> {
    Client::connect(&home.socket_path())
        .await
        .map_err(|e| client_fail(&e))
}

async fn call(home: &Home, method: &str, params: Value) -> Result<Value> {
    client(home)
        .await?
        .call(method, params)
        .await
        .map_err(|e| client_fail(&e))
}

async fn down(home: &Home) -> Result {
    call(home, "agent.shutdown", json!({})).await?;
    for _ in 0..100 {
        if !home.socket_path().exists() {
            println!("dialtone agent stopped");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(anyhow::anyhow!("the agent did not stop within 10 s").into())
}

async fn contacts(home: &Home, c: ContactsCommand) -> Result {
    let (method, who, verb) = match c {
        ContactsCommand::List { json } => return list_contacts(home, json).await,
        ContactsCommand::Add { identifier } => {
            ("contacts.add", identifier, "contact request sent to")
        }
        ContactsCommand::Accept { identifier } => ("contacts.accept", identifier, "accepted"),
        ContactsCommand::Reject { identifier } => ("contacts.reject", identifier, "rejected"),
        ContactsCommand::Remove { identifier } => ("contacts.remove", identifier, "removed"),
        ContactsCommand::Block { identifier } => ("contacts.block", identifier, "blocked"),
        ContactsCommand::Unblock { identifier } => ("contacts.unblock", identifier, "unblocked"),
        ContactsCommand::Verify {
            identifier,
            confirm,
            json,
        } => {
            let id = parse_identifier(&identifier)?;
            let v = call(
                home,
                "contacts.verify",
                json!({"identifier": id, "confirm": confirm}),
            )
            .await?;
            if json {
                println!("{v}");
                return Ok(());
            }
            print_safety(&id, &v, confirm);
            return Ok(());
        }
        ContactsCommand::Trust { identifier } => {
            let id = parse_identifier(&identifier)?;
            let r = call(home, "contacts.trust", json!({"identifier": id})).await?;
            println!(
                "now trusting the key {} for {id}",
                r["fingerprint"].as_str().unwrap_or("?")
            );
            return Ok(());
        }
    };
    let id = parse_identifier(&who)?;
    call(home, method, json!({"identifier": id})).await?;
    println!("{verb} {id}");
    Ok(())
}

/// Prints a QR code of `payload` in the terminal.
fn print_qr(payload: &str) {
    if let Ok(code) = qrcode::QrCode::new(payload.as_bytes()) {
        // Light modules drawn as blocks: reads right on the usual dark terminal background.
        let qr = code
            .render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .quiet_zone(true)
            .build();
        println!("{qr}");
        println!();
    }
}

fn print_safety(id: &Identifier, v: &Value, confirmed: bool) {
    let number = v["safety_number"].as_str().unwrap_or("");
    let groups: Vec<&str> = number.split(' ').collect();
    println!("Safety number with {id}:");
    println!();
    for row in groups.chunks(4) {
        println!("    {}", row.join(" "));
    }
    println!();
    print_qr(v["qr_payload"].as_str().unwrap_or(""));
    if v["key"] == "changed" {
        println!("WARNING: this is a NEW key for {id}, not the one you pinned before.");
    }
    if confirmed {
        println!(
            "{id} is now verified. If their key ever changes, messages are blocked until you verify again."
        );
    } else if v["verified"] == true {
        println!("{id} is verified.");
    } else {
        println!("Compare these digits with {id} in person or on a call (or scan the code).");
        println!("If they match, run: dialtone contacts verify {id} --confirm");
    }
}

async fn list_contacts(home: &Home, json: bool) -> Result {
    let list = call(home, "contacts.list", json!({})).await?;
    if json {
        println!("{list}");
        return Ok(());
    }
    let Some(items) = list.as_array().filter(|a| !a.is_empty()) else {
        println!("no contacts yet: add one with `dialtone contacts add IDENTIFIER`");
        return Ok(());
    };
    for c in items {
        let s = |k: &str| c[k].as_str().unwrap_or("").to_owned();
        let relation = match s("relation").as_str() {
            "accepted" => String::new(),
            "incoming" => " (wants to be your contact: dialtone contacts accept)".into(),
            "outgoing" => " (request sent)".into(),
            "blocked" => " (blocked)".into(),
            other => format!(" ({other})"),
        };
        let msg = c["message"]
            .as_str()
            .map(|m| format!(" \"{}\"", printable(m)))
            .unwrap_or_default();
        let key = match (s("key").as_str(), c["verified"] == true) {
            ("changed", _) => "  KEY CHANGED!",
            (_, true) => "  (verified)",
            _ => "",
        };
        // While the agent cannot reach its directory the state is the last one known.
        let stale = if c["live"] == false {
            match c["confirmed_at"].as_u64() {
                Some(t) => format!(" (last known, {} ago)", ago(t)),
                None => " (unknown: the directory was never reached)".into(),
            }
        } else {
            String::new()
        };
        println!(
            "{:<32} {:<9}{stale}{msg}{relation}{key}",
            s("identifier"),
            s("state")
        );
    }
    Ok(())
}

/// How long ago Unix time `t` was, roughly: `12 s`, `7 min`, `3 h`, `2 d`.
fn ago(t: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let s = now.saturating_sub(t);
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        7200..172_800 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

async fn connections(home: &Home, json: bool) -> Result {
    let list = call(home, "connections.list", json!({})).await?;
    if json {
        println!("{list}");
        return Ok(());
    }
    let items = list.as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("no open peer connections");
    }
    for c in items {
        let s = |k: &str| c[k].as_str().unwrap_or("").to_owned();
        let device: String = s("device").chars().take(8).collect();
        let rtt = c["rtt_ms"]
            .as_f64()
            .map(|ms| format!("rtt {ms:.1} ms"))
            .unwrap_or_else(|| "rtt -".into());
        println!(
            "{}  device {device}  {:<8}  {}  {rtt}",
            s("identifier"),
            s("path"),
            c["remote_addr"].as_str().unwrap_or("-"),
        );
    }
    Ok(())
}

async fn doctor(home: &Home, json: bool) -> Result {
    let report = dialtone_agent::doctor::run(home).await.map_err(|e| Fail {
        code: match e {
            dialtone_agent::doctor::DoctorError::Directory(_) => EXIT_DIRECTORY,
            _ => 2,
        },
        message: e.to_string(),
    })?;
    if json {
        println!("{}", serde_json::to_string(&report).context("json")?);
    } else {
        for line in &report.summary {
            println!("{line}");
        }
    }
    if report.directory_reachable {
        Ok(())
    } else {
        Err(Fail {
            code: EXIT_DIRECTORY,
            message: format!("the directory {} does not answer", report.directory),
        })
    }
}

async fn status(home: &Home, set: Option<StatusCommand>, json: bool) -> Result {
    if let Some(StatusCommand::Set { state, message }) = set {
        let state = match state.as_str() {
            "online" | "away" | "busy" | "invisible" => state,
            other => {
                return Err(Fail {
                    code: 2,
                    message: format!(
                        "unknown state '{other}': use online, away, busy or invisible"
                    ),
                });
            }
        };
        call(
            home,
            "status.set",
            json!({"state": state, "message": message}),
        )
        .await?;
        println!(
            "you are {state}{}",
            message.map(|m| format!(": {m}")).unwrap_or_default()
        );
        return Ok(());
    }
    let st = call(home, "agent.status", json!({})).await?;
    if json {
        println!("{st}");
    } else {
        let s = |k: &str| st[k].as_str().unwrap_or("").to_owned();
        println!(
            "{} is {}{}",
            s("identifier"),
            s("state"),
            st["message"]
                .as_str()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
        println!(
            "directory {} ({})",
            s("directory"),
            if st["directory_connected"].as_bool() == Some(true) {
                "connected"
            } else {
                "NOT connected, retrying"
            }
        );
    }
    Ok(())
}

async fn send(home: &Home, to: &str, text: Vec<String>, json: bool) -> Result {
    let to = parse_identifier(to)?;
    let body = if text.len() == 1 && text[0] == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("cannot read standard input")?;
        s.trim_end_matches('\n').to_owned()
    } else {
        text.join(" ")
    };
    let r = call(home, "message.send", json!({"to": to, "body": body})).await?;
    if json {
        println!("{r}");
    } else {
        let n = r["delivered_to"].as_array().map_or(0, Vec::len);
        println!(
            "delivered to {to} ({n} device{})",
            if n == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// `text` from someone else, safe to print on a terminal: control characters (escape
/// sequences could rewrite the screen, the title or the clipboard) and bidirectional overrides
/// (they could reorder what is shown) are written as `\u{..}` escapes. `--json` output keeps
/// the text as it came.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

fn describe(ev: &Value) -> Option<String> {
    let s = |k: &str| printable(ev[k].as_str().unwrap_or(""));
    Some(match s("event").as_str() {
        "message" => format!("{}: {}", s("from"), s("body")),
        "presence" => format!(
            "* {} is now {}{}",
            s("identifier"),
            s("state"),
            ev["message"]
                .as_str()
                .map(|m| format!(": {}", printable(m)))
                .unwrap_or_default()
        ),
        "contact_request" => format!(
            "* {} wants to be your contact (key {}); `dialtone contacts accept {}`",
            s("from"),
            s("fingerprint"),
            s("from")
        ),
        "contact_changed" => format!(
            "* {} is now {}",
            s("identifier"),
            match s("relation").as_str() {
                "accepted" => "your contact".to_owned(),
                "none" => "no longer your contact".to_owned(),
                r => r.to_owned(),
            }
        ),
        "key_changed" => format!(
            "!!! WARNING: the identity key of {} CHANGED (pinned {}, now {}){}. Messages are refused until you \
             check with them and run `dialtone contacts trust {}`",
            s("identifier"),
            s("pinned_fingerprint"),
            s("new_fingerprint"),
            match s("reset").as_str() {
                "no-lock" =>
                    ", without a registration lock: whoever re-verified their email or phone could have done this",
                "locked" =>
                    "; their key had a registration lock: a lock-bypassed alarm follows if the new binding does not claim the PIN \
                     (a directory working with the new key's holder could fake that claim, so check with them in person either way)",
                _ => "",
            },
            s("identifier")
        ),
        "transparency" => format!("!!! {} [{}]", s("message"), s("kind")),
        "directory" => {
            if ev["connected"].as_bool() == Some(true) {
                "* connected to the directory".to_owned()
            } else {
                "* lost the directory; reconnecting".to_owned()
            }
        }
        _ => return None,
    })
}

async fn watch(home: &Home, json: bool) -> Result {
    let mut c = client(home).await?;
    c.call("events.subscribe", json!({}))
        .await
        .map_err(|e| client_fail(&e))?;
    let mut out = std::io::stdout();
    if json {
        // Tells scripts that the subscription is in place: nothing after this line is missed.
        let _ = writeln!(out, "{}", json!({"event": "watching"})).and_then(|()| out.flush());
    } else {
        eprintln!("watching; Ctrl-C to stop");
    }
    loop {
        let msg = tokio::select! {
            m = c.next_message() => m.map_err(|e| client_fail(&e))?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        if msg.get("method").and_then(Value::as_str) != Some("event") {
            continue;
        }
        let ev = &msg["params"];
        let line = if json {
            Some(ev.to_string())
        } else {
            describe(ev)
        };
        if let Some(line) = line
            && writeln!(out, "{line}").and_then(|()| out.flush()).is_err()
        {
            return Ok(()); // stdout closed
        }
    }
}

async fn chat(home: &Home, with: &str) -> Result {
    let with = parse_identifier(with)?;
    let mut events = client(home).await?;
    events
        .call("events.subscribe", json!({}))
        .await
        .map_err(|e| client_fail(&e))?;
    let mut sender = client(home).await?;
    println!("chatting with {with}; type a line and Enter to send, /quit to leave");
    let (tx, mut lines) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    loop {
        tokio::select! {
            line = lines.recv() => {
                let Some(line) = line else { return Ok(()) };
                let line = line.trim_end().to_owned();
                if line == "/quit" { return Ok(()); }
                if line.is_empty() { continue; }
                match sender.call("message.send", json!({"to": with, "body": line})).await {
                    Ok(_) => println!("  ✓ delivered"),
                    Err(ClientError::Rpc(e)) => println!("  ✗ not delivered: {}", e.message),
                    Err(e) => return Err(client_fail(&e)),
                }
            }
            msg = events.next_message() => {
                let msg = msg.map_err(|e| client_fail(&e))?;
                let ev = &msg["params"];
                let about = ev["from"].as_str().or_else(|| ev["identifier"].as_str());
                if (about == Some(with.as_str())
                    || ev["event"] == "directory"
                    || ev["event"] == "transparency")
                    && let Some(line) = describe(ev)
                {
                    println!("{line}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn terminal_escapes_from_peers_are_shown_not_obeyed() {
        assert_eq!(printable("hello, world ✓"), "hello, world ✓");
        let hostile = "ok\x1b]52;c;cHduZWQ=\x07\r\x1b[2Kbob: fake\u{202e}txt.exe";
        let shown = printable(hostile);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
        assert!(!shown.contains('\u{202e}'), "{shown:?}");
        assert!(
            shown.contains("\\u{1b}") && shown.contains("\\u{202e}"),
            "{shown:?}"
        );
    }
}
