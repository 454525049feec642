"""The fleet's pool-time profile: every process's ``top`` rows of an alias summed per label, the
figures an engineer reads (database share, queries per checkout, acquire waits) and the findings.

Processes publish cumulative rows (:class:`~django_poolguard.engine.profile.TopRow`) whose
distributions are fixed-bucket histograms, so summing them over processes is exact; percentiles
are read from the summed buckets (the bucket's upper bound, so "p95 <= x").
"""

from __future__ import annotations

from typing import TypedDict

from django_poolguard.conf import guard_settings
from django_poolguard.engine.profile import OTHER, QUERY_BOUNDS, WAIT_BOUNDS, TopRow, busy_ratio
from django_poolguard.fleet.schema import ProcessSnapshot

IDLE, N_PLUS_ONE, RETRIES = "holds connections idle", "N+1", "retries after timeouts"


class Holder(TypedDict):
    """One row of the "Top holders" table (``poolstats --top``, the admin, ``--json``)."""

    label: str
    checkouts: int
    held_s: float
    db_s: float
    db_share: float | None
    idle_per_checkout_s: float
    tx_s: float
    queries_mean: float
    queries_p95: int
    queries_max: int
    acquire_p50_ms: float
    acquire_p95_ms: float
    retries: int
    origin: str | None


class ProfileFinding(TypedDict):
    kind: str  # IDLE, N_PLUS_ONE or RETRIES
    label: str
    where: str | None  # the place in the code: where holders wait, the repeated query, the checkout
    text: str


class AliasProfile(TypedDict):
    """The profile's keys of one alias over the fleet (``poolstats --json`` ``aliases`` values)."""

    top: list[Holder]
    findings: list[ProfileFinding]
    busy_ratio: float | None  # the database's share of the pool-seconds
    pool_seconds: float


def merge(row_lists: list[list[TopRow]], limit: int | None = None) -> list[TopRow]:
    """Rows of several processes summed per label, ranked by pool-seconds: the first ``limit``
    (default ``PROFILE_TOP``) and then ``other`` with the rest."""
    limit = int(guard_settings.PROFILE_TOP) if limit is None else limit
    summed: dict[str, TopRow] = {}
    for rows in row_lists:
        for row in rows:
            total = summed.get(row["label"])
            if total is None:
                summed[row["label"]] = _copy(row)
            else:
                _add(total, row)
    ranked = sorted((r for r in summed.values() if r["label"] != OTHER), key=lambda r: -r["held_s"])
    other = summed.get(OTHER)
    for row in ranked[limit:]:
        if other is None:
            other = {**_copy(row), "label": OTHER}
        else:
            _add(other, row)
    return ranked[:limit] + ([other] if other is not None else [])


def _copy(row: TopRow) -> TopRow:
    return {**row, "query_hist": list(row["query_hist"]), "wait_hist": list(row["wait_hist"])}  # type: ignore[typeddict-item]


def _add(total: TopRow, row: TopRow) -> None:
    for key in ("checkouts", "queries", "retries", "n1_checkouts"):
        total[key] += row[key]  # type: ignore[literal-required]
    for key in ("held_s", "db_s", "tx_s"):
        total[key] = round(total[key] + row[key], 6)  # type: ignore[literal-required]
    total["queries_max"] = max(total["queries_max"], row["queries_max"])
    total["query_hist"] = [a + b for a, b in zip(total["query_hist"], row["query_hist"], strict=True)]
    total["wait_hist"] = [a + b for a, b in zip(total["wait_hist"], row["wait_hist"], strict=True)]
    if row["n1_queries"] > total["n1_queries"]:
        for key in ("n1_queries", "n1_count", "n1_shape", "n1_site"):
            total[key] = row[key]  # type: ignore[literal-required]
    if row["idle_samples"] > total["idle_samples"]:
        total["idle_site"], total["idle_samples"] = row["idle_site"], row["idle_samples"]
    total["origin"] = total["origin"] or row["origin"]


