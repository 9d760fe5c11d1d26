//! `dialtone-directory-malicious`: the directory with a lie, for the malicious-directory
//! tests only (built with `--features malicious`; never deploy it). Same flags as
//! `dialtone-directory`, plus `--lie MODE` (see `dialtone_directory::malicious`), and the
//! route `POST /v1/malicious/lie` to change the lie while it runs.

use std::process::ExitCode;

use clap::Parser;

#[path = "../main.rs"]
mod base;

#[derive(Parser, Debug)]
#[command(
    name = "dialtone-directory-malicious",
    about = "A directory that lies (tests only)"
)]
struct MaliciousArgs {
    #[command(flatten)]
    base: base::Args,
    /// The lie: forged-key:ID, rollback, split-view:VICTIM:TARGET, replace-key:ID or honest.
    #[arg(long, default_value = "honest")]
    lie: String,
}

fn main() -> ExitCode {
    let a = MaliciousArgs::parse();
    base::run(a.base, Some(a.lie))
}
