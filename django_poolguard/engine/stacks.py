"""Acquire stacks: captured cheaply on every checkout, formatted only when someone looks.

Capture keeps a flat ``(code, offset, code, offset, ...)`` tuple: a frame walk with no
string work; even line numbers are resolved only when the stack is formatted (``f_lineno``
costs a line-table scan per frame, ``f_lasti`` does not). The walk runs in C where the
optional ``_frames`` extension was built (``setup.py``), else in Python, with the same result.
Formatting puts the application's frames first (anything outside the standard library,
site-packages and poolguard itself), innermost first, so the first line is the place in
*your* code that took the connection.
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from collections.abc import Callable, Iterator
from types import CodeType, FrameType

# Flat pairs: code object, then the byte offset of its last instruction.
RawStack = tuple[CodeType | int, ...]

_c_after_hint: Callable[[int, int, frozenset[int]], RawStack | None] | None
_c_walk: Callable[[FrameType | None, int], RawStack] | None
try:  # the optional C walk (setup.py builds it where it can)
    from django_poolguard.engine._frames import after_hint as _c_after_hint
    from django_poolguard.engine._frames import walk as _c_walk
except ImportError:  # no compiler at install time, or another interpreter
    _c_after_hint = _c_walk = None
#: Whether stacks are walked in C (the ``_frames`` extension was built).
ACCELERATED = _c_walk is not None

# The whole package (this file is in its engine/): poolguard's frames are never the application's.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _library_prefixes() -> tuple[str, ...]:
    paths = {_PACKAGE_DIR + os.sep}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            paths.add(os.path.abspath(path) + os.sep)
    for entry in sys.path:
        if entry.endswith(("site-packages", "dist-packages")):
            paths.add(os.path.abspath(entry) + os.sep)
    return tuple(sorted(paths, key=len, reverse=True))


_LIBRARY_PREFIXES: tuple[str, ...] | None = None
# Formatting cache: one entry per code object ever formatted, bounded by the code base's size.
_code_info: dict[CodeType, tuple[str, str, bool]] = {}


# Depth (as sys._getframe counts it from capture()) of the last frame inside skip_codes: the
# connection plumbing above a checkout is the same call after call, so one probe usually finds it.
_last_inside_hint: dict[frozenset[int], int] = {}
_hint_for = _last_inside_hint.get


def capture(skip: int = 1, depth: int = 20, skip_codes: frozenset[int] = frozenset()) -> RawStack:
    """The caller's stack (minus ``skip`` frames and the frames right above it whose code
    object's ``id`` is in ``skip_codes``), innermost first, at most ``depth`` frames.

    Code objects are matched by ``id``: hashing a code object hashes its constants, every
    time. ``sys._getframe(n)`` walks in C without creating frame objects for the frames it
    passes, so probing for the end of the skipped frames is cheaper than stepping over them.
    Every line here runs on every checkout.
    """
    if skip_codes:
        hint = _hint_for(skip_codes)
        if hint is not None:
            stack = (
                _c_after_hint(hint, depth, skip_codes)
                if _c_after_hint is not None
                else _after_hint(hint + 1, depth, skip_codes)  # + 1: its own frame
            )
            if stack is not None:
                return stack
    # No hint yet, or a path with more or fewer skipped frames than the last: step over them.
    try:
        frame: FrameType | None = sys._getframe(skip + 1)
    except ValueError:
        return ()
    if skip_codes:
        level = skip
        while frame is not None and id(frame.f_code) in skip_codes:
            frame = frame.f_back
            level += 1
        if level > skip:
            _last_inside_hint[skip_codes] = level
    return walk(frame, depth)


def _after_hint(hint: int, depth: int, skip_codes: frozenset[int]) -> RawStack | None:
    """``_frames.after_hint`` in Python (``hint`` counted from here): the stack outside the skipped
    frames if the hinted frame is the last skipped one, else None."""
    try:
        inside = sys._getframe(hint)
    except ValueError:
        return None
    if id(inside.f_code) not in skip_codes:
        return None
    frame = inside.f_back
    if frame is not None and id(frame.f_code) in skip_codes:
        return None
    return _walk(frame, depth)


def _walk(frame: FrameType | None, depth: int) -> RawStack:
    """``_frames.walk`` in Python."""
    out: list[CodeType | int] = []
    append = out.append
    while frame is not None and depth > 0:
        append(frame.f_code)
        append(frame.f_lasti)
        frame = frame.f_back
        depth -= 1
    return tuple(out)


#: ``(code, offset, ...)`` of ``frame`` and its callers, innermost first, at most ``depth`` frames.
walk: Callable[[FrameType | None, int], RawStack] = _c_walk or _walk


def _pairs(raw: RawStack) -> Iterator[tuple[CodeType, int]]:
    for index in range(0, len(raw) - 1, 2):
        yield raw[index], raw[index + 1]  # type: ignore[misc]


def _lineno(code: CodeType, offset: int) -> int:
    for start, end, line in code.co_lines():
        if start <= offset < end and line is not None:
            return line
    return code.co_firstlineno


def _display_path(filename: str) -> str:
    absolute = os.path.abspath(filename)
    best = ""
    for entry in sys.path:
        root = os.path.abspath(entry or os.curdir) + os.sep
        if absolute.startswith(root) and len(root) > len(best):
            best = root
    return absolute[len(best) :] if best else filename


def _info(code: CodeType) -> tuple[str, str, bool]:
    info = _code_info.get(code)
    if info is None:
        global _LIBRARY_PREFIXES
        if _LIBRARY_PREFIXES is None:
            _LIBRARY_PREFIXES = _library_prefixes()
        filename = code.co_filename
        absolute = os.path.abspath(filename)
        is_app = not filename.startswith("<") and not absolute.startswith(_LIBRARY_PREFIXES)
        function = getattr(code, "co_qualname", code.co_name)
        info = (_display_path(filename), function, is_app)
        _code_info[code] = info
    return info


def frames(raw: RawStack) -> list[tuple[str, int, str, bool]]:
    """``(path, lineno, function, is_app)`` for each frame, innermost first."""
    out = []
    for code, offset in _pairs(raw):
        path, function, is_app = _info(code)
        out.append((path, _lineno(code, offset), function, is_app))
    return out


def format_stack(raw: RawStack, limit: int | None = None) -> list[str]:
    """``"shop/views.py:41 in checkout"`` lines, application frames first."""
    described = frames(raw)
    ordered = [f for f in described if f[3]] + [f for f in described if not f[3]]
    lines = [f"{path}:{lineno} in {function}" for path, lineno, function, _ in ordered]
    return lines[:limit] if limit is not None else lines


def origin(raw: RawStack) -> str | None:
    """The innermost application frame, ``"path:lineno in function"``, or None."""
    for code, offset in _pairs(raw):
        path, function, is_app = _info(code)
        if is_app:
            return f"{path}:{_lineno(code, offset)} in {function}"
    return None


def fingerprint(raw: RawStack) -> str:
    """A stable id for "the same place in the code", for de-duplicating leak reports.

    Built from the application frames only, so the same leaking line reached through
    different library paths (or Django versions) is one leak.
    """
    described = frames(raw)
    app = [f"{p}:{n}:{fn}" for p, n, fn, is_app in described if is_app]
    key = "\n".join(app or [f"{p}:{n}:{fn}" for p, n, fn, _ in described])
    return hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()[:16]


def capture_frame(frame: FrameType | None, depth: int = 20) -> RawStack:
    """The stack from ``frame`` outwards (another thread's, from ``sys._current_frames()``)."""
    return walk(frame, depth)


def call_chain(raw: RawStack, limit: int = 2) -> str | None:
    """The innermost ``limit`` application frames, outermost first:
    ``"shop/views.py:120 in pay > shop/services.py:14 in charge"``; None without any."""
    app = [
        f"{path}:{_lineno(code, offset)} in {function}"
        for code, offset in _pairs(raw)
        for path, function, is_app in (_info(code),)
        if is_app
    ][:limit]
    return " > ".join(reversed(app)) if app else None
