"""The acquire stack's capture: whatever path led to the checkout, the first frame kept is the
first one outside the connection plumbing, and every frame above it follows in order. Every test
runs twice: with the C walk (the ``_frames`` extension) and with the pure-Python one."""

from __future__ import annotations

import sys
import threading
from typing import Any

import pytest

from django_poolguard.engine import stacks


@pytest.fixture(autouse=True, params=["c", "python"])
def walk_in(request: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "c":
        if not stacks.ACCELERATED:
            pytest.skip("the _frames extension was not built here")
    else:
        monkeypatch.setattr(stacks, "_c_after_hint", None)
        monkeypatch.setattr(stacks, "walk", stacks._walk)
    hints: dict[frozenset[int], int] = {}
    monkeypatch.setattr(stacks, "_last_inside_hint", hints)
    monkeypatch.setattr(stacks, "_hint_for", hints.get)
    return str(request.param)


def _plumbing_inner(depth: int) -> stacks.RawStack:
    return stacks.capture(1, depth, PLUMBING)


def _plumbing_middle(depth: int) -> stacks.RawStack:
    return _plumbing_inner(depth)


def _plumbing_outer(depth: int) -> stacks.RawStack:
    return _plumbing_middle(depth)


PLUMBING = frozenset(id(f.__code__) for f in (_plumbing_inner, _plumbing_middle, _plumbing_outer))


def _codes(raw: stacks.RawStack) -> list[object]:
    return list(raw[0::2])


def _expected_from(frame: object, depth: int) -> list[object]:
    """The reference: the codes of ``frame`` and its callers, walked plainly."""
    codes: list[object] = []
    while frame is not None and len(codes) < depth:
        codes.append(frame.f_code)  # type: ignore[attr-defined]
        frame = frame.f_back  # type: ignore[attr-defined]
    return codes


def view_via_long_path() -> tuple[stacks.RawStack, list[object]]:
    here = sys._getframe()
    return _plumbing_outer(20), _expected_from(here, 20)


def view_via_short_path() -> tuple[stacks.RawStack, list[object]]:
    here = sys._getframe()
    return _plumbing_inner(20), _expected_from(here, 20)


def view_nested_deeper() -> tuple[stacks.RawStack, list[object]]:
    return view_via_long_path()


def test_the_stack_starts_at_the_first_frame_outside_the_plumbing_whatever_the_path():
    # Alternate paths with 3, 1 and 3 plumbing frames at two depths: the remembered depth of the
    # plumbing's end is a hint only; a path of another length must never cost an application frame.
    for view in [view_via_long_path, view_via_short_path, view_nested_deeper] * 3:
        raw, expected = view()
        assert _codes(raw)[0] is expected[0], view.__name__
        assert _codes(raw) == expected
        assert all(isinstance(offset, int) for offset in raw[1::2])


def test_the_innermost_frame_names_the_line_that_took_the_connection():
    raw, _ = view_via_short_path()
    path, lineno, function, is_app = stacks.frames(raw)[0]
    assert function == "view_via_short_path"
    assert path.endswith("test_stacks.py")
    assert is_app
    source = open(__file__).read().splitlines()[lineno - 1]
    assert "_plumbing_inner(20)" in source


def test_depth_bounds_the_frames_kept():
    assert len(_plumbing_outer(3)) == 2 * 3
    assert _plumbing_outer(0) == ()
    assert _plumbing_outer(-5) == ()


def _recurse(levels: int, depth: int) -> tuple[stacks.RawStack, list[object]]:
    if levels:
        return _recurse(levels - 1, depth)
    return _plumbing_outer(depth), _expected_from(sys._getframe(), depth)


def test_a_stack_deeper_than_the_walks_buffer_is_kept_whole_and_in_order():
    # The C walk keeps 64 frames on its own stack and the rest in a list: both, joined in order.
    for depth in (63, 64, 65, 150):
        raw, expected = _recurse(120, depth)
        assert len(expected) == depth
        assert _codes(raw) == expected
        assert all(isinstance(offset, int) for offset in raw[1::2])


def test_any_set_of_plumbing_codes_gives_the_same_stack_however_many_are_in_use():
    # The C capture remembers the last few sets it was given as addresses; more sets than it
    # remembers and a set with something else in it take a path of their own.
    def capture_with(codes: Any) -> stacks.RawStack:
        def inner() -> stacks.RawStack:
            return stacks.capture(1, 20, codes)

        def middle() -> stacks.RawStack:
            return inner()

        return middle()

    def taker(codes: Any) -> tuple[stacks.RawStack, list[object]]:
        return capture_with(codes), _expected_from(sys._getframe(), 20)

    codes = {id(capture_with.__code__)} | {
        id(const) for const in capture_with.__code__.co_consts if hasattr(const, "co_code")
    }
    sets = [frozenset(codes | {n}) for n in range(7)] + [frozenset(codes | {"not an id", -1})]
    for _ in range(3):
        for skip in sets:
            raw, expected = taker(skip)
            assert _codes(raw)[0] is taker.__code__
            assert _codes(raw) == expected


def test_a_plumbing_only_stack_keeps_what_is_there():
    # A thread whose whole stack is plumbing: the capture ends where the stack does.
    result: list[stacks.RawStack] = []
    thread = threading.Thread(target=lambda: result.append(_plumbing_outer(200)))
    thread.start()
    thread.join()
    codes = _codes(result[0])
    assert codes and all(id(code) not in PLUMBING for code in codes)
    assert codes[-1].co_name == "_bootstrap"  # type: ignore[attr-defined]


def test_without_plumbing_codes_the_stack_starts_at_the_caller():
    def holder() -> stacks.RawStack:
        return stacks.capture(0, 5)

    assert _codes(holder())[0] is holder.__code__


def test_another_threads_stack_is_walked_from_its_frame():
    started, release = threading.Event(), threading.Event()

    def holder() -> None:
        started.set()
        release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    started.wait(5)
    try:
        frame = sys._current_frames()[thread.ident]  # type: ignore[index]
        raw = stacks.capture_frame(frame, 20)
        assert _codes(raw) == _expected_from(frame, 20)
        assert [f[2] for f in stacks.frames(raw)][-1] == "Thread._bootstrap"
    finally:
        release.set()
        thread.join()


def test_poolguards_own_frames_are_never_the_applications():
    from django_poolguard import middleware
    from django_poolguard.backends.postgresql import base

    for function in (base.DatabaseWrapper.get_connection_params, middleware.PoolGuardMiddleware.__call__):
        path, _, is_app = stacks._info(function.__code__)
        assert not is_app, path
    assert stacks._info(test_poolguards_own_frames_are_never_the_applications.__code__)[2]
