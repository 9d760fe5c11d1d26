//! The directory process the load generator runs and what it measures of it: the open-file
//! limit, /proc figures, TCP bytes, callgrind's counts, and a private CA for `--tls`.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// Raises the open-file limit as far as allowed (the child directory inherits it).
pub(crate) fn raise_nofile(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit write/read only the struct passed.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        if r.rlim_max < want {
            let bigger = libc::rlimit {
                rlim_cur: want,
                rlim_max: want,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &bigger) == 0 {
                return want;
            }
        }
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur
    }
}

/// A process's resident memory (bytes) and CPU time (seconds) from /proc.
pub(crate) fn proc_stats(pid: u32) -> anyhow::Result<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("bad stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((rss_kb * 1024, ticks as f64 / hz))
}

/// CPU seconds the whole machine spent busy so far (all cores, from /proc/stat): kernel work
/// such as TCP keepalive probes runs in interrupts, outside any process's account.
pub(crate) fn machine_busy() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return 0.0;
    }
    let idle = v[3] + v[4];
    let total: u64 = v[..8].iter().sum();
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (total - idle) as f64 / hz
}

/// TCP payload bytes (sent + received) on the directory's side of all its sessions.
pub(crate) fn tcp_bytes(port: u16) -> u64 {
    let Ok(out) = Command::new("ss")
        .args([
            "-tinH",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output()
    else {
        return 0;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut total = 0;
    for word in text.split_whitespace() {
        for key in ["bytes_sent:", "bytes_received:"] {
            if let Some(v) = word.strip_prefix(key) {
                total += v.parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

pub(crate) struct Dir {
    pub(crate) child: Child,
    pub(crate) url: String,
    pub(crate) port: u16,
}

impl Drop for Dir {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_directory(
    bin: &Path,
    data: &Path,
    listen: &str,
    tls: Option<&(String, String)>,
    callgrind: bool,
) -> anyhow::Result<Dir> {
    let config = data.join("loadgen.toml");
    // Every simulated device comes from a handful of loopback addresses: the per-IP limits
    // that protect a real directory from one abusive host would throttle the test itself.
    std::fs::write(
        &config,
        "[limits]\nrequests_per_ip = { burst = 1000000, every = \"1us\" }\n\
         session_requests = { burst = 1000000, every = \"1us\" }\n",
    )?;
    let mut cmd = if callgrind {
        let mut c = Command::new("valgrind");
        c.arg("--tool=callgrind")
            .arg("--instr-atstart=no")
            .arg(format!(
                "--callgrind-out-file={}",
                data.join("callgrind.out").display()
            ))
            .arg(bin);
        c
    } else {
        Command::new(bin)
    };
    if let Some((cert, key)) = tls {
        cmd.args(["--tls-cert", cert, "--tls-key", key]);
    }
    let mut child = cmd
        .args(["--listen", listen, "--config"])
        .arg(&config)
        .arg("--data")
        .arg(data)
        .arg("--verify-outbox")
        .arg(data.join("outbox"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(url) = line.strip_prefix("listening on ") {
                let _ = tx.send(url.trim().to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(if callgrind { 300 } else { 30 }))
        .context("the directory did not print its address")?;
    let port = url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .context("no port in the URL")?;
    Ok(Dir { child, url, port })
}

/// A private CA and a certificate for 127.0.0.1 (the testkit's), as path strings.
pub(crate) fn private_ca(dir: &Path) -> (String, String, String) {
    let (a, b, c) = dialtone_testkit::private_ca(dir, &["127.0.0.1"]);
    (
        a.display().to_string(),
        b.display().to_string(),
        c.display().to_string(),
    )
}

/// Runs `callgrind_control ARG PID`.
pub(crate) fn callgrind_control(pid: u32, arg: &str) -> anyhow::Result<()> {
    let out = Command::new("callgrind_control")
        .arg(arg)
        .arg(pid.to_string())
        .output()
        .context("callgrind_control (valgrind) is not installed")?;
    if !out.status.success() {
        bail!(
            "callgrind_control {arg}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The instructions counted in the dumps callgrind wrote into `dir` (`summary:`/`totals:`).
pub(crate) fn callgrind_total(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0u64;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if !e.file_name().to_string_lossy().starts_with("callgrind.out") {
            continue;
        }
        let text = std::fs::read_to_string(e.path())?;
        // `summary:` may be 0 in a dump whose costs are all in `totals:`: the larger.
        let part = text
            .lines()
            .filter_map(|l| {
                l.strip_prefix("summary:")
                    .or_else(|| l.strip_prefix("totals:"))
            })
            .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        total = total.max(part);
    }
    if total == 0 {
        bail!("callgrind wrote no counts");
    }
    Ok(total)
}
