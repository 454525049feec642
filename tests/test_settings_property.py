"""Whatever the settings hold, ``manage.py check`` answers with named checks, never a traceback,
and a process with those settings either runs or stops with the words of a check."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from django.conf import settings
from django.core.checks import ERROR, run_checks
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from django_poolguard.conf import (
    ALIAS_SETTINGS,
    GLOBAL_SETTINGS,
    POOL_ARGUMENTS,
    AliasConfig,
    guard_settings,
    pool_findings,
)
from django_poolguard.engine.pool import GuardedPool

pytestmark = pytest.mark.filterwarnings("ignore:Overriding setting DATABASES:UserWarning")

# What a settings file (or one loaded from JSON/YAML/env) can hold.
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)


def settings_dicts(known: Any) -> st.SearchStrategy[Any]:
    """Dicts keyed mostly by real setting names (so values reach the rules), sometimes by typos,
    and sometimes no dict at all."""
    keys = st.sampled_from(sorted(known)) | st.text(max_size=12)
    return st.dictionaries(keys, values, max_size=5) | values


def _names_a_setting(message: Any) -> bool:
    return message.msg.startswith(("POOLGUARD", "DATABASES['default']")) and bool(message.hint)


@hypothesis_settings(max_examples=200, deadline=None, database=None)
@given(
    poolguard=settings_dicts(GLOBAL_SETTINGS),
    guard=settings_dicts(ALIAS_SETTINGS),
    pool=settings_dicts(POOL_ARGUMENTS) | st.just(True),
)
def test_any_settings_give_named_checks_and_never_a_traceback(poolguard: Any, guard: Any, pool: Any) -> None:
    databases = copy.deepcopy(settings.DATABASES)
    databases["default"]["OPTIONS"] = {"pool": pool, "poolguard": guard}
    with override_settings(DATABASES=databases, POOLGUARD=poolguard):
        messages = [m for m in run_checks() if m.id and m.id.startswith("django_poolguard.")]
        unnamed = [m.msg for m in messages if not _names_a_setting(m)]
        assert not unnamed, unnamed
        errors = [(m.id, m.msg) for m in messages if m.level >= ERROR]

        # Every setting the process reads is usable: reported ones fall back to their default.
        for name, setting in GLOBAL_SETTINGS.items():
            assert setting.rule.problem(getattr(guard_settings, name)) is None, name

        # The alias either parses, or stops with the words of a check that named its options.
        try:
            AliasConfig.from_settings_dict("default", databases["default"])
        except ImproperlyConfigured as exc:
            assert any("['OPTIONS']['poolguard']" in msg and msg in str(exc) for _, msg in errors), exc
        else:
            reported = [
                m for i, m in errors if "['OPTIONS']['poolguard']" in m and i != "django_poolguard.E014"
            ]
            assert not reported, reported

        # The pool arguments psycopg_pool gets are ones it takes, or a check named them.
        if pool and not pool_findings("default", pool):
            assert not [m for _, m in errors if "['OPTIONS']['pool']" in m]
            options = {} if pool is True else pool
            GuardedPool(kwargs={}, open=False, config=PLAIN, **options)  # raises nothing
        elif pool:
            assert any("['OPTIONS']['pool']" in m for _, m in errors)


PLAIN = AliasConfig("default", "web", 30.0, 10.0, None, None)
