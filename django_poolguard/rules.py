"""What each setting accepts, as data: one rule per setting, used both by the system checks and
by the code that reads the settings, so a bad value is described the same way in both places.

A rule's :meth:`~Rule.problem` returns ``None`` for a good value, else the check id and the
reason; :class:`Finding` adds where the value was found and the fix. The tables that give
each setting its rule and default live in :mod:`django_poolguard.conf`.
"""

from __future__ import annotations

import difflib
import math
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured

E003 = "django_poolguard.E003"  # OPTIONS["pool"]
E004 = "django_poolguard.E004"  # a number out of range
E005 = "django_poolguard.E005"  # not a dict, unknown key
E006 = "django_poolguard.E006"  # POOLGUARD["WORKLOADS"]
E008 = "django_poolguard.E008"  # POOLGUARD["PUBLISH"], PUBLISH_CACHE
E010 = "django_poolguard.E010"  # POOLGUARD["DEPLOYMENT"]
E011 = "django_poolguard.E011"  # a switch that is not True/False
E012 = "django_poolguard.E012"  # a timeout PostgreSQL cannot take
E013 = "django_poolguard.E013"  # a workload that is not a name
E015 = "django_poolguard.E015"  # OPTIONS["poolguard"]["timeouts_via"]
E017 = "django_poolguard.E017"  # priorities: OPTIONS["poolguard"]["reserve"], POOLGUARD["PRIORITIES"]
E018 = "django_poolguard.E018"  # fleet budget: OPTIONS["poolguard"]["fleet_budget"], lease_store, lease_cache

#: The priority classes, best first (engine/priority.py ranks them by this order).
PRIORITY_NAMES = ("critical", "normal", "low")

#: PostgreSQL's timeouts are integer GUCs in milliseconds: at most INT_MAX (about 24.8 days).
PG_MAX_MILLISECONDS = 2**31 - 1
#: The longest a thread can wait; psycopg_pool and the watchdog wait with these values.
MAX_SECONDS = threading.TIMEOUT_MAX
#: ``<workload>:<alias>:<host>:<pid>`` is parsed back from ``application_name``: no ``:``, ASCII only.
WORKLOAD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
REPR_CHARS = 60


def shown(value: Any) -> str:
    """``repr(value)``, cut to :data:`REPR_CHARS` so a huge value does not flood a message."""
    try:
        text = repr(value)
    except Exception:  # a user object with a broken __repr__ still gets named
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= REPR_CHARS else text[: REPR_CHARS - 3] + "..."


def real(value: Any) -> float | None:
    """``value`` as a float when it is an int or float (not a bool, not NaN); an int too big for
    a float is infinite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return math.inf
    return None if math.isnan(number) else number


def pg_milliseconds(seconds: float) -> int:
    """Seconds as the integer milliseconds PostgreSQL's timeouts take (``0`` would mean "off")."""
    return round(seconds * 1000)


@dataclass(frozen=True)
class Problem:
    check_id: str
    reason: str  # "it must be a positive number of seconds"


class Rule:
    """What one setting accepts."""

    check_id = E004
    expects = "a valid value"
    optional = False  # None is accepted (and means "not set")

    def problem(self, value: Any) -> Problem | None:
        if value is None and self.optional:
            return None
        return None if self.accepts(value) else Problem(self.check_id, f"it must be {self.expects}")

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class Seconds(Rule):
    """A positive, finite number of seconds a thread can wait for."""

    check_id: str = E004
    optional: bool = False
    expects: str = "a positive number of seconds"

    def problem(self, value: Any) -> Problem | None:
        if value is None and self.optional:
            return None
        number = real(value)
        if number is None or number <= 0:
            return Problem(self.check_id, f"it must be {self.expects}")
        if number > MAX_SECONDS:
            return Problem(self.check_id, f"it must be at most {MAX_SECONDS:.0f} seconds")
        return None


@dataclass(frozen=True)
class PgTimeout(Rule):
    """Seconds sent to PostgreSQL as whole milliseconds: 1 ms to INT_MAX ms."""

    check_id: str = E004
    optional: bool = True
    expects: str = "a positive number of seconds"

    def problem(self, value: Any) -> Problem | None:
        if value is None:
            return None
        number = real(value)
        if number is None or number <= 0:
            return Problem(self.check_id, f"it must be {self.expects}")
        # Seconds past INT_MAX are certainly too long, and round() would overflow on infinity.
        if number > PG_MAX_MILLISECONDS or pg_milliseconds(number) > PG_MAX_MILLISECONDS:
            return Problem(
                E012,
                f"PostgreSQL takes at most {PG_MAX_MILLISECONDS / 1000} s ({PG_MAX_MILLISECONDS} ms): "
                "every connection would be refused",
            )
        if pg_milliseconds(number) < 1:
            return Problem(E012, "it rounds to 0 ms, which PostgreSQL reads as no timeout at all")
        return None


@dataclass(frozen=True)
class Whole(Rule):
    minimum: int = 0
    check_id: str = E004
    optional: bool = False

    @property
    def expects(self) -> str:  # type: ignore[override]
        return f"a whole number >= {self.minimum}"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= self.minimum


@dataclass(frozen=True)
class Fraction(Rule):
    check_id: str = E004
    expects: str = "a fraction in (0, 1]"

    def accepts(self, value: Any) -> bool:
        number = real(value)
        return number is not None and 0 < number <= 1


@dataclass(frozen=True)
class Switch(Rule):
    check_id: str = E011
    expects: str = "True or False"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)


@dataclass(frozen=True)
class OneOf(Rule):
    choices: tuple[Any, ...] = ()
    check_id: str = E004

    @property
    def expects(self) -> str:  # type: ignore[override]
        return "one of " + ", ".join(shown(choice) for choice in self.choices)

    def accepts(self, value: Any) -> bool:
        # By type and value: 0 == False and 1 == True must not pass for a choice.
        return any(type(value) is type(choice) and value == choice for choice in self.choices)