def percentile(hist: list[int], bounds: tuple[float, ...], p: float, top: float) -> float:
    """The upper bound of the bucket holding the ``p`` quantile; ``top`` for the last bucket."""
    count = sum(hist)
    if not count:
        return 0.0
    rank = max(1, -(-count * p // 100))  # nearest rank
    seen = 0
    for index, n in enumerate(hist):
        seen += n
        if seen >= rank:
            return min(float(bounds[index]), top) if index < len(bounds) else top
    return top  # pragma: no cover


def holders(rows: list[TopRow]) -> list[Holder]:
    out: list[Holder] = []
    for row in rows:
        checkouts = row["checkouts"] or 1
        out.append(
            {
                "label": row["label"],
                "checkouts": row["checkouts"],
                "held_s": round(row["held_s"], 3),
                "db_s": round(row["db_s"], 3),
                "db_share": busy_ratio(row["held_s"], row["db_s"]),
                "idle_per_checkout_s": round(max(row["held_s"] - row["db_s"], 0.0) / checkouts, 4),
                "tx_s": round(row["tx_s"], 3),
                "queries_mean": round(row["queries"] / checkouts, 1),
                "queries_p95": int(percentile(row["query_hist"], QUERY_BOUNDS, 95, row["queries_max"])),
                "queries_max": row["queries_max"],
                "acquire_p50_ms": round(
                    percentile(row["wait_hist"], WAIT_BOUNDS, 50, WAIT_BOUNDS[-1]) * 1000, 3
                ),
                "acquire_p95_ms": round(
                    percentile(row["wait_hist"], WAIT_BOUNDS, 95, WAIT_BOUNDS[-1]) * 1000, 3
                ),
                "retries": row["retries"],
                "origin": row["origin"],
            }
        )
    return out


def findings(rows: list[TopRow]) -> list[ProfileFinding]:
    """What the profile says is wrong, worst first within each kind: labels holding connections
    idle, N+1 patterns, and checkouts retried after an exhausted pool."""
    share, idle_seconds = float(guard_settings.PROFILE_IDLE_SHARE), float(guard_settings.PROFILE_IDLE_SECONDS)
    out: list[ProfileFinding] = []
    named = [row for row in rows if row["label"] != OTHER and row["checkouts"]]
    for row in sorted(named, key=lambda r: -(r["held_s"] - r["db_s"])):
        idle = max(row["held_s"] - row["db_s"], 0.0) / row["checkouts"]
        ratio = busy_ratio(row["held_s"], row["db_s"]) or 0.0
        if ratio < share and idle >= idle_seconds:
            where = row["idle_site"] or row["origin"]
            out.append(
                {
                    "kind": IDLE,
                    "label": row["label"],
                    "where": where,
                    "text": f"{row['label']} holds connections idle: the database works {ratio:.0%} of the "
                    f"{row['held_s']:.1f} pool-seconds it held over {row['checkouts']} checkouts "
                    f"({idle * 1000:.0f} ms idle per checkout)",
                }
            )
    for row in sorted(named, key=lambda r: -r["n1_queries"]):
        if row["n1_checkouts"]:
            out.append(
                {
                    "kind": N_PLUS_ONE,
                    "label": row["label"],
                    "where": row["n1_site"],
                    "text": f"{row['label']} ran up to {row['n1_queries']} queries in one checkout "
                    f"({row['n1_checkouts']} of {row['checkouts']} checkouts past "
                    f"{guard_settings.PROFILE_N_PLUS_ONE}); repeated {row['n1_count']} times: {row['n1_shape']}",
                }
            )
    for row in sorted(named, key=lambda r: -r["retries"]):
        if row["retries"]:
            out.append(
                {
                    "kind": RETRIES,
                    "label": row["label"],
                    "where": row["origin"],
                    "text": f"{row['label']} took a connection again after its pool was exhausted "
                    f"{row['retries']} time{'' if row['retries'] == 1 else 's'}: retries add load to a full pool",
                }
            )
    return out


def alias_profile(processes: list[ProcessSnapshot], alias: str) -> AliasProfile | None:
    """``top``, ``findings`` and ``busy_ratio`` of ``alias`` over every process that published
    a profile for it; ``None`` when none did."""
    row_lists: list[list[TopRow]] = []
    for process in processes:
        rows = process["aliases"][alias].get("top") if alias in process["aliases"] else None
        if rows is not None:
            row_lists.append(rows)
    if not row_lists:
        return None
    every = merge(row_lists, limit=10**9)
    rows = merge([every])
    held = sum(r["held_s"] for r in every)
    return {
        "top": holders(rows),
        "findings": findings(every),
        "busy_ratio": busy_ratio(held, sum(r["db_s"] for r in every)),
        "pool_seconds": round(held, 3),
    }
