//! A tiny run of `kt-bench` (a few hundred identities, no baseline), so that the benchmark
//! keeps working: it publishes, proves and verifies on the real storage and prints every
//! figure.

#[test]
fn kt_bench_runs_and_prints_every_figure() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kt-bench"))
        .args([
            "--sizes",
            "300",
            "--batch",
            "10",
            "--epochs",
            "2",
            "--lookups",
            "5",
            "--no-baseline",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for figure in [
        "== 300 identities",
        "epoch publish (10 new bindings)",
        "lookup proof size (median)",
        "lookup proof verification (median)",
        "append-only proof, one epoch",
    ] {
        assert!(text.contains(figure), "missing {figure:?} in:\n{text}");
    }
}
