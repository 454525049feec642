"""The optional C frame walk (``django_poolguard/engine/_frames.c``): built wherever it can be,
the same result as the Python walk, and Python's own errors for bad input, never a crash."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from typing import Any

import pytest

from django_poolguard.engine import stacks

PLUMBING = frozenset({id(stacks.capture.__code__)})


def test_the_c_walk_matches_pythons_and_takes_bad_input_without_crashing():
    if not stacks.ACCELERATED:
        pytest.skip("the _frames extension was not built here")
    from django_poolguard.engine import _frames

    here = sys._getframe()
    caller = here.f_back  # stands still while both walk it
    for depth in (0, 1, 3, 50):
        assert _frames.walk(caller, depth) == stacks._walk(caller, depth)
    assert _frames.walk(None, 5) == () and _frames.walk(here, -1) == ()
    with pytest.raises(AttributeError):
        _frames.walk(object(), 3)  # not a frame: Python's own error, no crash
    with pytest.raises(TypeError):
        _frames.walk(here, "3")
    with pytest.raises(TypeError):
        _frames.walk(here)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _frames.after_hint(1, 5)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _frames.after_hint("1", 5, PLUMBING)
    with pytest.raises(TypeError):
        _frames.after_hint(1, 5, [1, 2])  # a set of code ids, not a list
    assert _frames.after_hint(10**6, 5, PLUMBING) is None  # deeper than the stack
    assert _frames.after_hint(0, 5, PLUMBING) is None  # the frame there is not plumbing


def _nested(levels: int, work: Any) -> Any:
    return _nested(levels - 1, work) if levels else work()


def test_the_c_walk_keeps_no_reference_it_does_not_return():
    # Every code object and offset the walk takes goes into the tuple it returns, or is let go:
    # after thousands of walks nothing has gained a reference (a leak here grows with traffic).
    if not stacks.ACCELERATED:
        pytest.skip("the _frames extension was not built here")
    from django_poolguard.engine import _frames

    def plumbing() -> Any:
        return _frames.after_hint(0, 200, codes)

    def plumbing_in_a_set() -> Any:  # a mutable set: looked up as Python would, not remembered
        return _frames.after_hint(0, 200, set(codes))

    codes = frozenset({id(plumbing.__code__), id(plumbing_in_a_set.__code__)})

    def walk_all() -> tuple[int, int]:
        here = sys._getframe()
        before = sys.getrefcount(_nested.__code__), sys.getrefcount(walk_all.__code__)
        for _ in range(2000):
            assert _frames.walk(here, 10)[0] is walk_all.__code__  # within the walk's own buffer
            assert len(_frames.walk(here, 200)) > 2 * 64  # past it
            assert plumbing()[0] is walk_all.__code__
            assert plumbing_in_a_set()[0] is walk_all.__code__
        after = sys.getrefcount(_nested.__code__), sys.getrefcount(walk_all.__code__)
        return before[0] - after[0], before[1] - after[1]

    assert _nested(100, walk_all) == (0, 0)


def test_the_c_walk_is_built_wherever_a_compiler_is():
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}): the pure-Python walk is the one there is")
    headers = os.path.join(sysconfig.get_paths()["include"], "Python.h")
    if not os.path.exists(headers):
        pytest.skip(f"no {headers} (python3-dev): the pure-Python walk is the one there is")
    assert stacks.ACCELERATED, "the _frames extension failed to build (see setup.py): stacks cost more"
