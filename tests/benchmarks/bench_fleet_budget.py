"""The autoscaling replay: 8 → 24 → 8 processes against a database limit that 8 fit and 24 do not.

    python tests/benchmarks/bench_fleet_budget.py [--phase 25] [--configs native,static,fleet,fleet-cache]
    python tests/benchmarks/bench_fleet_budget.py --from-raw /tmp/bench_fleet_budget-XXXX   (reprint a run)

About 5.5 minutes with the defaults. Real OS processes on the real PostgreSQL found by
``django_poolguard.testing`` (127.0.0.1:5432, else the embedded server). The benchmark creates its
own role, ``poolguard_bench_budget LOGIN CONNECTION LIMIT <limit>``, and a database it owns; the
role's limit plays the database's ``max_connections`` (the shared server's settings are not
touched), and both are dropped at the end.

Each configuration runs the same three phases: 8 processes, 16 more started (24), then SIGTERM to
those 16 (a graceful scale-in, 8 left). Every process is a Django setup with a pool (min_size 1,
max_size 3, timeout 2 s) and 4 threads each running one request after another (a cursor, ``SELECT
pg_sleep(0.05)``, ``connection.close()``): ``tests/benchmarks/fleet_budget_child.py``.

- ``native``: Django's pool (``django.db.backends.postgresql``, ``OPTIONS["pool"]``);
- ``static``: poolguard's engine without a fleet budget (PUBLISH="database", so one side
  connection per process, as deployed);
- ``fleet``: the same with ``fleet_budget`` and the database lease store (the side connection
  writes the lease: still one per process);
- ``fleet-cache``: ``fleet_budget`` with ``lease_store="cache"`` on Redis (127.0.0.1:6379) and
  PUBLISH="cache": no side connection is needed in steady state.

The arithmetic: the pools' budget is 8 x max_size = 24 (8 processes fit exactly); the role's limit
is that budget plus one side connection for each of the 24 processes at peak = 48. Static pools at
24 processes want 24 x 3 = 72 pool sessions (+ 24 side connections with poolguard's engine). With the budget, each of 24 processes leases 24 // 24 = 1.

A sampler connected as the server's superuser (another role: it is not counted) counts the role's
sessions in ``pg_stat_activity`` every 100 ms, poolguard's side connections (``application_name``
``poolguard:…``) apart. Per configuration and phase it prints the largest sample against the limit
and the budget, the samples over the budget, refused connections (the server's "too many
connections" / "remaining connection slots") apart from other failed requests (pool timeouts),
queries/s over the phase's second half, the leases seen and, in heartbeats (PUBLISH_INTERVAL):
after a scale-out how long the new processes waited for a first lease, after the scale-in how long
the survivors took to lease (and open) their full max_size again. Children's logs and the raw
samples stay in a temporary directory the output names.
Results are recorded in docs/benchmarks/fleet-budget.md.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

CHILD = Path(__file__).with_name("fleet_budget_child.py")
DEFAULT_ROLE = "poolguard_bench_budget"
SAMPLE_EVERY = 0.1  # s
CONFIGS = ("native", "static", "fleet", "fleet-cache")
LABELS = {
    "native": "Django's pool",
    "static": "poolguard, static",
    "fleet": "poolguard, fleet_budget (database store)",
    "fleet-cache": "poolguard, fleet_budget (cache store)",
}


@dataclass
class Child:
    """One load process and what it reported (cumulative counters, newest last)."""

    process: subprocess.Popen[str] | None  # None: read back from a saved run
    started: float
    reports: list[dict[str, Any]] = field(default_factory=list)

    def at(self, moment: float) -> dict[str, Any] | None:
        """Its last report at or before ``moment``."""
        found = None
        for line in list(self.reports):
            if line["t"] > moment:
                break
            found = line
        return found


@dataclass
class Phase:
    processes: int
    start: float
    end: float = 0.0


@dataclass
class Run:
    """One configuration's three phases: the samples and every child."""

    config: str
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (time, sessions, side)
    # Per sample: [application_name, still starting, count] of the role's sessions.
    sessions: list[list[list[Any]]] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    children: list[Child] = field(default_factory=list)
    load: list[float] = field(default_factory=list)
    heartbeat: float = 5.0


