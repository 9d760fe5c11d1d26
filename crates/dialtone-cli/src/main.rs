//! `dialtone`: the command-line front end of the Dialtone agent.
//!
//! `id`, `register` and `verify` work on the home directory and the directory server directly;
//! `up` runs the agent; every other command is a client of the running agent's local API.
//!
//! Exit codes (README.md; chosen by cause in `exit`): 0 success; 1 error; 2 usage; 3 the
//! agent is not running; 4 the directory refused or could not be reached; 10–19 a refusal
//! (see `Refusal::exit_code`: 10 offline, 11 unreachable, 12 not-a-contact, 13 blocked,
//! 14 do-not-disturb, 15 timeout, 16 key-changed, 17 peer-refused, 18 directory-untrusted,
//! 19 device-revoked).
//!
//! Layout: `args` (clap), `exit` (exit codes and the error that carries one), `input` (the
//! home, secret files, the clock), `commands` (one module per group), `render` (output for
//! people).

use std::process::ExitCode;

use clap::Parser;

mod args;
mod commands;
mod exit;
mod input;
mod render;

use args::{Cli, Command, IdCommand};
use commands::{agent, chat, contacts, devices, identity, messages, status};
use exit::Result;
use input::home_dir;

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
            ExitCode::from(f.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result {
    let home = home_dir(cli.home)?;
    match cli.command {
        Command::Id(IdCommand::New {
            name,
            no_passphrase,
            force,
            pass,
        }) => identity::new(&home, &name, no_passphrase, force, &pass),
        Command::Id(IdCommand::Show { json }) => identity::show(&home, json),
        Command::Register {
            identifier,
            directory,
            directory_ca,
            pass,
        } => identity::register(&home, &identifier, &directory, directory_ca, &pass).await,
        Command::Verify { code, pass, pin } => identity::verify(&home, &code, &pass, &pin).await,
        Command::Device(c) => devices::run(&home, c).await,
        Command::Lock(c) => devices::lock(&home, c).await,
        Command::Up(args) => agent::up(home, args).await,
        Command::Down => agent::down(&home).await,
        Command::Contacts(c) => contacts::contacts(&home, c).await,
        Command::Status {
            set,
            connections: true,
            json,
        } if set.is_none() => status::connections(&home, json).await,
        Command::Status { set, json, .. } => status::status(&home, set, json).await,
        Command::Doctor { json } => status::doctor(&home, json).await,
        Command::Lan { json } => status::lan(&home, json).await,
        Command::Send { to, text, json } => messages::send(&home, &to, text, json).await,
        Command::Watch { json } => chat::watch(&home, json).await,
        Command::Chat { with } => chat::chat(&home, &with).await,
    }
}
