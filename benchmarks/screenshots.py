"""Screenshots of the Dagster UI on this installation: the asset lineage graph and the cyborgdb_index asset page.

The installation is $INGEST_HOME (default: .ingest in the project); when it has no materialization yet, the demo
(`ingest-pipeline demo`) ingests the bundled sample corpus first, so the pages have runs, metadata and checks.
`dagster-webserver` is started alone on 127.0.0.1 on that instance, Debian's headless Chromium saves each page,
and the webserver is stopped.

    make screenshot          (installs Debian's chromium first when it is missing)
    .venv/bin/python benchmarks/screenshots.py [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# The pages, by file name: (path under the repository's address "{repository}@{location}", window size). The
# "ingestion" group's lineage is the asset graph without the asset-list sidebar of the global lineage page
# (/asset-groups), so the graph gets the whole width; it is zoomed to fit the width, so a lower window crops
# only empty canvas. An asset's page opens on its overview: status, latest materialization and its metadata,
# latest check results, description, definition.
PAGES = {
    "asset-graph.png": ("/locations/{address}/asset-groups/ingestion", "1600,760"),
    "asset-cyborgdb_index.png": ("/assets/cyborgdb_index", "1600,1000"),
}
# Headless without a sandbox or GPU (as root, in a container), and nothing that reaches out to Google.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-quic",
]
STARTUP_SECONDS = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def has_materializations() -> bool:
    from dagster import AssetKey

    from ingest_pipeline.runtime.instance import dagster_instance, prepare_environment

    prepare_environment()
    return dagster_instance().get_latest_materialization_event(AssetKey("cyborgdb_index")) is not None


def graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def wait_until_loaded(url: str, process: subprocess.Popen, log: Path) -> str:
    """Until the webserver answers and lists the code location's repository; its address "repository@location"."""
    query = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"dagster-webserver exited:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(OSError, KeyError, TypeError, ValueError, IndexError):
            repository = graphql(url, query)["data"]["repositoriesOrError"]["nodes"][0]
            return f"{repository['name']}@{repository['location']['name']}"
        time.sleep(0.5)
    sys.exit(f"dagster-webserver did not load the code location:\n{log.read_text(errors='replace')[-3000:]}")


def screenshot(chromium: str, url: str, path: Path, window_size: str, budget_ms: int) -> None:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        result = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={window_size}",
             f"--virtual-time-budget={budget_ms}", f"--screenshot={path}", url],
            capture_output=True, text=True, timeout=180,
        )
    if result.returncode != 0 or not path.is_file() or path.stat().st_size == 0:
        sys.exit(f"chromium could not save {path} (exit {result.returncode}):\n{result.stderr[-3000:]}")
    print(f"saved {path.relative_to(REPO) if path.is_relative_to(REPO) else path}  ({url})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--virtual-time-budget", type=int, default=20_000, help="milliseconds the page may render")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    if not Path(args.chromium).is_file():
        sys.exit(f"{args.chromium} is missing: `make screenshot` installs Debian's chromium package")

    os.environ.setdefault("INGEST_HOME", str(REPO / ".ingest"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if not has_materializations():
        print(f"no materialization in {os.environ['INGEST_HOME']} yet: running the demo first")
        subprocess.run([str(BIN / "ingest-pipeline"), "demo"], check=True)

    from ingest_pipeline.runtime.instance import prepare_environment

    prepare_environment()  # DAGSTER_HOME, INGEST_DAGSTER_PG_URL ... for the webserver
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="screenshots-") as scratch:
        log = Path(scratch) / "webserver.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [str(BIN / "dagster-webserver"), "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1",
                 "-p", str(port)],
                cwd=REPO, env=os.environ.copy(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            address = urllib.parse.quote(wait_until_loaded(url, process, log), safe="@:")
            for name, (page, window_size) in PAGES.items():
                screenshot(args.chromium, url + page.format(address=address), args.out / name, window_size,
                           args.virtual_time_budget)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
