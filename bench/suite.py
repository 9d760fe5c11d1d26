#!/usr/bin/env python3
"""Dialtone side by side with Prosody (XMPP) and Kamailio (SIP), on loopback, in one run.

Run it through scripts/bench-suite.sh (which builds the binaries and installs the anchors).
For each of --runs repetitions it runs, one after another on the same machine:

  * target/<profile>/dialtone-bench --json      (Dialtone: round trip, login -> presence over
                                               HTTPS, burst throughput, raw iroh echo baseline)
  * bench/anchors/prosody/run-xmpp-bench.sh tls and plain  (Prosody + slixmpp)
  * bench/anchors/kamailio/run-sip-bench.sh auth           (Kamailio + sipp, digest auth)
  * target/<profile>/dialtone-loadgen --json    (directory: full logins/s on one connection,
    then, on the same sessions, real presence changes fanned out to watching contacts, lookups,
    reconnects, and a directory restart timed until every session is back), again with the
    older two-connection login (before/after in the same run), and again over TLS (full
    handshakes, then resumed ones)
  * an idle agent: a real `dialtone up` process with nothing to do, measured from outside
    (TCP bytes through `ss`, CPU through /proc)

then, once, the directory's instructions per login under callgrind (one connection vs two, a
few hundred sessions: robust to a busy machine), the load-generator ladder (--load-sizes, once
each), and prints a table of medians over
the runs with ratios and goals. Results: <out>/results.json and <out>/results.md.

--smoke runs everything once with tiny counts (used by the test suite so nothing here rots) and
checks that every figure came out; it judges no goal.
"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANCHORS = os.path.join(ROOT, "bench", "anchors")


def log(msg):
    print(f"suite: {msg}", file=sys.stderr, flush=True)


def run(cmd, timeout, env=None, capture=True):
    """Runs a command with a hard time limit; returns (rc, stdout, stderr)."""
    log("$ " + " ".join(cmd))
    p = subprocess.run(cmd, capture_output=capture, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    if p.returncode != 0:
        log(f"exit {p.returncode}: {(p.stderr or '')[-2000:]}")
    return p.returncode, p.stdout or "", p.stderr or ""


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line in output")


# ---------------------------------------------------------------- Dialtone


def dialtone_bench(bins, smoke):
    args = [os.path.join(bins, "dialtone-bench"), "--json"]
    if smoke:
        args += ["--rtt-n", "50", "--cold-n", "3", "--login-n", "3", "--burst-n", "300"]
    rc, out, _ = run(args, timeout=600)
    if rc != 0:
        raise RuntimeError("dialtone-bench failed")
    return last_json(out)


def loadgen(bins, sessions, smoke, extra=()):
    args = [os.path.join(bins, "dialtone-loadgen"), "--json", "--sessions", str(sessions)]
    if smoke:
        args += ["--idle-secs", "1", "--churn-secs", "1", "--churn-rate", "100",
                 "--lookup-secs", "1", "--publish-secs", "1"]
    args += list(extra)
    rc, out, err = run(args, timeout=1800, env={"RUST_BACKTRACE": "0"})
    if rc != 0:
        why = (err.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"dialtone-loadgen --sessions {sessions} failed: {why}")
    return last_json(out)


def proc_cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def tcp_of_pid(pid):
    """{(local, peer): (payload bytes sent + received, segments out + in)} for every TCP
    socket of `pid`."""
    out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, timeout=30).stdout
    socks = {}
    # ss prints each socket on one line and its counters on the next.
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if f"pid={pid}," not in line:
            continue
        f = line.split()
        key = (f[3], f[4]) if len(f) > 4 else (line, "")
        info = lines[i + 1] if i + 1 < len(lines) else ""
        total, segs = 0, 0
        for k in ("bytes_sent", "bytes_received"):
            m = re.search(rf"\b{k}:(\d+)", info)
            total += int(m.group(1)) if m else 0
        for k in ("segs_out", "segs_in"):
            m = re.search(rf"\b{k}:(\d+)", info)
            segs += int(m.group(1)) if m else 0
        socks[key] = (total, segs)
    return socks


def tcp_delta(before, after):
    """Bytes and segments on the sockets open at both samples (a socket that closed or opened
    in between, such as an idle HTTP connection timing out, is not counted)."""
    common = before.keys() & after.keys()
    return (sum(after[k][0] - before[k][0] for k in common),
            sum(after[k][1] - before[k][1] for k in common), len(common))


def idle_agent(bins, secs):
    """A real agent process online with nothing to do: bytes and CPU per second."""
    tmp = tempfile.mkdtemp(prefix="dialtone-idle-")
    dirp = None
    home = os.path.join(tmp, "home")
    env = {"DIALTONE_HOME": home}
    try:
        dirp = subprocess.Popen(
            [os.path.join(bins, "dialtone-directory"), "--listen", "127.0.0.1:0",
             "--data", os.path.join(tmp, "data"), "--verify-outbox", os.path.join(tmp, "outbox")],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        url = None
        deadline = time.time() + 30
        while time.time() < deadline:
            line = dirp.stdout.readline()
            if line.startswith("listening on "):
                url = line.split()[-1]
                break
        if not url:
            raise RuntimeError("the directory did not start")
        cli = os.path.join(bins, "dialtone")
        who = "idle@example.com"
        for cmd in (["id", "new", "--no-passphrase"], ["register", who, "--directory", url]):
            rc, _, err = run([cli] + cmd, timeout=60, env=env)
            if rc != 0:
                raise RuntimeError(f"dialtone {cmd[0]} failed: {err}")
        code = open(os.path.join(tmp, "outbox", who)).read().strip()
        run([cli, "verify", code], timeout=60, env=env)
        rc, _, err = run([cli, "up", "--detach", "--no-portmapper", "--bind", "127.0.0.1:0"],
                         timeout=60, env=env)
        if rc != 0:
            raise RuntimeError(f"dialtone up failed: {err}")
        pid = int(open(os.path.join(home, "agent.pid")).read().strip())
        time.sleep(3)
        t0_socks = tcp_of_pid(pid)
        c0 = proc_cpu(pid)
        t0 = time.time()
        time.sleep(secs)
        wall = time.time() - t0
        t1_socks = tcp_of_pid(pid)
        c1 = proc_cpu(pid)
        run([cli, "down"], timeout=30, env=env)
        nbytes, nsegs, nsocks = tcp_delta(t0_socks, t1_socks)
        # IPv4 + TCP with timestamps: 52 bytes of headers per segment on loopback.
        return {"secs": round(wall, 1), "tcp_sockets": nsocks,
                "tcp_payload_bytes_per_s": nbytes / wall,
                "wire_bytes_per_s": (nbytes + 52 * nsegs) / wall,
                "cpu_percent": (c1 - c0) / wall * 100}
    finally:
        if dirp:
            dirp.send_signal(signal.SIGTERM)
            try:
                dirp.wait(10)
            except subprocess.TimeoutExpired:
                dirp.kill()
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- anchors


def anchor_env(run_dir, py):
    return {"PY": py, "ANCHOR_RUN": run_dir, "QUIET_WAIT": os.environ.get("QUIET_WAIT", "10")}


def xmpp(mode, run_dir, py, smoke):
    args = [os.path.join(ANCHORS, "prosody", "run-xmpp-bench.sh"), mode, "1"]
    if smoke:
        args += ["--rtt-n", "50", "--push-n", "300", "--presence-n", "3"]
    rc, out, err = run(args, timeout=400, env=anchor_env(run_dir, py))
    path = os.path.join(run_dir, f"xmpp-{mode}-1.json")
    if rc != 0 or not os.path.exists(path):
        raise RuntimeError(f"Prosody ({mode}) run failed: {err[-1000:]}")
    r = json.load(open(path))
    push = r["push"]
    return {
        "rtt_median_us": r["rtt"]["median_ms"] * 1000,
        "rtt_p99_us": r["rtt"]["p99_ms"] * 1000,
        "push_msgs_per_s": push["msgs_per_s"],
        "server_cpu_us_per_msg": push["server_cpu_s"] / push["received"] * 1e6 if push["received"] else None,
        "client_cpu_us_per_msg": push["client_cpu_s"] / push["received"] * 1e6 if push["received"] else None,
        "login_to_seen_median_us": r["presence"]["connect_to_contact_sees_presence"]["median_ms"] * 1000,
        "login_to_seen_p99_us": r["presence"]["connect_to_contact_sees_presence"].get("p99_ms", 0) * 1000,
    }


def sip(run_dir, py, secs):
    rc, out, err = run([os.path.join(ANCHORS, "kamailio", "run-sip-bench.sh"), "auth", str(secs)],
                       timeout=secs + 120, env=anchor_env(run_dir, py))
    m = re.search(r"RESULT sip auth: .*?(\d+) successful, (\d+) failed.*?-> (\d+) REGISTER/s \| kamailio ([\d.]+) us",
                  out)
    if rc != 0 or not m:
        raise RuntimeError(f"Kamailio run failed: {out[-1000:]} {err[-1000:]}")
    return {"registers_per_s": float(m.group(3)), "server_cpu_us_per_register": float(m.group(4)),
            "failed": int(m.group(2))}


# ---------------------------------------------------------------- report


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values):
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return None
    m = statistics.median(values)
    return (max(values) - min(values)) / m if m else None


def fmt(v, unit):
    if v is None:
        return "n/a"
    if unit == "us":
        return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} µs"
    if unit == "/s":
        return f"{v:,.0f}/s"
    if unit == "B/s":
        return f"{v:.1f} B/s"
    if unit == "%":
        return f"{v:.2f} %"
    if unit == "s":
        return f"{v:.1f} s"
    if unit == "n":
        return f"{v:,.0f}"
    return f"{v:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--bins", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "bench-suite"))
    ap.add_argument("--py", default=os.path.join(ROOT, ".venv", "bin", "python"))
    ap.add_argument("--sip-secs", type=int, default=10)
    ap.add_argument("--compare-sessions", type=int, default=10000,
                    help="sessions on the directory during the publish/lookup comparison")
    ap.add_argument("--load-sizes", default="10000,50000,100000",
                    help="load-generator ladder, comma separated ('' to skip)")
    ap.add_argument("--idle-secs", type=float, default=30)
    a = ap.parse_args()
    if a.smoke:
        a.runs, a.sip_secs, a.compare_sessions, a.idle_secs = 1, 2, 200, 2
        a.load_sizes = "300"
    # Under callgrind everything runs ~50x slower: a few hundred logins are enough.
    cg_sessions = 60 if a.smoke else 300
    os.makedirs(a.out, exist_ok=True)
    # The prosody user must reach the run folder: a fresh world-traversable one under /tmp.
    run_dir = tempfile.mkdtemp(prefix="dialtone-anchors-")
    os.chmod(run_dir, 0o755)

    runs = []
    for i in range(a.runs):
        log(f"run {i + 1}/{a.runs}")
        r = {}
        d = dialtone_bench(a.bins, a.smoke)
        r["dialtone"] = d
        r["prosody_tls"] = xmpp("tls", run_dir, a.py, a.smoke)
        r["prosody_plain"] = xmpp("plain", run_dir, a.py, a.smoke)
        r["kamailio_auth"] = sip(run_dir, a.py, a.sip_secs)
        r["directory"] = loadgen(a.bins, a.compare_sessions, a.smoke, ["--restart"])
        r["directory_two"] = loadgen(a.bins, a.compare_sessions, a.smoke,
                                     ["--login", "two", "--relogin-n", "0"])
        r["directory_tls"] = loadgen(a.bins, a.compare_sessions, a.smoke, ["--tls"])
        r["idle_agent"] = idle_agent(a.bins, a.idle_secs)
        runs.append(r)
    # Instructions per login, one connection against two, in the same run (callgrind counts
    # instructions, not time: a busy machine does not change them).
    cg = {}
    for mode in ("one", "two"):
        log(f"callgrind: directory instructions per login ({mode} connection(s))")
        try:
            cg[mode] = loadgen(a.bins, cg_sessions, True, ["--callgrind", "--login", mode, "--relogin-n", "0"])
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            log(f"callgrind run failed: {e}")
    for r in runs:
        r["callgrind"] = cg
    ladder = []
    # Every session is a socket in the directory and one in the load generator: the hard
    # open-file limit caps the ladder. Sizes above it are replaced by one run at the largest
    # size the limit allows, and the reason is recorded.
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    cap = hard - 800 if hard != resource.RLIM_INFINITY else None
    sizes = [int(x) for x in a.load_sizes.split(",") if x.strip()]
    if os.geteuid() == 0:
        try:
            # Root may raise the hard limit (unless the machine withholds CAP_SYS_RESOURCE).
            resource.setrlimit(resource.RLIMIT_NOFILE, (1 << 20, 1 << 20))
            cap = None
        except (ValueError, OSError):
            pass
    plan, capped = [], []
    for n in sizes:
        if cap is not None and n > cap:
            capped.append(n)
        else:
            plan.append(n)
    if capped:
        plan.append(cap)
    for n in plan:
        log(f"load generator: {n} sessions")
        try:
            r = loadgen(a.bins, n, a.smoke, ["--restart"])
            if capped and n == cap:
                r["stands_in_for"] = capped
                r["limited_by"] = (f"the open-file limit of this machine ({hard} per process, and no "
                                   f"CAP_SYS_RESOURCE to raise it): each session is a socket")
            ladder.append(r)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            ladder.append({"sessions_target": n, "failed": str(e)})
    shutil.rmtree(run_dir, ignore_errors=True)

    def col(path):
        out = []
        for r in runs:
            v = r
            for k in path:
                v = v.get(k) if isinstance(v, dict) else None
            out.append(v)
        return out

    rows = [
        # name, dialtone path, anchor path, unit, goal (ratio bound, "le"/"ge")
        ("message round trip, median (vs Prosody TLS)", ["dialtone", "message_rtt", "median_us"],
         ["prosody_tls", "rtt_median_us"], "us", ("le", 0.3)),
        ("message round trip, p99 (vs Prosody TLS)", ["dialtone", "message_rtt", "p99_us"],
         ["prosody_tls", "rtt_p99_us"], "us", None),
        ("message round trip, median (vs Prosody plain)", ["dialtone", "message_rtt", "median_us"],
         ["prosody_plain", "rtt_median_us"], "us", None),
        ("message round trip vs raw iroh echo, median", ["dialtone", "message_rtt", "median_us"],
         ["dialtone", "raw_iroh_echo", "median_us"], "us", ("le", 1.5)),
        ("login -> contact sees presence, median (both TLS)", ["dialtone", "login_to_presence", "median_us"],
         ["prosody_tls", "login_to_seen_median_us"], "us", ("le", 0.2)),
        ("login -> contact sees presence, p99 (both TLS)", ["dialtone", "login_to_presence", "p99_us"],
         ["prosody_tls", "login_to_seen_p99_us"], "us", None),
        ("messages per second, one person to another (vs Prosody TLS)",
         ["dialtone", "burst", "msgs_per_s"], ["prosody_tls", "push_msgs_per_s"], "/s", ("ge", 5.0)),
        ("CPU per message: both Dialtone agents vs Prosody server (TLS)",
         ["dialtone", "burst", "cpu_us_per_msg_both_agents"], ["prosody_tls", "server_cpu_us_per_msg"], "us", None),
        ("authenticated presence changes/s, each fanned out to the watching contacts, vs Kamailio REGISTER/s (digest)",
         ["directory", "presence_changes_per_s"], ["kamailio_auth", "registers_per_s"], "/s", ("ge", 1.0)),
        ("directory CPU per presence change vs Kamailio CPU per REGISTER",
         ["directory", "presence_change_dir_cpu_us"], ["kamailio_auth", "server_cpu_us_per_register"], "us", None),
        ("presence refreshes/s (unchanged: nothing to fan out) vs Kamailio REGISTER/s",
         ["directory", "publishes_per_s"], ["kamailio_auth", "registers_per_s"], "/s", None),
        ("full login/s, one connection (upgrade, challenge, Ed25519, welcome) vs Kamailio REGISTER/s",
         ["directory", "login_per_s"], ["kamailio_auth", "registers_per_s"], "/s", ("ge", 1.0)),
        ("directory CPU per full login vs Kamailio CPU per REGISTER",
         ["directory", "login_dir_cpu_us"], ["kamailio_auth", "server_cpu_us_per_register"], "us", None),
        ("full login/s: one connection vs two (HTTP challenge + upgrade, the login before)",
         ["directory", "login_per_s"], ["directory_two", "login_per_s"], "/s", ("ge", 1.0)),
        ("directory instructions per login (callgrind): one connection vs two",
         ["callgrind", "one", "login_dir_instructions"], ["callgrind", "two", "login_dir_instructions"], "n",
         ("le", 1.0)),
        ("full login/s over TLS (full handshake) vs Kamailio REGISTER/s (UDP, no TLS)",
         ["directory_tls", "login_per_s"], ["kamailio_auth", "registers_per_s"], "/s", None),
        ("reconnect login/s over TLS (resumed session) vs Kamailio REGISTER/s",
         ["directory_tls", "relogin_per_s"], ["kamailio_auth", "registers_per_s"], "/s", None),
        ("directory CPU per reconnect over TLS (resumed; includes the close) vs per full TLS login",
         ["directory_tls", "relogin_dir_cpu_us"], ["directory_tls", "login_dir_cpu_us"], "us", None),
        ("directory restart: seconds until every session is back (goal < 60 s)",
         ["directory", "restart", "all_back_s"], None, "s", ("abs_le", 60)),
        ("lookups/s on the directory (closed loop, 200 in flight)", ["directory", "lookups_per_s"], None, "/s", None),
        ("directory CPU per lookup", ["directory", "lookup_dir_cpu_us"], None, "us", None),
        ("idle agent: bytes on the wire per second (goal <= 100)", ["idle_agent", "wire_bytes_per_s"], None, "B/s",
         ("abs_le", 100)),
        ("idle agent: CPU", ["idle_agent", "cpu_percent"], None, "%", None),
    ]
    table = []
    for name, dp, ap_, unit, goal in rows:
        dv = col(dp)
        av = col(ap_) if ap_ else [None] * len(runs)
        ratios = [x / y for x, y in zip(dv, av) if x is not None and y]
        d, an, ratio = med(dv), med(av), med(ratios)
        met = None
        if goal and not a.smoke:
            kind, bound = goal
            if kind == "le":
                met = ratio is not None and ratio <= bound
            elif kind == "ge":
                met = ratio is not None and ratio >= bound
            elif kind == "abs_le":
                met = d is not None and d <= bound
        noisy = max([s for s in (spread(dv), spread(av)) if s is not None], default=0) > 0.25
        table.append({"measure": name, "dialtone": d, "anchor": an, "ratio": ratio, "unit": unit,
                      "goal": goal, "met": met, "noisy": noisy,
                      "dialtone_runs": dv, "anchor_runs": av})

    md = ["| measure | Dialtone | anchor | ratio | goal | met |", "| --- | --- | --- | --- | --- | --- |"]
    for t in table:
        g = t["goal"]
        gs = "" if not g else {"le": f"≤ {g[1]}×", "ge": f"≥ {g[1]}×", "abs_le": f"≤ {g[1]}"}[g[0]]
        met = "" if t["met"] is None else ("yes" if t["met"] else "**no**")
        ratio = "" if t["ratio"] is None else f"{t['ratio']:.2f}×"
        noisy = " (noisy)" if t["noisy"] else ""
        md.append(f"| {t['measure']}{noisy} | {fmt(t['dialtone'], t['unit'])} | "
                  f"{fmt(t['anchor'], t['unit']) if t['anchor'] is not None else ''} | {ratio} | {gs} | {met} |")
    md.append("")
    md.append("| load generator: sessions | held | logins/s | directory bytes/session | idle CPU µs/session/s "
              "| idle TCP payload B/session/s | fan-out p50 | fan-out p99 | lookups/s | presence changes/s "
              "| restart: all back |")
    md.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for l in ladder:
        if "failed" in l:
            md.append(f"| {l['sessions_target']} | failed: {l['failed']} | | | | | | | | | |")
            continue
        if l.get("stands_in_for"):
            md.append(f"| {', '.join(map(str, l['stands_in_for']))}: not reachable here, {l['limited_by']}; "
                      f"the largest size instead: | | | | | | | | | | |")
        f = l["fanout_latency_us"]
        md.append(f"| {l['sessions_target']} | {l['sessions_held']} | {l['login_per_s']:,.0f} | "
                  f"{l['bytes_per_session']:,.0f} | {l['idle_dir_cpu_us_per_session_per_s']:.2f} | "
                  f"{l['idle_tcp_payload_bytes_per_session_per_s']:.1f} | {fmt(f['median'], 'us')} | "
                  f"{fmt(f['p99'], 'us')} | {l['lookups_per_s']:,.0f} | {l['presence_changes_per_s']:,.0f} | "
                  f"{fmt((l.get('restart') or {}).get('all_back_s'), 's')} |")
    text = "\n".join(md)
    print(text)
    json.dump({"runs": runs, "table": table, "ladder": ladder, "smoke": a.smoke,
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
              open(os.path.join(a.out, "results.json"), "w"), indent=1)
    open(os.path.join(a.out, "results.md"), "w").write(text + "\n")
    log(f"results in {a.out}/results.json and results.md")

    missing = [t["measure"] for t in table if t["dialtone"] is None or (t["anchor"] is None and t["ratio"] is None
                                                                      and t["goal"] and t["goal"][0] != "abs_le")]
    missing += [f"ladder {l['sessions_target']}" for l in ladder if "failed" in l]
    if missing:
        log("figures missing: " + "; ".join(missing))
        sys.exit(1)


if __name__ == "__main__":
    main()
