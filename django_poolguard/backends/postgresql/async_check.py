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
import inspect
import os
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from django.core.exceptions import SynchronousOnlyOperation

from django_poolguard._compat import async_unsafe_parts, running_loop

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


def refuse(message: str | None) -> None:
    """Inside a running event loop: Django's refusal with its ``message``, unless
    ``DJANGO_ALLOW_ASYNC_UNSAFE`` is set (``None``: Django makes no check there)."""
    if message is not None and not os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE"):
        raise SynchronousOnlyOperation(message)


def _takes_self_only(function: Callable[..., Any]) -> bool:
    code = getattr(function, "__code__", None)
    return (
        code is not None
        and code.co_argcount == 1
        and not code.co_kwonlyargcount
        and not code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS)
    )


def checked(django_class: type, name: str) -> Callable[..., Any]:
    """``django_class``'s method ``name``: Django's function behind the cheap check, while the
    method is Django's own. Replaced (a test's ``mock.patch`` of ``BaseDatabaseWrapper.connect``,
    say), the replacement is called as it is, as Django's own wrapper would."""
    decorated = getattr(django_class, name)
    function, message = async_unsafe_parts(decorated)  # type: ignore[misc]

    if _takes_self_only(function):
        # cursor(), ensure_connection() (twice), connect(), close(): five calls per checkout. Without
        # *args and **kwargs, no tuple and dict are built per call (a third of the wrapper's cost).
        def async_unsafe(self: Any) -> Any:
            current = getattr(django_class, name)
            if current is not decorated:
                return current(self)
            if running_loop() is not None:
                refuse(message)
            return function(self)

    else:

        def async_unsafe(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            current = getattr(django_class, name)
            if current is not decorated:
                return current(*args, **kwargs)
            if running_loop() is not None:
                refuse(message)
            return function(*args, **kwargs)

    return functools.wraps(function)(async_unsafe)


class DjangoMethod(NamedTuple):
    """A Django method an override of poolguard's calls without its ``@async_unsafe``. The
    override makes the check itself, in its own body (no wrapper call per checkout)::

        if running_loop() is not None:
            refuse(METHOD.message)
        django = DjangoClass.method  # replaced by a test's patch?
        (METHOD.function if django is METHOD.decorated else django)(self, ...)
    """

    decorated: Callable[..., Any]
    function: Callable[..., Any]
    message: str | None  # None: Django makes no check on this method


def django_method(method: Callable[..., Any]) -> DjangoMethod:
    parts = async_unsafe_parts(method)
    return DjangoMethod(method, method, None) if parts is None else DjangoMethod(method, *parts)


def cheap_async_checks(django_class: type) -> Callable[[C], C]:
    """A class decorator: each ``@async_unsafe`` method the class inherits from ``django_class``
    becomes Django's function under the cheap check (the methods it defines make the check
    themselves, see :class:`DjangoMethod`). A method Django no longer decorates is left as Django's."""

    def decorate(cls: C) -> C:
        for name in ASYNC_UNSAFE_METHODS:
            if async_unsafe_parts(getattr(django_class, name, None)) is not None and name not in cls.__dict__:
                setattr(cls, name, checked(django_class, name))
        return cls

    return decorate
