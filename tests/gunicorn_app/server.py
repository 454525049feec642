"""Start and stop the test site under a real gunicorn (used by tests/integrations/test_gunicorn.py and the spike benchmark)."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(
    port: int, path: str, timeout: float = 30.0, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One GET on a fresh connection: ``(status, headers, body)``."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


class GunicornServer:
    """``with GunicornServer(database=..., env={...}) as server:`` serves tests.gunicorn_app on ``server.port``.

    The process group is killed on exit, whatever happened inside the block.
    """

    def __init__(
        self, database: str, env: dict[str, str] | None = None, settings: str = "tests.gunicorn_app.settings"
    ):
        self.port = free_port()
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": settings,
            "POOLGUARD_GUNICORN_DB": database,
            "PYTHONPATH": str(ROOT),
            **(env or {}),
        }
        self.workers = int(self.env.get("POOLGUARD_GUNICORN_WORKERS", "2"))
        self._ready_dir = tempfile.TemporaryDirectory(prefix="poolguard-gunicorn-")
        self.env["POOLGUARD_GUNICORN_READY_DIR"] = self._ready_dir.name
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(self.env.get("POOLGUARD_GUNICORN_LOG", os.devnull))

    def __enter__(self) -> GunicornServer:
        command = [
            sys.executable, "-m", "gunicorn",
            "-c", str(ROOT / "tests" / "gunicorn_app" / "gunicorn_conf.py"),
            "-b", f"127.0.0.1:{self.port}",
            "tests.gunicorn_app.wsgi:application",
        ]  # fmt: skip
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}; see {self.log_path}")
            # Every worker has loaded the app (post_worker_init), and the site answers.
            if len(list(Path(self._ready_dir.name).iterdir())) >= self.workers:
                try:
                    if get(self.port, "/poolguard/health/", timeout=2)[0] == 200:
                        return
                except OSError:
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn did not answer on port {self.port} within {timeout:.0f} s")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        self._ready_dir.cleanup()
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None
