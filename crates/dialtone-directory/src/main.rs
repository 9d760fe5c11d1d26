//! `dialtone-directory`: the directory server. Prints `listening on URL` once bound; flags
//! and exit codes in [`dialtone_directory::cli`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    dialtone_directory::cli::run(dialtone_directory::cli::Args::parse(), |_, builder| builder)
}