@dataclass(frozen=True)
class Text(Rule):
    check_id: str = E004
    expects: str = "a non-empty string"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and bool(value)


@dataclass(frozen=True)
class WorkloadName(Rule):
    check_id: str = E013
    optional: bool = False
    expects: str = "a workload name: 1 to 32 ASCII letters, digits, '_', '-' or '.', starting with a letter, digit or '_'"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and WORKLOAD_NAME.fullmatch(value) is not None


@dataclass(frozen=True)
class Mapping(Rule):
    check_id: str = E004
    expects: str = "a dict"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, dict)


@dataclass(frozen=True)
class Function(Rule):
    check_id: str = E004
    optional: bool = True
    expects: str = "a callable"

    def accepts(self, value: Any) -> bool:
        return callable(value)


@dataclass(frozen=True)
class FleetBudget(Rule):
    """Connections for the alias's workload across every process: a whole number >= 1, or "auto"."""

    check_id: str = E018
    optional: bool = True
    expects: str = 'a whole number >= 1 or "auto"'

    def accepts(self, value: Any) -> bool:
        if value == "auto" and isinstance(value, str):
            return True
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class Reserve(Rule):
    """Connections kept back per class: ``{"critical": 2, "normal": 1}`` (low has none to keep)."""

    check_id: str = E017
    optional: bool = True
    expects: str = (
        'a dict such as {"critical": 2, "normal": 1}: whole numbers >= 0 for "critical" and "normal"'
    )

    def problem(self, value: Any) -> Problem | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            return Problem(self.check_id, f"it must be {self.expects}")
        for key, count in value.items():
            if key not in ("critical", "normal"):
                known = (
                    "low has nothing to reserve" if key == "low" else "the classes are critical, normal, low"
                )
                return Problem(
                    self.check_id, f"{shown(key)} is not a class that can reserve connections ({known})"
                )
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                return Problem(self.check_id, f"{key!r} has {shown(count)}; it must be a whole number >= 0")
        return None


@dataclass(frozen=True)
class Priorities(Rule):
    """``{"critical": ["checkout", "/api/pay/*"], "low": ["reports:*"]}``: class to route or task patterns."""

    check_id: str = E017
    expects: str = 'a dict of class ("critical", "normal", "low") to a list of URL names, paths or task names'

    def problem(self, value: Any) -> Problem | None:
        if not isinstance(value, dict):
            return Problem(self.check_id, f"it must be {self.expects}")
        for key, patterns in value.items():
            if key not in PRIORITY_NAMES:
                close = difflib.get_close_matches(str(key), PRIORITY_NAMES, n=1)
                hint = f"did you mean {close[0]!r}?" if close else "the classes are critical, normal, low"
                return Problem(self.check_id, f"{shown(key)} is not a priority class ({hint})")
            if isinstance(patterns, str) or not isinstance(patterns, (list, tuple)):
                return Problem(self.check_id, f"{key!r} has {shown(patterns)}; it must be a list of patterns")
            for pattern in patterns:
                if not isinstance(pattern, str) or not pattern:
                    return Problem(
                        self.check_id,
                        f"{key!r} has the pattern {shown(pattern)}; it must be a non-empty string",
                    )
        return None


@dataclass(frozen=True)
class Setting:
    """One setting: its default, its rule, the fix to suggest and what leaving it out means."""

    default: Any
    rule: Rule
    fix: str = ""  # "Use a short timeout (e.g. 5)"; the rule's expectation when empty
    unset: str = ""  # "or remove the key for no timeout"; the default when empty

    @property
    def hint(self) -> str:
        fix = self.fix or f"Use {self.rule.expects}"
        unset = self.unset or f"or remove the key to use the default, {shown(self.default)}"
        return f"{fix} ({unset})."


@dataclass(frozen=True)
class Finding:
    """A bad value, where it was found and the fix: becomes a system check or an
    ``ImproperlyConfigured``, with the same words."""

    check_id: str
    setting: str  # "DATABASES['default']['OPTIONS']['poolguard']['leak_threshold']"
    value: Any
    reason: str
    hint: str
    #: Set when the finding is not about one value ("max_size=2 below min_size=5").
    text: str = ""

    @property
    def message(self) -> str:
        return self.text or f"{self.setting} is {shown(self.value)}; {self.reason}."

    def error(self) -> ImproperlyConfigured:
        return ImproperlyConfigured(f"{self.message} {self.hint} (system check {self.check_id})")


def find(where: str, key: str, value: Any, setting: Setting) -> Finding | None:
    """The finding for ``value`` of ``setting`` stored at ``where[key]``; ``None`` when it is good."""
    problem = setting.rule.problem(value)
    if problem is None:
        return None
    return Finding(problem.check_id, f"{where}[{key!r}]", value, problem.reason, setting.hint)


def unknown_keys(where: str, given: dict[Any, Any], known: Iterable[str], check_id: str) -> list[Finding]:
    """A finding for every key of ``given`` not in ``known``, with a "did you mean"."""
    known = list(known)
    out = []
    for key in given:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            suggestion = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(known)}"
            out.append(
                Finding(
                    check_id,
                    where,
                    key,
                    "",
                    f"Remove or rename it: {suggestion}",
                    text=f"{where} has an unknown key {shown(key)}.",
                )
            )
    return out


def not_a_dict(where: str, value: Any, check_id: str, example: str) -> Finding:
    return Finding(
        check_id,
        where,
        value,
        "",
        f"Use e.g. {example}.",
        text=f"{where} must be a dict, not {type(value).__name__}.",
    )
