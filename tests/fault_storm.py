"""One fault storm in a fresh process: ``python -m tests.fault_storm ENGINE KIND SEED``.

ENGINE is ``poolguard`` (django_poolguard's engine) or ``django`` (Django's own pool); both use a
pool of ``SIZE`` connections. KIND is the fault thrown at it while threads churn checkouts:

- ``async``: ``THROWS`` asynchronous exceptions (``PyThreadState_SetAsyncExc``) into the churning
  threads at random moments: they land in poolguard's code, psycopg_pool's, psycopg's or Django's,
  as a Celery soft time limit or a gevent timeout would;
- ``kill``: every pooled session is ended with ``pg_terminate_backend``, several times;
- ``gc``: Django connection objects are dropped and garbage-collected inside a transaction.

Then it tries, for ``RECOVERY`` seconds, to hold every connection of the pool at once from fresh
threads (each running ``SELECT 1`` on it), and prints one JSON line (:class:`Outcome`): ``fine`` (all held), ``lost`` (the pool
times out: a slot is gone for good) or ``wedged`` (threads stuck inside the pool for good). When
all are held it also compares the pool's ``get_stats()``, poolguard's ledger and
``pg_stat_activity``. The process ends with ``os._exit``: a wedged pool could hang a normal exit.

:func:`run_storm` runs one in a subprocess; tests/engine/test_fault_injection.py and
tests/benchmarks/bench_fault_storm.py use it.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

SIZE = 3  # connections in the pool, and churning threads
THROWS = 400  # asynchronous exceptions per async storm, at most
STORM_SECONDS = 1.5  # s an async storm lasts, at most
KILLS = 5  # pg_terminate_backend rounds per kill storm
COLLECTED = 8  # wrappers dropped mid-transaction per gc storm
CHURN_SECONDS = 1.0  # churn before/while the kill and gc faults strike
RECOVERY = 8.0  # s allowed to get every connection back
POOL_TIMEOUT = 1.0
ENGINES = {"poolguard": "django_poolguard.backends.postgresql", "django": "django.db.backends.postgresql"}
KINDS = ("async", "kill", "gc")


class Interrupted(BaseException):
    """What the storm throws: a BaseException, like KeyboardInterrupt or a gevent Timeout."""


@dataclass
class Outcome:
    engine: str
    kind: str
    seed: int
    outcome: str = "fine"  # "fine", "lost" or "wedged"
    detail: str = ""
    thrown: int = 0
    landed: dict[str, int] = field(default_factory=dict)  # where the exceptions struck, by package
    stuck_threads: int = 0  # churning threads still inside the pool after the storm
    violations: int = 0  # poolguard's slot-check violations (repairs), in this process
    reclaimed: int = 0  # poolguard's reclaims (dead holders, collected wrappers)
    replaced: bool = False  # poolguard replaced the wedged pool
    agree: bool | None = None  # get_stats(), ledger and pg_stat_activity agree while all are held
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def configure(engine: str, application_name: str) -> None:
    import django
    from django.conf import settings

    from django_poolguard.testing import database_settings

    connection = database_settings("postgres")
    settings.configure(
        INSTALLED_APPS=["django_poolguard"] if engine == "poolguard" else [],
        USE_TZ=True,
        POOLGUARD={"MONITOR_INTERVAL": 0.2, "PUBLISH": None, "WORKLOADS": {}},
        DATABASES={
            "default": {
                "ENGINE": ENGINES[engine],
                **connection,
                "OPTIONS": {
                    "pool": {"min_size": 1, "max_size": SIZE, "timeout": POOL_TIMEOUT},
                    "application_name": application_name,
                },
            }
        },
        LOGGING_CONFIG=None,
    )
    django.setup()


def landed_in(exc: BaseException) -> str:
    """Whose code the exception struck: the innermost poolguard or psycopg_pool frame it passed
    through (it is raised a few bytecodes after the throw, often in a callee), else the package of
    the innermost frame."""
    tb = exc.__traceback__
    ours, innermost = None, "storm"
    while tb is not None:
        package = _package(tb.tb_frame.f_code.co_filename)
        if package in ("django_poolguard", "psycopg_pool"):
            ours = package
        innermost = package
        tb = tb.tb_next
    return ours or innermost


def _package(filename: str) -> str:
    for package in ("django_poolguard", "psycopg_pool", "psycopg", "django", "threading"):
        if f"/{package}/" in filename or filename.endswith(f"/{package}.py"):
            return package
    return "storm"


class Churn:
    """SIZE threads checking connections out and in as fast as they can, surviving anything thrown."""

    def __init__(self, outcome: Outcome) -> None:
        self.stop = threading.Event()
        self.outcome = outcome
        self.lock = threading.Lock()
        self.caught: dict[int, int] = {}  # thread ident -> exceptions it caught
        self.threads = [
            threading.Thread(target=self.run_and_close, name=f"churn-{i}", daemon=True) for i in range(SIZE)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def run(self) -> None:
        # Nested handlers: an exception that strikes inside a handler (or between two checkouts) is
        # caught by the next one out, so the thread churns on until told to stop.
        while not self.stop.is_set():
            try:
                while True:
                    try:
                        while True:
                            try:
                                if self.stop.is_set():
                                    return
                                self.checkout()
                            except BaseException as exc:  # whatever struck, keep churning
                                self.record(exc)
                    except BaseException:
                        pass
            except BaseException:
                pass

    def run_and_close(self) -> None:
        self.run()
        try:
            from django.db import connections

            connections["default"].close()
        except BaseException:
            pass

    def checkout(self) -> None:
        from django.db import connections

        connection = connections["default"]
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        finally:
            connection.close()

    def record(self, exc: BaseException) -> None:
        ident = threading.get_ident()
        self.caught[ident] = self.caught.get(ident, 0) + 1
        if isinstance(exc, Interrupted):
            where = landed_in(exc)
            with self.lock:
                self.outcome.landed[where] = self.outcome.landed.get(where, 0) + 1

    def finish(self, within: float = 5.0) -> int:
        self.stop.set()
        deadline = time.monotonic() + within
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return sum(1 for thread in self.threads if thread.is_alive())


def throw_storm(churn: Churn, rng: random.Random, outcome: Outcome) -> None:
    """Throw while a thread is inside a checkout or return (poolguard's or psycopg_pool's frames),
    and now and then anywhere: the exception lands within a few bytecodes of the frame seen. A
    thread gets its next exception once the last one landed (a pending one would be overwritten)."""
    set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    time.sleep(0.2)  # let the churn get going
    deadline = time.monotonic() + STORM_SECONDS
    pending: dict[int, tuple[int, float]] = {}  # thread ident -> (its catch count then, when thrown)
    while outcome.thrown < THROWS and time.monotonic() < deadline:
        thread = rng.choice(churn.threads)
        ident = thread.ident or 0
        last = pending.get(ident)
        if last is not None and churn.caught.get(ident, 0) == last[0] and time.monotonic() - last[1] < 1.0:
            time.sleep(0)
            continue
        frame = sys._current_frames().get(ident)
        if frame is not None and (in_checkout(frame, depth=1) or rng.random() < 0.03):
            if set_async_exc(ctypes.c_ulong(ident), ctypes.py_object(Interrupted)) == 1:
                outcome.thrown += 1
                pending[ident] = (churn.caught.get(ident, 0), time.monotonic())
        time.sleep(0)


def in_checkout(frame: Any, depth: int = 4) -> bool:
    """The thread runs poolguard's or psycopg_pool's code (within ``depth`` frames of the top)."""
    for _ in range(depth):
        if frame is None:
            return False
        filename = frame.f_code.co_filename
        if "/psycopg_pool/" in filename or "/django_poolguard/" in filename:
            return True
        frame = frame.f_back
    return False


def side_connection() -> Any:
    import psycopg
    from django.db import connections

    params = connections["default"].get_connection_params()
    params.pop("application_name", None)
    params.pop("options", None)
    return psycopg.connect(**{**params, "autocommit": True, "application_name": "fault-storm-side"})


def kill_storm(application_name: str, rng: random.Random) -> None:
    with side_connection() as side:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.05, 0.25))
            side.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                [application_name],
            )


def gc_storm(rng: random.Random) -> None:
    for _ in range(COLLECTED):
        drop_wrapper_in_transaction()
        gc.collect()
        time.sleep(rng.uniform(0.0, 0.1))


def drop_wrapper_in_transaction() -> None:
    """A Django connection object that goes away inside a transaction, never closed."""
    from django.db import connections

    wrapper = connections.create_connection("default")
    try:
        wrapper.set_autocommit(False)  # BEGIN on the next query: the wrapper dies in a transaction
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        pass


def hold_everything(outcome: Outcome, application_name: str) -> None:
    """Hold SIZE connections at once from fresh threads, retrying until RECOVERY runs out."""
    deadline = time.monotonic() + RECOVERY
    hung = 0
    while True:
        held = threading.Barrier(SIZE + 1)
        release = threading.Event()
        results: list[str] = []

        def hold(
            held: threading.Barrier = held, release: threading.Event = release, results: list[str] = results
        ) -> None:
            from django.db import connections

            try:
                with connections["default"].cursor() as cursor:
                    cursor.execute("SELECT 1")  # held and working: a dead session does not count
                results.append("held")
                held.wait(POOL_TIMEOUT + 5)
                release.wait(30)
            except BaseException as exc:
                results.append(type(exc).__name__)
                held.abort()
            finally:
                try:
                    connections["default"].close()
                except BaseException:
                    pass

        threads = [threading.Thread(target=hold, daemon=True) for _ in range(SIZE)]
        for thread in threads:
            thread.start()
        try:
            held.wait(POOL_TIMEOUT + 3)
            all_held = True
        except threading.BrokenBarrierError:
            all_held = False
        if all_held:
            outcome.agree, outcome.counts = agreement(application_name)
            release.set()
            for thread in threads:
                thread.join(5)
            return
        release.set()
        for thread in threads:
            thread.join(2)
        hung = sum(1 for thread in threads if thread.is_alive())
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    outcome.outcome = "wedged" if hung or outcome.stuck_threads else "lost"
    outcome.detail = f"{hung} holder thread(s) hung, {outcome.stuck_threads} churn thread(s) stuck"
    try:
        from django.db import connections

        pool = connections["default"].pool
        outcome.counts = {k: v for k, v in pool.get_stats().items() if k.startswith("pool")}
        ledger = getattr(pool, "ledger", None)
        if ledger is not None:
            outcome.counts["ledger"] = len(ledger)
            outcome.detail += "; held by " + ", ".join(
                f"{c.holder} (alive {c.alive}, {c.held:.1f} s)" for c in ledger.checkouts()
            )
    except Exception as exc:
        outcome.detail += f"; no pool state: {exc!r}"


def agreement(application_name: str) -> tuple[bool, dict[str, int]]:
    """While SIZE connections are held: the pool, the ledger and the server tell the same story."""
    from django.db import connections

    pool = connections["default"].pool
    deadline = time.monotonic() + 3.0
    while True:
        gc.collect()  # a lost connection still referenced by a cycle keeps its session
        stats = pool.get_stats()
        with side_connection() as side:
            sessions = side.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [application_name]
            ).fetchone()[0]
        counts = {
            "pool_size": stats.get("pool_size", 0),
            "pool_available": stats.get("pool_available", 0),
            "sessions": sessions,
        }
        ledger = getattr(pool, "ledger", None)
        if ledger is not None:
            counts["ledger"] = len(ledger)
        agree = (
            counts["pool_size"] == SIZE
            and counts["pool_available"] == 0
            and sessions == SIZE
            and counts.get("ledger", SIZE) == SIZE
        )
        if agree or time.monotonic() >= deadline:
            return agree, counts
        time.sleep(0.1)


def main() -> None:
    sys.setswitchinterval(0.0002)  # hand the GIL over often, so thrown exceptions land promptly
    engine, kind, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    application_name = f"fault-storm:{engine}:{os.getpid()}"
    configure(engine, application_name)
    outcome = Outcome(engine=engine, kind=kind, seed=seed)
    rng = random.Random(seed)
    from django.db import connections

    connections["default"].ensure_connection()  # the pool exists before the storm
    first_pool = connections["default"].pool
    connections["default"].close()
    started = time.monotonic()
    churn = Churn(outcome)
    churn.start()
    if kind == "async":
        throw_storm(churn, rng, outcome)
    elif kind == "kill":
        kill_storm(application_name, rng)
    elif kind == "gc":
        gc_storm(rng)
    time.sleep(max(0.0, CHURN_SECONDS - (time.monotonic() - started)))
    outcome.stuck_threads = churn.finish()
    hold_everything(outcome, application_name)
    if engine == "poolguard":
        from django_poolguard.engine.pool import get_pool

        pools = {id(pool): pool for pool in (first_pool, get_pool("default")) if pool is not None}
        outcome.violations = sum(
            getattr(pool.ledger, "invariant_violations_total", 0) for pool in pools.values()
        )
        outcome.reclaimed = sum(pool.ledger.reclaimed_total for pool in pools.values())
        outcome.replaced = len(pools) > 1
    outcome.seconds = round(time.monotonic() - started, 2)
    sys.stdout.write(json.dumps(asdict(outcome)) + "\n")
    sys.stdout.flush()
    os._exit(0)


def run_storm(engine: str, kind: str, seed: int, timeout: float = 60.0) -> Outcome:
    """Run one storm in a fresh process and return its outcome."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run(
        [sys.executable, "-m", "tests.fault_storm", engine, kind, str(seed)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"storm {engine}/{kind}/{seed} printed no outcome:\n{done.stdout}\n{done.stderr}")
    return Outcome(**json.loads(lines[-1]))


if __name__ == "__main__":
    main()
