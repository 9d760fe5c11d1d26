//! The command line: clap's definitions of every command and flag, and nothing else.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "dialtone",
    version,
    about = "Instant messaging that works like a phone call"
)]
pub(crate) struct Cli {
    /// Home directory with keys and settings [env: DIALTONE_HOME; default: the platform's data dir].
    #[arg(long, global = true, env = "DIALTONE_HOME")]
    pub(crate) home: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
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
pub(crate) enum IdCommand {
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
pub(crate) enum DeviceCommand {
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
pub(crate) enum LockCommand {
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
pub(crate) struct PinArgs {
    /// File whose first line is the registration-lock PIN [or env DIALTONE_PIN].
    #[arg(long)]
    pub(crate) pin_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct PassArgs {
    /// File whose first line is the passphrase of the identity key [or env DIALTONE_PASSPHRASE].
    #[arg(long)]
    pub(crate) passphrase_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct UpArgs {
    /// Run in the background (logs to agent.log in the home).
    #[arg(long)]
    pub(crate) detach: bool,
    /// Local address for peer connections (repeatable). Default: every interface, IPv6 and IPv4.
    #[arg(long = "bind")]
    pub(crate) bind: Vec<SocketAddr>,
    /// Do not ask the router for a port mapping (UPnP/PCP/NAT-PMP).
    #[arg(long)]
    pub(crate) no_portmapper: bool,
    /// Never send or accept messages over the relay: wait for a direct path and refuse
    /// (`unreachable`) if none comes up.
    #[arg(long)]
    pub(crate) direct_only: bool,
    /// LAN mode: announce this device with mDNS and reach contacts you talked to before on
    /// the LAN, even while the directory is down.
    #[arg(long)]
    pub(crate) lan: bool,
    /// Seconds between checks of your own identifier's key history in the directory's
    /// transparency log (also checked at every login). Default 300.
    #[arg(long, value_name = "SECS")]
    pub(crate) kt_monitor_interval: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum ContactsCommand {
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
pub(crate) enum StatusCommand {
    /// Set your presence: online, away, busy or invisible.
    Set {
        /// online | away | busy | invisible.
        state: String,
        /// A status ("away") message.
        #[arg(long)]
        message: Option<String>,
    },
}
