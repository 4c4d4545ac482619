"""Runs every load scenario of bench/README.md side by side in one run and prints the
results as a Markdown table of medians, p99s and ratios (also written to
bench/results.md). Started by bench/run.sh, which builds and installs what it needs.

Servers run pinned to core 0, wrk to core 1. Everything is on loopback and bounded in
time: ROUNDS rounds of DURATION per measurement."""

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = int(os.environ.get("ROUNDS", "3"))
DURATION = os.environ.get("DURATION", "8s")
CONNECTIONS = int(os.environ.get("CONNECTIONS", "32"))
SERVER_CORE = os.environ.get("SERVER_CORE", "0")
LOAD_CORE = os.environ.get("LOAD_CORE", "1")
PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
PG_HOSTPORT = PG.split("@")[-1]
VENV = ROOT / "bench" / ".venv"

procs = []


def start(name, cmd, env=None, cwd=None):
    full_env = dict(os.environ, **(env or {}))
    log = open(f"/tmp/bench-{name}.log", "w")
    p = subprocess.Popen(["taskset", "-c", SERVER_CORE] + cmd, env=full_env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    procs.append(p)
    return p


def stop_all():
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + 10
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()


def get(url, headers=None, timeout=2):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except Exception:
        return 0, b""


def wait_status(url, status=200, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if get(url)[0] == status:
            return
        time.sleep(0.2)
    raise SystemExit(f"{url} never answered {status} (logs in /tmp/bench-*.log)")


def rss_kb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def wrk(url, duration=DURATION, headers=None):
    cmd = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration}", "--latency", url]
    for h in headers or []:
        cmd += ["-H", h]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": rps, "p99_ms": float(p99.group(1)) * scale, "non2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errors.group(0) if errors else ""}


def measure(label, url, headers=None):
    runs = [wrk(url, headers=headers) for _ in range(ROUNDS)]
    result = {
        "label": label,
        "rps": statistics.median(r["rps"] for r in runs),
        "p99_ms": statistics.median(r["p99_ms"] for r in runs),
        "non2xx": sum(r["non2xx"] for r in runs),
    }
    print(f"  {label:<52} {result['rps']:>10.0f} req/s  p99 {result['p99_ms']:.2f} ms  non-2xx {result['non2xx']}", flush=True)
    return result