# Every child ever started, so each exit path can kill what is left of them.
_all_children: list[subprocess.Popen[str]] = []


def kill_children() -> None:
    for process in _all_children:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # its own session: it and anything it started
            except ProcessLookupError:
                pass
            process.wait()


def admin_connect(settings: dict[str, Any], dbname: str = "postgres") -> Any:
    import psycopg

    return psycopg.connect(
        dbname=dbname,
        user=settings["USER"] or None,
        password=settings["PASSWORD"] or None,
        host=settings["HOST"] or None,
        port=settings["PORT"] or None,
        autocommit=True,
    )


def drop(admin: Any, role: str) -> None:
    """The role, its sessions and its database (named after it) gone."""
    from psycopg import sql

    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role])
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(role)))
    admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def spec_for(config: str, args: argparse.Namespace, database: dict[str, Any], prefix: str) -> dict[str, Any]:
    pool = {"min_size": args.min_size, "max_size": args.max_size, "timeout": args.pool_timeout}
    caches: dict[str, Any] = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    guard: dict[str, Any] = {"workload": "web"}
    poolguard: dict[str, Any] = {
        "WORKLOADS": {"web": "default"},
        "PUBLISH": "database",
        "PUBLISH_INTERVAL": args.heartbeat,
    }
    if config in ("fleet", "fleet-cache"):
        guard["fleet_budget"] = args.budget
    if config == "fleet-cache":
        caches["leases"] = {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": args.redis,
            "KEY_PREFIX": f"{prefix}-{config}",
        }
        guard.update(lease_store="cache", lease_cache="leases")
        poolguard.update(PUBLISH="cache", PUBLISH_CACHE="leases")
    engine = "django.db.backends.postgresql" if config == "native" else "django_poolguard.backends.postgresql"
    return {
        "engine": engine,
        "database": database,
        "pool": pool,
        "poolguard": guard,
        "POOLGUARD": poolguard,
        "caches": caches,
        "threads": args.threads,
        "query_seconds": args.query_ms / 1000,
        "report": args.report,
    }


def start_child(spec: dict[str, Any], log: Any) -> Child:
    env = {**os.environ, "BENCH_FLEET_BUDGET": json.dumps(spec), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, str(CHILD)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,
    )
    _all_children.append(process)
    child = Child(process, time.time())

    def read() -> None:
        assert process.stdout is not None
        for text in process.stdout:
            try:
                child.reports.append(json.loads(text))
            except json.JSONDecodeError:
                print(f"  child {process.pid}: {text.rstrip()}", file=sys.stderr)

    threading.Thread(target=read, daemon=True).start()
    return child


def sample(admin: Any, role: str, run: Run, done: threading.Event) -> None:
    """Every 100 ms until ``done``: the role's sessions, poolguard's side connections apart."""
    while not done.is_set():
        started = time.monotonic()
        # Per application_name (poolguard's say which process and whether a side connection),
        # with the sessions still starting or in a state: kept raw for reading an odd sample.
        by_name = admin.execute(
            "SELECT coalesce(application_name, ''), state IS NULL, count(*) "
            "FROM pg_stat_activity WHERE usename = %s GROUP BY 1, 2",
            [role],
        ).fetchall()
        total = sum(count for _, _, count in by_name)
        side = sum(count for name, _, count in by_name if name.startswith("poolguard:"))
        run.samples.append((time.time(), total, side))
        run.sessions.append([[name, starting, count] for name, starting, count in by_name])
        done.wait(max(0.0, SAMPLE_EVERY - (time.monotonic() - started)))


