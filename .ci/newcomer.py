#!/usr/bin/env python3
"""CI: the README's demo command on a clean clone, as a newcomer runs it.

Clones the repository (its committed HEAD) into a new directory, runs
``python3 example_project/demo.py`` there with nothing prepared (``POOLGUARD_DATABASE=embedded``:
the embedded PostgreSQL a fresh machine gets, even where a local server answers), waits for the
admin URL and credentials it prints, logs in and fetches the admin's *Connection pools* page over
real HTTP, runs ``python3 example_project/manage.py poolstats`` beside it (the README's second
terminal, with a python3 that may lack Django), then presses Ctrl-C (SIGINT to the demo's process
group, as a terminal does) and checks:

- the demo exits 0, and no process it started survives (none whose executable, working directory
  or command line lies in the clone, none left in its session);
- no file outside the clone changed: the entries of ``$HOME`` (three levels deep) and of the
  temporary directory, and the permissions of ``$HOME`` and of every directory above the clone.
  Ignored: pip's cache (``~/.cache/pip``), which the first run fills as any ``pip install`` does,
  and the clone's own parent directory.

Usage: ``python3 .ci/newcomer.py [--keep] [--ignore GLOB ...]`` from the repository (``--keep``
leaves the clone; ``--ignore`` skips outside paths that other jobs on a shared machine create).
Exit 0 when every check passes. The first run's install takes minutes; the script prints timings.
"""

from __future__ import annotations

import argparse
import fnmatch
import http.cookiejar
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 20 * 60.0  # s: the first run creates the virtual environment
STOP_TIMEOUT = 90.0  # s for the demo to stop everything after Ctrl-C
PUBLISH_WAIT = 30.0  # s for every process of the demo (web workers, Celery worker) to publish its pools
ADMIN_LINE = re.compile(r"admin\s+(http://\S+/admin/)\s+user: (\S+)\s+password: (\S+)")
HOME_DEPTH = 3
IGNORED_UNDER_HOME = (".cache/pip",)


@dataclass(frozen=True)
class Entry:
    mode: int
    uid: int


def listing(root: Path, depth: int, ignored: tuple[Path, ...]) -> dict[str, Entry]:
    """Every entry below ``root`` up to ``depth`` levels, with its mode and owner."""
    found: dict[str, Entry] = {}

    def walk(directory: Path, level: int) -> None:
        try:
            children = list(os.scandir(directory))
        except OSError:
            return
        for child in children:
            path = Path(child.path)
            if any(path == skip or skip in path.parents for skip in ignored):
                continue
            try:
                info = child.stat(follow_symlinks=False)
            except OSError:
                continue
            # ~/.cache itself may be created just to hold pip's cache: only its other contents count.
            if not any(path in skip.parents for skip in ignored):
                found[child.path] = Entry(info.st_mode, info.st_uid)
            if level < depth and child.is_dir(follow_symlinks=False):
                walk(path, level + 1)

    walk(root, 1)
    return found


def outside_state(clone: Path) -> dict[str, Entry]:
    home = Path.home()
    ignored = (clone.parent, *(home / name for name in IGNORED_UNDER_HOME))
    state = listing(home, HOME_DEPTH, ignored)
    state.update(listing(Path(tempfile.gettempdir()), 1, ignored))
    for directory in [home, *clone.parents]:
        info = directory.stat()
        state[f"{directory} (itself)"] = Entry(info.st_mode, info.st_uid)
    return state


def differences(before: dict[str, Entry], after: dict[str, Entry]) -> list[str]:
    changes = [f"new      {path}" for path in sorted(after.keys() - before.keys())]
    changes += [f"removed  {path}" for path in sorted(before.keys() - after.keys())]
    for path in sorted(before.keys() & after.keys()):
        old, new = before[path], after[path]
        if old != new:
            changes.append(
                f"changed  {path}: {stat.filemode(old.mode)} uid {old.uid} -> {stat.filemode(new.mode)} uid {new.uid}"
            )
    return changes


