"""``manage.py demo``: the whole shop on this machine — gunicorn, a Celery worker and a driver
replaying the incidents — until Ctrl-C, which stops every process it started, the embedded
PostgreSQL included when the demo started it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from django_poolguard.testing import started_embedded_server, stop_embedded_server
from shop import bootstrap
from shop.driver import Driver

HERE = Path(__file__).resolve().parents[3]  # example_project/
REPO = HERE.parent
STOP_GRACE = 15.0  # s each child gets to stop after SIGTERM before it is killed


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


def choose_broker() -> str:
    """``SHOP_BROKER_URL``, else ``REDIS_URL``, else a local Redis if one answers, else the
    filesystem transport, which needs no server."""
    for name in ("SHOP_BROKER_URL", "REDIS_URL"):
        if os.environ.get(name):
            return os.environ[name]
    if _answers("127.0.0.1", 6379):
        return "redis://127.0.0.1:6379/8"
    return "filesystem://"


def describe_broker(url: str) -> str:
    if url.startswith("filesystem"):
        return f"filesystem transport in {settings.VAR_DIR / 'broker'} (no server needed)"
    return url.split("@")[-1] if "@" in url else url  # never print a password


class Command(BaseCommand):
    help = "Run the example shop with gunicorn, a Celery worker and a driver replaying the incidents."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--port", type=int, default=8000, help="gunicorn's port on 127.0.0.1 (default 8000)"
        )
        parser.add_argument("--no-driver", action="store_true", help="do not replay the incidents")
        parser.add_argument("--setup-only", action="store_true", help="prepare the database and exit")

    def handle(self, *args: Any, port: int, no_driver: bool, setup_only: bool, **options: Any) -> None:
        try:
            self._run(port, no_driver, setup_only)
        finally:
            pgdata = stop_embedded_server()
            if pgdata is not None:
                self.stdout.write(f"Stopped the embedded PostgreSQL (its data stays in {pgdata}).")

    def _run(self, port: int, no_driver: bool, setup_only: bool) -> None:
        if not 0 < port < 65536:
            raise CommandError(f"--port must be between 1 and 65535, not {port}.")
        if not settings.GUARDED:
            raise CommandError("The demo shows poolguard: unset SHOP_POOL_MODE (it is 'native').")
        self.stdout.write("Preparing the database (create, migrate, catalogue, demo user)...")
        bootstrap.prepare()
        connections.close_all()  # this process only watches from now on: give its connection back
        if setup_only:
            bootstrap.close_pools()
            self.stdout.write("Database ready.")
            return
        if _answers("127.0.0.1", port):
            raise CommandError(f"Port {port} is already in use; pick another with --port.")

        broker = choose_broker()
        env = self._child_env(broker)
        logs = settings.VAR_DIR / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        children = Children(self.stdout, self.stderr)
        stop = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            stop.set()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        try:
            children.start(
                "gunicorn",
                [
                    sys.executable, "-m", "gunicorn", "shop_project.wsgi",
                    "--bind", f"127.0.0.1:{port}", "--workers", str(settings.GUNICORN_WORKERS),
                    "--worker-class", "gthread",
                    "--threads", "8", "--timeout", "60", "--graceful-timeout", "5",
                    "--access-logfile", str(logs / "access.log"),
                ],
                env, logs / "gunicorn.log",
            )  # fmt: skip
            children.start(
                "celery",
                [
                    sys.executable, "-m", "celery", "-A", "shop_project", "worker",
                    "--loglevel", "INFO", "--concurrency", str(settings.CELERY_WORKER_CONCURRENCY),
                    "--queues", "shop",
                    "--hostname", f"shop-{os.getpid()}@%h",
                ],
                env, logs / "celery.log",
            )  # fmt: skip
            base = f"http://127.0.0.1:{port}"
            self._wait_until_up(base, children, stop)
            if stop.is_set():
                return
            self._banner(base, broker, logs)
            driver = None
            if not no_driver:
                from shop_project.celery import app as celery_app

                celery_app.conf.broker_url = broker
                driver = Driver(base, stop, self.stdout)
                driver.start()
            while not stop.is_set():
                died = children.died()
                if died:
                    self.stderr.write(f"{died} exited unexpectedly; see {logs}. Stopping the demo.")
                    break
                stop.wait(0.5)
            stop.set()
            if driver is not None:
                driver.join(10)
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
            children.stop_all()
            signal.signal(signal.SIGINT, signal.default_int_handler)
        bootstrap.close_pools()
        self.stdout.write("Demo stopped: gunicorn, the Celery worker and the driver have exited.")

    def _child_env(self, broker: str) -> dict[str, str]:
        env = dict(os.environ)
        path = [str(HERE), str(REPO)]
        if env.get("PYTHONPATH"):
            path.append(env["PYTHONPATH"])
        prometheus_dir = settings.VAR_DIR / "prometheus"
        shutil.rmtree(prometheus_dir, ignore_errors=True)  # stale files from a previous run lie
        prometheus_dir.mkdir(parents=True)
        # Runtime files (gunicorn 25's control socket would go to ~/.gunicorn) stay in var/.
        runtime_dir = settings.VAR_DIR / "runtime"
        runtime_dir.mkdir(mode=0o700, exist_ok=True)
        env.update(
            {
                "XDG_RUNTIME_DIR": str(runtime_dir),
                "PYTHONPATH": os.pathsep.join(path),
                "DJANGO_SETTINGS_MODULE": "shop_project.settings",
                "SHOP_BROKER_URL": broker,
                "PROMETHEUS_MULTIPROC_DIR": str(prometheus_dir),
                "DATABASE_URL": os.environ["DATABASE_URL"],  # exported by django_poolguard.testing
            }
        )
        env.pop("SHOP_POOL_MODE", None)
        return env

    def _wait_until_up(self, base: str, children: Children, stop: threading.Event) -> None:
        deadline = time.monotonic() + 90
        while not stop.is_set():
            try:
                with urllib.request.urlopen(f"{base}/poolguard/health/", timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # 503 from health is an answer: the server is up
            except OSError:
                pass
            died = children.died()
            if died:
                raise CommandError(f"{died} exited during startup; see {settings.VAR_DIR / 'logs'}.")
            if time.monotonic() > deadline:
                raise CommandError(f"gunicorn did not answer on {base} within 90 s.")
            stop.wait(0.3)

    def _banner(self, base: str, broker: str, logs: Path) -> None:
        db = settings.DATABASES["default"]
        embedded = started_embedded_server()
        where = db["HOST"] if not str(db["HOST"]).startswith("/") else f"a unix socket in {db['HOST']}"
        if embedded is not None:
            where = f"the embedded PostgreSQL (data in {embedded}), stopped with the demo"
        manage = f"python3 {_shown(HERE / 'manage.py')}"
        watch = f"{manage} poolstats --watch 2"
        if settings.DATABASE_URL_GIVEN:
            watch = f"DATABASE_URL='{_redacted(os.environ['DATABASE_URL'])}' {watch}"
        self.stdout.write(
            "\n".join(
                [
                    "",
                    "The example shop is running.",
                    f"  shop           {base}/",
                    f"  admin          {base}/admin/   user: {bootstrap.DEMO_USER}   password: {bootstrap.DEMO_PASSWORD}",
                    "                 (Poolguard > Connection pools, Leak events)",
                    f"  health         {base}/poolguard/health/",
                    f"  metrics        {base}/metrics",
                    f"  database       {db['NAME']} on {where}",
                    f"  celery broker  {describe_broker(broker)}",
                    f"  logs           {logs}",
                    f"  times          {settings.TIME_ZONE} everywhere (SHOP_TIME_ZONE to change)",
                    "",
                    "In another terminal, watch the pools of every process:",
                    f"  {watch}",
                    f"or replay one incident with and without poolguard (in its own database): {manage} incident leak",
                    "",
                    "The driver replays the incidents one after the other. Ctrl-C stops everything the demo started.",
                    "",
                ]
            )
        )


def _shown(path: Path) -> str:
    """``path`` relative to the current directory when it is below it: the command to paste."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _redacted(url: str) -> str:
    """The URL without its password: the banner is shown on screens and pasted into chats."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


class Children:
    """The processes the demo started, each in its own session so a Ctrl-C reaches only the
    demo, which then stops them in order and waits for them."""

    def __init__(self, stdout: Any, stderr: Any) -> None:
        self.stdout, self.stderr = stdout, stderr
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        with open(log, "ab") as out:
            self.processes[name] = subprocess.Popen(
                command, cwd=HERE, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.stdout.write(f"Started {name} (pid {self.processes[name].pid}), log in {log}")

    def died(self) -> str | None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                return f"{name} (pid {process.pid}, exit code {process.returncode})"
        return None

    def stop_all(self) -> None:
        for process in reversed(self.processes.values()):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # the master stops its own workers gracefully
        deadline = time.monotonic() + STOP_GRACE
        for name, process in reversed(self.processes.items()):
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.stderr.write(
                    f"{name} (pid {process.pid}) did not stop within {STOP_GRACE:.0f} s; killing it."
                )
                self._kill_group(process)
                process.wait(5)
            # Workers of a master that was killed hard stay in its process group: no orphans.
            self._kill_group(process)

    @staticmethod
    def _kill_group(process: subprocess.Popen[bytes]) -> None:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the child leads its own session, hence its group
        except (ProcessLookupError, PermissionError):
            pass
