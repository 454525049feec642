"""Start and stop a real ``celery worker`` process on the test database (tests and benchmarks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from celery import Celery

from .config import celery_config, choose_broker

ROOT = Path(__file__).resolve().parents[2]


class Worker:
    """``celery -A tests.celery_app worker`` on its own queue, in its own process group."""

    def __init__(
        self,
        database: str,
        *,
        pool: str = "prefork",
        concurrency: int = 2,
        fixup: bool = True,
        env: dict[str, str] | None = None,
        settings: str = "tests.settings",
    ) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="poolguard-celery-"))
        self.queue = f"poolguard-tests-{uuid.uuid4().hex[:12]}"
        self.log_path = self.folder / "worker.log"
        self.parent_file = self.folder / "parent.json"
        self.env = {
            **os.environ,
            **choose_broker(self.folder),
            "DJANGO_SETTINGS_MODULE": settings,
            "POOLGUARD_DB_NAME": database,
            "POOLGUARD_CELERY_QUEUE": self.queue,
            "POOLGUARD_CELERY_FIXUP": "1" if fixup else "0",
            "POOLGUARD_CELERY_PARENT_FILE": str(self.parent_file),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.celery_app.app",
            "worker",
            f"--pool={pool}",
            f"--concurrency={concurrency}",
            f"--queues={self.queue}",
            f"--hostname={self.queue}@%h",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        self.client = Celery("poolguard_tests_client", fixups=[], set_as_current=False)
        self.client.conf.update(celery_config(self.env))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def transport(self) -> str:
        return self.env["POOLGUARD_CELERY_BROKER"].split(":", 1)[0]

    def start(self, timeout: float = 60) -> Worker:
        self._log = open(self.log_path, "wb")
        # Its own session: stop() signals the whole group (the main process and its children).
        self.process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                returncode, log = self.process.returncode, self.log()
                self.stop()
                raise RuntimeError(f"the Celery worker exited with {returncode}:\n{log}")
            if " ready." in self.log():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the Celery worker was not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def parent(self) -> dict[str, Any]:
        return json.loads(self.parent_file.read_text())

    def send(self, task: str, *args: Any) -> Any:
        return self.client.send_task(f"tests.celery_app.tasks.{task}", args=args, queue=self.queue)

    def run(self, task: str, *args: Any, timeout: float = 60) -> Any:
        return self.send(task, *args).get(timeout=timeout, interval=0.05)

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        self.process = None
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)  # warm shutdown: children close their pools
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
            except ProcessLookupError:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # any child that outlived the main process
        except ProcessLookupError:
            pass
        self._log.close()
        self.client.close()

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