def processes_in(clone: Path, session: int) -> list[str]:
    """Live processes that belong to the clone: by executable, cwd, command line or session."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] == "Z":
                continue
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            places = [cmdline]
            for link in ("exe", "cwd"):
                try:
                    places.append(os.readlink(proc / link))
                except OSError:
                    pass
        except OSError:
            continue
        if int(fields[3]) == session or any(str(clone) in place for place in places):
            found.append(f"pid {proc.name}: {cmdline.strip()[:160]}")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch_admin(url: str, user: str, password: str) -> str:
    """Log in through the admin's form (with its CSRF token) and return the dashboard's HTML."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    login = urllib.parse.urljoin(url, "login/?next=/admin/")
    with opener.open(login, timeout=30) as response:
        form = response.read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
    assert token, "no CSRF token in the admin's login form"
    data = urllib.parse.urlencode(
        {"username": user, "password": password, "csrfmiddlewaretoken": token[1], "next": "/admin/"}
    ).encode()
    request = urllib.request.Request(login, data=data, headers={"Referer": login})
    with opener.open(request, timeout=30) as response:
        landing = response.read().decode()
        assert response.url.rstrip("/").endswith("/admin"), f"login failed, landed on {response.url}"
    assert "Log out" in landing or "logout" in landing, "the admin index does not show a logged-in user"
    with opener.open(urllib.parse.urljoin(url, "django_poolguard/pool/"), timeout=60) as response:
        assert response.status == 200, response.status
        return response.read().decode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the clone in place")
    parser.add_argument(
        "--ignore", action="append", default=[], metavar="GLOB", help="outside paths to ignore (fnmatch)"
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="poolguard-newcomer-"))
    # mkdtemp makes it drwx------; a newcomer's clone sits in an ordinary directory others may traverse.
    workdir.chmod(0o755)
    clone = workdir / "django_poolguard"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    print(f"Cloned {REPO} (HEAD {_head(clone)}) into {clone}", flush=True)

    before = outside_state(clone)
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("PG")}
    env.update({"POOLGUARD_DATABASE": "embedded", "PYTHONUNBUFFERED": "1"})
    port = free_port()
    command = ["python3", "example_project/demo.py", "--port", str(port)]
    print(f"$ {' '.join(command)}", flush=True)
    started = time.monotonic()
    demo = subprocess.Popen(
        command,
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, which Ctrl-C reaches as a terminal's would
    )
    failures: list[str] = []
    output: list[str] = []
    try:
        assert demo.stdout is not None
        admin = None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        for line in demo.stdout:
            output.append(line)
            print(f"  | {line}", end="", flush=True)
            admin = admin or ADMIN_LINE.search(line)
            if admin and "Ctrl-C" in line:
                break
            if time.monotonic() > deadline:
                break
        if not admin:
            raise SystemExit(f"The demo did not print the admin URL within {STARTUP_TIMEOUT:.0f} s.")
        print(
            f"Demo up after {time.monotonic() - started:.0f} s (first run: the virtual environment included)."
        )

        page = fetch_admin(admin[1], admin[2], admin[3])
        for alias in ("default", "worker", "analytics"):
            if alias not in page:
                failures.append(f"the Connection pools page does not show the {alias!r} alias")
        print(f"Fetched {admin[1]}django_poolguard/pool/ as {admin[2]!r}: {len(page)} bytes.")

        # The README's second-terminal command, with the same python3 (which lacks Django). The
        # Celery worker publishes once it is ready, which can be a second after the shop answers:
        # a newcomer who looks again sees it, so look again for up to PUBLISH_WAIT seconds.
        deadline = time.monotonic() + PUBLISH_WAIT
        while True:
            stats = subprocess.run(
                ["python3", "example_project/manage.py", "poolstats"],
                cwd=clone,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            live = re.search(r"(\d+) live process", stats.stdout)
            if (stats.returncode == 0 and live and int(live[1]) >= 3) or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        if stats.returncode != 0 or not live or int(live[1]) < 3:
            failures.append(
                f"`python3 example_project/manage.py poolstats` failed:\n{stats.stdout}{stats.stderr}"
            )
        else:
            print(f"$ python3 example_project/manage.py poolstats\n  | {stats.stdout.splitlines()[0]}")

        stopping = time.monotonic()
        os.killpg(demo.pid, signal.SIGINT)
        rest, _ = demo.communicate(timeout=STOP_TIMEOUT)
        output.append(rest)
        print("".join(f"  | {line}\n" for line in rest.splitlines()), end="")
        print(f"Demo exited with {demo.returncode} {time.monotonic() - stopping:.1f} s after Ctrl-C.")
        if demo.returncode != 0:
            failures.append(f"the demo exited with {demo.returncode}")
        survivors = processes_in(clone, demo.pid)
        for _ in range(20):
            if not survivors:
                break
            time.sleep(0.5)
            survivors = processes_in(clone, demo.pid)
        failures += [f"still running after the demo stopped: {survivor}" for survivor in survivors]
        failures += [
            f"outside the clone: {change}"
            for change in differences(before, outside_state(clone))
            if not any(fnmatch.fnmatch(change.split()[1], pattern) for pattern in args.ignore)
        ]
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
        if not args.keep:
            _stop_leftover_postgres(clone)
            shutil.rmtree(workdir, ignore_errors=True)
    if failures:
        print("\nNEWCOMER CHECK FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print("\nNewcomer check passed: the demo started, served its admin, and Ctrl-C left nothing behind.")
    return 0


def _head(clone: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(clone), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()


def _stop_leftover_postgres(clone: Path) -> None:
    """A failed run must not leave a PostgreSQL behind on the CI machine."""
    for pid_file in clone.glob("example_project/var/pgdata-*/postmaster.pid"):
        try:
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
        except (OSError, ValueError, IndexError):
            pass


if __name__ == "__main__":
    sys.exit(main())