def stop(children: list[Child], timeout: float = 15.0) -> None:
    """SIGTERM (a graceful scale-in), then SIGKILL to whoever is still there after ``timeout``."""
    processes = [child.process for child in children if child.process is not None]
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"  child {process.pid} ignored SIGTERM for {timeout:.0f} s: killed", file=sys.stderr)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def run_config(
    config: str, args: argparse.Namespace, admin: Any, database: dict[str, Any], logs: Path
) -> Run:
    spec = spec_for(config, args, database, f"bench-budget-{os.getpid()}")
    run = Run(config, heartbeat=args.heartbeat)
    done = threading.Event()
    sampler = threading.Thread(target=sample, args=(admin, args.role, run, done), daemon=True)
    sampler.start()
    run.load.append(os.getloadavg()[0])
    with open(logs / f"{config}.log", "w") as log:
        try:
            running: list[Child] = []
            for count in args.processes:
                phase = Phase(count, time.time())
                if run.phases:
                    run.phases[-1].end = phase.start
                run.phases.append(phase)
                if count > len(running):
                    for _ in range(count - len(running)):
                        child = start_child(spec, log)
                        running.append(child)
                        run.children.append(child)
                else:  # scale-in: the newest go, as an autoscaler removes the pods it added
                    leaving, running = running[count:], running[:count]
                    threading.Thread(target=stop, args=(leaving,), daemon=True).start()
                time.sleep(args.phase)
                run.load.append(os.getloadavg()[0])
            run.phases[-1].end = time.time()
            stop(running)
        finally:
            kill_children()
            done.set()
            sampler.join()
    raw = {
        "samples": run.samples,
        "phases": [vars(phase) for phase in run.phases],
        "sessions": run.sessions,
        "heartbeat": run.heartbeat,
        "load": run.load,
        "children": [{"started": c.started, "reports": c.reports} for c in run.children],
    }
    (logs / f"{config}.json").write_text(json.dumps(raw))
    # The next configuration starts from no session of the role at all.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        left = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", [args.role]
        ).fetchone()[0]
        if not left:
            break
        time.sleep(0.2)
    return run


def delta(run: Run, key: str, start: float, end: float) -> int:
    """A cumulative counter's growth over [start, end) summed over the children."""
    total = 0
    for child in run.children:
        last = child.at(end)
        if last is None:
            continue
        first = child.at(start)
        total += last[key] - (first[key] if first else 0)
    return total


def lease_of(report: dict[str, Any] | None) -> int:
    return int(((report or {}).get("lease") or {}).get("lease", 0))


def regrow(run: Run, phase: Phase, max_size: int) -> tuple[str, float | None, bool]:
    """After a scale-in: how long until every survivor leased its full max_size again, then had
    its pool that large (it grows on demand), from the SIGTERM; in heartbeats too. Returns the
    text, the seconds until both (None: not within the phase) and whether they had shrunk at all."""
    survivors = run.children[: phase.processes]  # scale-in keeps the oldest
    if all(lease_of(child.at(phase.start)) >= max_size for child in survivors):
        return f"survivors never shrank (lease {max_size} at scale-in)", None, False
    times = sorted({r["t"] for c in survivors for r in c.reports if phase.start <= r["t"] < phase.end})
    shown, moments = [], []
    for what, value in (("lease", lease_of), ("pool", lambda report: (report or {}).get("pool_size", 0))):
        moment = next((t for t in times if all(value(child.at(t)) >= max_size for child in survivors)), None)
        moments.append(moment)
        shown.append(
            f"{what} never"
            if moment is None
            else f"{what} {moment - phase.start:.1f} s ({(moment - phase.start) / run.heartbeat:.1f} hb)"
        )
    both = None if None in moments else max(m for m in moments if m is not None) - phase.start
    return "regrown: " + ", ".join(shown), both, True


def first_leases(run: Run, phase: Phase) -> str:
    """After a scale-out: the longest a new process waited, from its first report (it is up and
    asking), until its pool had a lease of at least one connection."""
    newcomers = [c for c in run.children if phase.start <= c.started < phase.end]
    waits, never = [], 0
    for child in newcomers:
        reports = [r for r in child.reports if r["t"] < phase.end]
        leased = next((r["t"] for r in reports if lease_of(r) >= 1), None)
        if not reports or leased is None:
            never += 1
        else:
            waits.append(leased - reports[0]["t"])
    parts = [f"first lease within {max(waits):.1f} s ({max(waits) / run.heartbeat:.1f} hb)"] if waits else []
    if never:
        parts.append(f"{never} of {len(newcomers)} never leased")
    return "; ".join(parts)


