"""Django's ``@async_unsafe`` check on the wrapper's methods, made without raising an exception.

Django guards ``connect()``, ``cursor()``, ``close()`` and a few more with ``@async_unsafe``,
which calls ``asyncio.get_running_loop()`` and catches the ``RuntimeError`` it raises outside an
event loop: about 0.25 µs a call, and one checkout makes seven (``cursor``, ``ensure_connection``
twice, ``connect``, ``get_new_connection``, ``create_cursor``, ``close``). Asking for the running
loop, ``None`` outside one, makes the same check for a tenth of that: the same rule, the same
``SynchronousOnlyOperation`` with Django's message, the same ``DJANGO_ALLOW_ASYNC_UNSAFE``.

The wrapper's methods call Django's own functions (``BaseDatabaseWrapper.connect``, ...) directly
while those are Django's own; one replaced on Django's class (a test's ``mock.patch``) is called
instead. A class of yours that subclasses poolguard's wrapper and must run inside these methods
goes *before* it in the bases (``class Wrapper(YourMixin, DatabaseWrapper)``), as Django's own
wrappers are extended.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from django.core.exceptions import SynchronousOnlyOperation

from django_poolguard._compat import async_unsafe_parts, running_loop

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=type)

#: Django's ``@async_unsafe`` methods of the PostgreSQL wrapper (its own and BaseDatabaseWrapper's).
ASYNC_UNSAFE_METHODS = (
    "connect",
    "ensure_connection",
    "cursor",
    "commit",
    "rollback",
    "close",
    "savepoint",
    "savepoint_rollback",
    "savepoint_commit",
    "clean_savepoints",
    "get_new_connection",
    "create_cursor",
    "chunked_cursor",
)


def refuse(message: str) -> None:
    """Inside a running event loop: Django's refusal, unless ``DJANGO_ALLOW_ASYNC_UNSAFE`` is set."""
    if not os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE"):
        raise SynchronousOnlyOperation(message)


def checked(django_class: type, name: str) -> Callable[..., Any]:
    """``django_class``'s method ``name``: Django's function behind the cheap check, while the
    method is Django's own. Replaced (a test's ``mock.patch`` of ``BaseDatabaseWrapper.connect``,
    say), the replacement is called as it is, as Django's own wrapper would."""
    decorated = getattr(django_class, name)
    function, message = async_unsafe_parts(decorated)  # type: ignore[misc]

    def async_unsafe(*args: Any, **kwargs: Any) -> Any:
        current = getattr(django_class, name)
        if current is not decorated:
            return current(*args, **kwargs)
        if running_loop() is not None:
            refuse(message)
        return function(*args, **kwargs)

    return functools.wraps(function)(async_unsafe)


class DjangoMethod(NamedTuple):
    """A Django method an override calls without its ``@async_unsafe`` (the override makes the
    check): call ``function if getattr(cls, name) is decorated else getattr(cls, name)``, so a
    replaced method (a test's patch) is still the one called."""

    decorated: Callable[..., Any]
    function: Callable[..., Any]


def django_method(method: Callable[..., Any]) -> DjangoMethod:
    parts = async_unsafe_parts(method)
    return DjangoMethod(method, method if parts is None else parts[0])


def checked_like(method: Callable[..., Any]) -> Callable[[F], F]:
    """A decorator: the function under the check Django's ``method`` makes (none if it makes none)."""
    parts = async_unsafe_parts(method)
    if parts is None:
        return lambda function: function
    message = parts[1]

    def decorate(function: F) -> F:
        def async_unsafe(*args: Any, **kwargs: Any) -> Any:
            if running_loop() is not None:
                refuse(message)
            return function(*args, **kwargs)

        return functools.wraps(function)(async_unsafe)  # type: ignore[return-value]

    return decorate


def cheap_async_checks(django_class: type) -> Callable[[C], C]:
    """A class decorator: each ``@async_unsafe`` method the class inherits from ``django_class``
    becomes Django's function under the cheap check (the methods it defines are its own to check,
    see :func:`checked_like`). A method Django no longer decorates is left as Django's."""

    def decorate(cls: C) -> C:
        for name in ASYNC_UNSAFE_METHODS:
            if async_unsafe_parts(getattr(django_class, name, None)) is not None and name not in cls.__dict__:
                setattr(cls, name, checked(django_class, name))
        return cls

    return decorate