def main():
    ours = ROOT / "target" / "release" / "backend"
    bare = ROOT / "target" / "release" / "bare-axum"
    db = f"{PG}/bench_backend"
    common = {"LOG_FORMAT": "json", "RUST_LOG": "warn", "SHUTDOWN_DRAIN_DELAY": "0s", "DATA_DIR": "/tmp"}
    print(f"machine: {os.cpu_count()} cores; servers on core {SERVER_CORE}, wrk on core {LOAD_CORE}; "
          f"{ROUNDS} rounds x {DURATION}, {CONNECTIONS} connections", flush=True)

    proxy = start("proxy", [str(VENV / "bin" / "python"), str(ROOT / "bench" / "blackhole_proxy.py"), "18099", PG_HOSTPORT])
    start("ours", [str(ours)], dict(common, BIND_ADDR="127.0.0.1:18000", DATABASE_URL=db))
    start("ours-nometrics", [str(ours)], dict(common, BIND_ADDR="127.0.0.1:18001", DATABASE_URL=db, METRICS_ENABLED="false", RUN_MIGRATIONS="false"))
    start("bare", [str(bare), "127.0.0.1:18002", f"{PG}/postgres"])
    start("fastapi", [str(VENV / "bin" / "uvicorn"), "app:app", "--host", "127.0.0.1", "--port", "18003", "--log-level", "warning"],
          {"DATABASE_URL": f"{PG.replace('postgres://', 'postgresql://')}/postgres"}, cwd=ROOT / "bench" / "ref" / "fastapi")
    ours_proxied = start("ours-proxied", [str(ours)], dict(
        common, BIND_ADDR="127.0.0.1:18004", DATABASE_URL=f"postgres://postgres@127.0.0.1:18099/bench_backend",
        RUN_MIGRATIONS="false", HEALTH_CHECK_INTERVAL="1s", HEALTH_CHECK_TIMEOUT="500ms"))

    wait_status("http://127.0.0.1:18000/health/ready")
    wait_status("http://127.0.0.1:18001/health/ready")
    wait_status("http://127.0.0.1:18002/health/ready")
    wait_status("http://127.0.0.1:18003/health/ready")
    wait_status("http://127.0.0.1:18004/health/ready")
    time.sleep(2)
    idle_rss = rss_kb(procs[1].pid)

    results = {}
    print("/health/live", flush=True)
    results["live_ours"] = measure("ours /health/live", "http://127.0.0.1:18000/health/live")
    results["live_bare"] = measure("bare axum /health/live", "http://127.0.0.1:18002/health/live")
    results["live_fastapi"] = measure("FastAPI /health/live", "http://127.0.0.1:18003/health/live")

    print("/health/ready", flush=True)
    results["ready_ours"] = measure("ours /health/ready (snapshot)", "http://127.0.0.1:18000/health/ready")
    results["ready_bare"] = measure("bare axum /health/ready (SELECT 1 per request)", "http://127.0.0.1:18002/health/ready")
    results["ready_fastapi"] = measure("FastAPI /health/ready (SELECT 1 per request)", "http://127.0.0.1:18003/health/ready")

    print("instrumented route (/health), metrics on vs off", flush=True)
    results["route_on"] = measure("ours /health, metrics on", "http://127.0.0.1:18000/health")
    results["route_off"] = measure("ours /health, metrics off", "http://127.0.0.1:18001/health")

    print("/metrics after the load above created the usual series", flush=True)
    for path in ["/health", "/health/live", "/health/ready", "/nope"]:
        get(f"http://127.0.0.1:18003{path}")
    results["metrics_ours"] = measure("ours /metrics", "http://127.0.0.1:18000/metrics")
    results["metrics_fastapi"] = measure("FastAPI /metrics", "http://127.0.0.1:18003/metrics")
    body_ours = len(get("http://127.0.0.1:18000/metrics")[1])
    body_fastapi = len(get("http://127.0.0.1:18003/metrics")[1])

    print("/health/ready while PostgreSQL is blackholed (ours, behind the proxy)", flush=True)
    results["ready_proxied_up"] = measure("ours /health/ready, PostgreSQL up", "http://127.0.0.1:18004/health/ready")
    proxy.send_signal(signal.SIGUSR1)
    wait_status("http://127.0.0.1:18004/health/ready", 503, timeout=20)
    results["ready_proxied_down"] = measure("ours /health/ready, PostgreSQL blackholed (503s)", "http://127.0.0.1:18004/health/ready")
    proxy.send_signal(signal.SIGUSR2)
    loaded_rss = rss_kb(procs[1].pid)

    r = lambda a, b: results[a]["rps"] / results[b]["rps"]
    rows = [
        ("/health/live vs bare axum /health/live", r("live_ours", "live_bare"), ">= 0.9x"),
        ("/health/live vs FastAPI /health/live", r("live_ours", "live_fastapi"), ">= 15x"),
        ("/health/ready vs bare axum /health/live", r("ready_ours", "live_bare"), ">= 0.8x"),
        ("/health/ready vs FastAPI /health/ready", r("ready_ours", "ready_fastapi"), ">= 20x"),
        ("/health/ready blackholed vs up (same instance)", r("ready_proxied_down", "ready_proxied_up"), "~1x (unchanged)"),
        ("instrumented route: metrics on vs off", r("route_on", "route_off"), ">= 0.9x"),
        ("/metrics vs FastAPI /metrics", r("metrics_ours", "metrics_fastapi"), ">= 20x"),
    ]
    lines = [
        "| comparison | measured | target |",
        "|---|---|---|",
    ] + [f"| {name} | {ratio:.2f}x | {target} |" for name, ratio, target in rows] + [
        f"| /health/ready p99 at {CONNECTIONS} connections | {results['ready_ours']['p99_ms']:.2f} ms | < 2 ms |",
        f"| /health/ready p99 while PostgreSQL is blackholed | {results['ready_proxied_down']['p99_ms']:.2f} ms | < 2 ms |",
        f"| /metrics body: ours vs FastAPI | {body_ours} B vs {body_fastapi} B | ours at least as large |",
        f"| idle RSS (ours) | {idle_rss / 1024:.1f} MB | < 25 MB |",
        f"| RSS after the load above (ours) | {loaded_rss / 1024:.1f} MB | |",
        "",
        "| measurement | median req/s | median p99 |",
        "|---|---|---|",
    ] + [f"| {v['label']} | {v['rps']:.0f} | {v['p99_ms']:.2f} ms |" for v in results.values()]
    table = "\n".join(lines)
    print("\n" + table)
    (ROOT / "bench" / "results.md").write_text(
        f"<!-- written by bench/run.sh on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} -->\n" + table + "\n")


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
