"""`make bench-service`: the search service under HTTP load, on a tenant of --chunks vectors.

The tenant is written without the model, as `make bench-checks` writes it (checks_at_scale.build: synthetic texts,
clustered random 384-d vectors, the embedded index trained as `cyborgdb_index` trains it). Then `ingest-pipeline
serve` runs in its own process, and wrk (Debian's HTTP load generator, one thread, one keep-alive connection per
client; benchmarks/service_load.lua) sends POST /v1/search, each with a distinct query that the real model embeds:

- one client, sequential, for --single-s seconds: p50 and p99 of a warm query;
- 1, 4, 16 and 64 concurrent clients for --phase-s seconds each: requests/s, p50, p99, errors;
- a soak at 16 clients for --soak-s seconds: the service's RSS at its start, every minute, and at its end.

Goals: a warm single query's p50 under 50 ms; 16 clients' throughput at least 3x one client's; no errors; memory
flat over the soak.

    .venv/bin/python benchmarks/service_load.py [--chunks 100000] [--phase-s 15] [--soak-s 60]
        [--home DIR (kept, reused)] [--json-out service-load-report.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checks_at_scale import TENANT, build, kept_installation  # noqa: E402
from scratch import print_figures, scratch_installation  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().with_suffix(".lua")


def load(url: str, key: str, clients: int, seconds: float) -> dict:
    """One phase: wrk with `clients` connections for `seconds`; requests/s of 200s, p50, p99, errors by kind."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is missing: `make bench-service` installs it (apt-get install wrk)")
    out = subprocess.run([wrk, "-t", "1", "-c", str(clients), "-d", f"{seconds:g}s", "--timeout", "30s",
                          "-s", str(SCRIPT), url], env={**os.environ, "BENCH_API_KEY": key},
                         capture_output=True, text=True, check=True)
    figures = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
    ok = figures["statuses"].get("200", 0)
    errors = {status: n for status, n in figures["statuses"].items() if status != "200"}
    if figures["socket_errors"]:
        errors["socket"] = figures["socket_errors"]
    elapsed = figures["duration_us"] / 1e6
    return {"clients": clients, "requests": ok, "seconds": round(elapsed, 2), "rps": round(ok / elapsed, 1),
            "p50_ms": round(figures["p50_us"] / 1000, 1), "p99_ms": round(figures["p99_us"] / 1000, 1),
            "errors": errors}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def serve(port: int, log_path: Path) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "ingest_pipeline.cli", "serve", "--port", str(port)],
                               env=env, cwd=ROOT, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the service exited: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit("the service did not get ready")


def run(args, home: Path) -> dict:
    from ingest_pipeline.runtime.instance import prepare_environment

    marker = home / f"service-bench-{args.chunks}.json"
    if marker.exists():
        built = json.loads(marker.read_text())
    else:
        built = build(args.chunks, "clustered")
        marker.write_text(json.dumps(built))
    _, ledger = prepare_environment()
    key = ledger.api_keys.create(TENANT, "bench", rate_per_s=1e6).key
    port = free_port()
    process = serve(port, home / "service-bench.log")
    url = f"http://127.0.0.1:{port}"
    try:
        load(url, key, 4, 5)  # warm: the tenant's index opened, the model's first calls
        single = load(url, key, 1, args.single_s)
        phases = [load(url, key, clients, args.phase_s) for clients in (1, 4, 16, 64)]
        rss = [rss_mb(process.pid)]
        sampling = threading.Event()

        def sample_every_minute() -> None:
            while not sampling.wait(60):
                rss.append(rss_mb(process.pid))

        sampler = threading.Thread(target=sample_every_minute, daemon=True)
        sampler.start()
        soak = load(url, key, 16, args.soak_s)
        sampling.set()
        rss.append(rss_mb(process.pid))
    finally:
        process.terminate()
        process.wait(timeout=30)
    one, sixteen = phases[0]["rps"], phases[2]["rps"]
    figures = {
        "index_vectors": built["index_vectors"], "index_trained": built["index_trained"],
        "backend": "cyborgdb-service" if os.environ.get("INGEST_CYBORGDB_URL") else "cyborgdb-core (embedded)",
        "single_client_p50_ms": single["p50_ms"], "single_client_p99_ms": single["p99_ms"],
        **{f"clients_{p['clients']}": f"{p['rps']} req/s, p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms, "
                                      f"errors {sum(p['errors'].values())}" for p in phases},
        "throughput_16_vs_1": round(sixteen / one, 2) if one else None,
        "soak": f"{args.soak_s:g} s at 16 clients: {soak['rps']} req/s, p99 {soak['p99_ms']} ms, "
                f"errors {sum(soak['errors'].values())}",
        "rss_mb_soak_start_end": f"{rss[0]} -> {rss[-1]}",
        "rss_mb_soak_each_minute": rss,
        "load_generator": "wrk, 1 thread, 1 connection per client",
        "goal_p50_under_50ms": single["p50_ms"] < 50, "goal_16_clients_3x": bool(one and sixteen >= 3 * one),
        "goal_no_errors": not any(p["errors"] for p in [single, *phases, soak]),
    }
    Path(args.json_out).write_text(json.dumps({"figures": figures, "single": single, "phases": phases,
                                               "soak": soak, "build": built}, indent=2))
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--phase-s", type=float, default=15)
    parser.add_argument("--soak-s", type=float, default=60)
    parser.add_argument("--single-s", type=float, default=10)
    parser.add_argument("--home", help="keep the installation in this INGEST_HOME (built once, reused after)")
    parser.add_argument("--json-out", default=str(ROOT / "service-load-report.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    with kept_installation(args.home) if args.home else scratch_installation("ingest-bench-service-") as home:
        print_figures(run(args, Path(home)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
