//! What a command reads besides its arguments: the home directory, the passphrase and PIN
//! files (or their environment variables), and the clock.

use std::{
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use dialtone_agent::Home;

use crate::{
    args::{PassArgs, PinArgs},
    exit::Result,
};

pub(crate) fn home_dir(cli_home: Option<PathBuf>) -> Result<Home> {
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

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn pin(args: &PinArgs) -> Result<Option<String>> {
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

pub(crate) fn passphrase(args: &PassArgs) -> Result<Option<String>> {
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