def leases(run: Run, start: float, end: float) -> str:
    seen = [
        r["lease"]["lease"]
        for c in run.children
        for r in c.reports
        if r.get("lease") and start <= r["t"] < end
    ]
    return f"{min(seen)}-{max(seen)}" if seen else "-"


@dataclass
class PhaseResult:
    processes: int
    max_sessions: int
    max_pool: int  # the role's sessions minus poolguard's side connections
    max_side: int
    over_budget: int  # samples with more pool sessions than the budget
    samples: int
    refused: int
    errors: int
    rate: float  # queries/s over the phase's second half
    leases: str
    settled: str
    regrown_s: float | None = None
    shrank: bool = False


def measure(run: Run, args: argparse.Namespace) -> list[PhaseResult]:
    results = []
    for index, phase in enumerate(run.phases):
        samples = [s for s in run.samples if phase.start <= s[0] < phase.end]
        pool_sessions = [total - side for _, total, side in samples]
        steady = phase.end - (phase.end - phase.start) / 2
        result = PhaseResult(
            processes=phase.processes,
            max_sessions=max((s[1] for s in samples), default=0),
            max_pool=max(pool_sessions, default=0),
            max_side=max((s[2] for s in samples), default=0),
            over_budget=sum(1 for value in pool_sessions if value > args.budget),
            samples=len(samples),
            refused=delta(run, "refused", phase.start, phase.end),
            errors=delta(run, "errors", phase.start, phase.end),
            rate=delta(run, "ok", steady, phase.end) / (phase.end - steady),
            leases=leases(run, phase.start, phase.end),
            settled="",
        )
        if run.config.startswith("fleet"):
            if index == 0 or phase.processes > run.phases[index - 1].processes:
                result.settled = first_leases(run, phase)
            else:
                result.settled, result.regrown_s, result.shrank = regrow(run, phase, args.max_size)
        results.append(result)
    return results


def row(config: str, index: int, result: PhaseResult, args: argparse.Namespace) -> list[str]:
    return [
        LABELS[config],
        f"{'→ ' if index else ''}{result.processes}",
        f"{result.max_sessions} / {args.limit}",
        f"{result.max_pool} / {args.budget}",
        str(result.max_side),
        f"{result.over_budget} of {result.samples}",
        str(result.refused),
        str(result.errors),
        f"{result.rate:.0f}",
        result.leases,
        result.settled,
    ]


