//! `dialtone-directory-malicious`: the directory with a lie, for the malicious-directory
//! tests only (never deploy it). Same flags as `dialtone-directory`, plus `--lie MODE` (see
//! the crate's documentation), and the route `POST /v1/malicious/lie` to change the lie while
//! it runs.

use std::process::ExitCode;

use clap::Parser;
use dialtone_directory_malicious::{Lie, Lying, admin_routes};

#[derive(Parser, Debug)]
#[command(
    name = "dialtone-directory-malicious",
    about = "A directory that lies (tests only)"
)]
struct MaliciousArgs {
    #[command(flatten)]
    base: dialtone_directory::cli::Args,
    /// The lie: forged-key:ID, rollback, split-view:VICTIM:TARGET, replace-key:ID,
    /// replay-list:ID or honest.
    #[arg(long, default_value = "honest")]
    lie: String,
}

fn main() -> ExitCode {
    let a = MaliciousArgs::parse();
    let lie = match a.lie.parse::<Lie>() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("dialtone-directory-malicious: --lie {e}");
            return ExitCode::from(2);
        }
    };
    dialtone_directory::cli::run(a.base, move |config, builder| {
        let lying = Lying::new(&config.data_dir, lie);
        builder.view(lying.clone()).routes(admin_routes(lying))
    })
}
