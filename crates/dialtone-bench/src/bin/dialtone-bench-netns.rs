//! `dialtone-bench-netns`: connect time and round-trip time per network topology, over direct
//! and relayed paths, in the network-namespace lab (`dialtone_testkit::netns`). Needs root.
//!
//! Run: `scripts/bench-netns.sh` (builds release binaries, then runs this). For each topology
//! of the matrix it builds the namespaces, starts a real directory + relay and two real agents,
//! and measures (medians over `--runs` fresh labs):
//!
//! - first message: `dialtone send` on a cold connection (iroh connect through the relay and
//!   hole punching, hellos, delivery, acknowledgement), as the command saw it;
//! - settled: from that send until the connection is on its final path (direct or relayed);
//! - RTT: iroh's round-trip estimate on the final path;
//! - warm send: a further `dialtone send` on the open connection (includes process start).

use std::time::Duration;

use clap::Parser;
use dialtone_testkit::netns::{MATRIX, Outcome, run_scenario, unavailable};

#[derive(Parser, Debug)]
#[command(about = "Dialtone network-namespace benchmark (root)")]
struct Args {
    /// Fresh labs per topology.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Warm sends per run.
    #[arg(long, default_value_t = 5)]
    warm: usize,
    /// Only these topologies (repeatable).
    #[arg(long)]
    only: Vec<String>,
}

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(why) = unavailable() {
        eprintln!("dialtone-bench-netns: the lab cannot run here: {why}");
        return std::process::ExitCode::from(2);
    }
    let runs = args.runs.max(1);
    println!("| topology | path | remote (last run) | first message | settled | RTT | warm send |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for topo in MATRIX {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == topo.name) {
            continue;
        }
        let outcomes: Vec<Outcome> = (0..runs).map(|_| run_scenario(topo, args.warm)).collect();
        let last = outcomes.last().expect("runs >= 1");
        let paths: Vec<&str> = outcomes.iter().map(|o| o.path.as_str()).collect();
        let path = if paths.iter().all(|p| *p == paths[0]) {
            paths[0].to_owned()
        } else {
            paths.join("/")
        };
        println!(
            "| {} | {} | {} | {:.1} ms | {:.1} ms | {:.2} ms | {:.1} ms |",
            topo.name,
            path,
            last.remote,
            median(outcomes.iter().map(|o| ms(o.first_send)).collect()),
            median(outcomes.iter().map(|o| ms(o.settled)).collect()),
            median(outcomes.iter().map(|o| o.rtt_ms).collect()),
            median(outcomes.iter().map(|o| ms(o.warm_send)).collect()),
        );
    }
    std::process::ExitCode::SUCCESS
}