def verdicts(results: dict[str, list[PhaseResult]], args: argparse.Namespace) -> list[str]:
    """The issue's acceptance, one line per configuration, from the figures above."""
    lines = []
    static = {name: results[name][0].rate for name in ("native", "static") if name in results}
    for config, phases in results.items():
        over = sum(p.over_budget for p in phases)
        refused = sum(p.refused for p in phases)
        errors = sum(p.errors for p in phases)
        if not config.startswith("fleet"):
            peak = phases[1]
            lines.append(
                f"- {LABELS[config]}: at {peak.processes} processes {peak.max_pool} pool sessions for a budget "
                f"of {args.budget} ({peak.over_budget} of {peak.samples} samples over), {peak.refused} refused "
                f"connections, {peak.errors} other errors."
            )
            continue
        ratios = ", ".join(f"{phases[0].rate / rate:.0%} of {LABELS[name]}" for name, rate in static.items())
        within = all(abs(phases[0].rate / rate - 1) <= 0.10 for rate in static.values()) if static else None
        last = phases[-1]
        if not last.shrank:
            regrew = "regrowth not measured: the survivors never shrank"
        elif last.regrown_s is None:
            regrew = "NOT regrown within the phase"
        else:
            hb = last.regrown_s / args.heartbeat
            regrew = (
                f"regrown in {last.regrown_s:.1f} s = {hb:.1f} heartbeats ({'ok' if hb <= 2 else 'over 2'})"
            )
        lines.append(
            f"- {LABELS[config]}: {'never over the budget' if not over else f'OVER the budget in {over} samples'}; "
            f"{refused} refused connections, {errors} other errors; throughput at {phases[0].processes} "
            f"processes {ratios or 'not compared'}"
            f"{'' if within is None else (' (within 10 %)' if within else ' (NOT within 10 %)')}; {regrew}."
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help="comma-separated, of " + ", ".join(CONFIGS)
    )
    parser.add_argument("--processes", default="8,24,8", help="processes per phase (default 8,24,8)")
    parser.add_argument("--phase", type=float, default=25.0, help="seconds per phase")
    parser.add_argument("--min-size", type=int, default=1)
    parser.add_argument("--max-size", type=int, default=3)
    parser.add_argument("--pool-timeout", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=4, help="load threads per process")
    parser.add_argument("--query-ms", type=float, default=50.0, help="pg_sleep per request (ms)")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="POOLGUARD['PUBLISH_INTERVAL'] (s)")
    parser.add_argument("--budget", type=int, help="fleet_budget (default: first phase x max_size)")
    parser.add_argument(
        "--limit", type=int, help="the role's CONNECTION LIMIT (default: budget + peak processes)"
    )
    parser.add_argument("--report", type=float, default=0.5, help="children report every N s")
    parser.add_argument("--role", default=DEFAULT_ROLE, help="the role (and database) created, then dropped")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--from-raw", metavar="DIR", help="print the tables of a run saved in DIR, running nothing"
    )
    args = parser.parse_args()
    args.processes = [int(n) for n in args.processes.split(",")]
    configs = [name.strip() for name in args.configs.split(",") if name.strip()]
    unknown = set(configs) - set(CONFIGS)
    if unknown or len(args.processes) != 3:
        parser.error(f"--configs takes {', '.join(CONFIGS)}; --processes three counts")
    args.budget = args.budget or args.processes[0] * args.max_size
    args.limit = args.limit or args.budget + max(args.processes)
    if "fleet-cache" in configs:
        try:
            socket.create_connection(("127.0.0.1", 6379), timeout=0.5).close()
        except OSError:
            print("Redis is not answering on 127.0.0.1:6379: skipping fleet-cache", file=sys.stderr)
            configs.remove("fleet-cache")

    if args.from_raw:
        saved = Path(args.from_raw) / "args.json"
        if saved.exists():  # the figures the run had (budget, limit, sizes), not today's defaults
            for key, value in json.loads(saved.read_text()).items():
                if key not in ("from_raw", "configs"):
                    setattr(args, key, value)
        runs, machine = load_runs(Path(args.from_raw), configs)
    else:
        runs, machine = run_all(args, configs)
    print_report(runs, machine, args)


def run_all(args: argparse.Namespace, configs: list[str]) -> tuple[list[Run], str]:
    """Create the role and its database, run every configuration, drop them; the runs and a line
    saying what ran where."""
    from psycopg import sql

    from django_poolguard.testing import database_settings

    settings = database_settings("postgres")
    database = {**settings, "NAME": args.role, "USER": args.role, "PASSWORD": ""}
    admin = admin_connect(settings)
    sampler_admin = admin_connect(settings)
    # The role's limit must fit in what the shared server has free, with room for the others.
    max_connections, reserved = (
        int(admin.execute(f"SHOW {name}").fetchone()[0])
        for name in ("max_connections", "superuser_reserved_connections")
    )
    in_use = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
    ).fetchone()[0]
    if in_use + args.limit + 10 > max_connections - reserved:
        sys.exit(
            f"The server has {max_connections - reserved - in_use} connections free ({in_use} in use of "
            f"{max_connections} - {reserved} reserved); this run needs {args.limit} + 10 to spare: "
            "lower --max-size / --processes or run it when the server is quieter."
        )

    def on_signal(signum: int, frame: Any) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    atexit.register(kill_children)
    logs = Path(tempfile.mkdtemp(prefix="bench_fleet_budget-"))
    (logs / "args.json").write_text(json.dumps({**vars(args), "configs": configs}))
    runs: list[Run] = []
    started = time.time()
    try:
        drop(admin, args.role)
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT {}").format(
                sql.Identifier(args.role), sql.Literal(args.limit)
            )
        )
        admin.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(args.role), sql.Identifier(args.role)
            )
        )
        migrate_spec = spec_for("static", args, database, "migrate")
        subprocess.run(
            [sys.executable, str(CHILD), "migrate"],
            cwd=ROOT,
            env={**os.environ, "BENCH_FLEET_BUDGET": json.dumps(migrate_spec)},
            check=True,
            timeout=120,
        )
        for config in configs:
            print(
                f"{LABELS[config]}: {' → '.join(map(str, args.processes))} processes, {args.phase:.0f} s each",
                file=sys.stderr,
                flush=True,
            )
            runs.append(run_config(config, args, sampler_admin, database, logs))
    finally:
        kill_children()
        drop(admin, args.role)
    import django

    machine = (
        f"Python {sys.version.split()[0]}, Django {django.get_version()}, PostgreSQL "
        f"{admin.execute('SHOW server_version').fetchone()[0]}, {os.cpu_count()} CPUs; "
        f"load average {min(min(r.load) for r in runs):.1f}-{max(max(r.load) for r in runs):.1f} during the run, "
        f"{time.time() - started:.0f} s in all; child logs and raw samples in {logs}"
    )
    (logs / "machine.txt").write_text(machine)
    admin.close()
    sampler_admin.close()
    return runs, machine


def load_runs(logs: Path, configs: list[str]) -> tuple[list[Run], str]:
    """The runs a previous invocation saved (``--from-raw DIR``), to read them again."""
    runs = []
    for config in configs:
        path = logs / f"{config}.json"
        if not path.exists():
            continue
        raw = json.loads(path.read_text())
        run = Run(config, samples=[tuple(s) for s in raw["samples"]], heartbeat=raw.get("heartbeat", 5.0))
        run.phases = [Phase(**phase) for phase in raw["phases"]]
        run.children = [Child(None, c["started"], c["reports"]) for c in raw["children"]]
        run.load = raw.get("load", [])
        runs.append(run)
    machine = (logs / "machine.txt").read_text() if (logs / "machine.txt").exists() else f"(read from {logs})"
    return runs, machine


def print_report(runs: list[Run], machine: str, args: argparse.Namespace) -> None:
    print(machine)
    print(
        f"Role CONNECTION LIMIT {args.limit}, fleet_budget {args.budget}; each process: pool min_size "
        f"{args.min_size}, max_size {args.max_size}, timeout {args.pool_timeout:g} s, {args.threads} threads of "
        f"`SELECT pg_sleep({args.query_ms / 1000:g})`; heartbeat (PUBLISH_INTERVAL) {args.heartbeat:g} s; "
        f"{args.phase:g} s per phase; sampled every {SAMPLE_EVERY * 1000:.0f} ms"
    )
    print()
    header = [
        "configuration",
        "processes",
        "max sessions / limit",
        "max pool sessions / budget",
        "max side conns",
        "samples over budget",
        "refused",
        "other errors",
        "queries/s",
        "lease",
        "lease timing",  # after a scale-out: first leases; after a scale-in: back to max_size
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    results = {run.config: measure(run, args) for run in runs}
    for config, phases in results.items():
        for index, result in enumerate(phases):
            print("| " + " | ".join(row(config, index, result, args)) + " |")
    print()
    print("Against the issue's acceptance:")
    for line in verdicts(results, args):
        print(line)
    for run in runs:
        kinds: dict[str, int] = {}
        examples: dict[str, str] = {}
        for child in run.children:
            if child.reports:
                for kind, count in child.reports[-1]["error_kinds"].items():
                    kinds[kind] = kinds.get(kind, 0) + count
                examples = {**child.reports[-1].get("error_examples", {}), **examples}
        if kinds:
            print()
            print(f"Other errors, {LABELS[run.config]}:")
            for kind, count in sorted(kinds.items(), key=lambda item: -item[1]):
                print(f"- {count} x {kind}: {examples.get(kind, '')}")


if __name__ == "__main__":
    main()
