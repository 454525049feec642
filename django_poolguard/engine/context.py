"""What caused a checkout: the current request, Celery task or management command.

A ``ContextVar`` holds a short label (``"GET /api/x"``, ``"task shop.tasks.export[id]"``);
integrations set it with :func:`checkout_context`. Threads that start without one fall back
to the process's own label (``"command migrate"``), set once at startup.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import ContextDecorator, contextmanager
from typing import Any, ClassVar, Self, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

LABEL_CHARS = 200  # a label names a place; a megabyte task id or path only bloats messages and logs

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("poolguard_context", default=None)
_process_label: str | None = None
_process_role: str = "web"


def current_context() -> str | None:
    """The label the ledger records for a checkout made now."""
    return _current.get() or _process_label


def bounded(label: str, limit: int = LABEL_CHARS) -> str:
    """``label`` cut to ``limit`` characters, an ellipsis marking the cut."""
    return label if len(label) <= limit else label[: limit - 1] + "…"


@contextmanager
def checkout_context(label: str) -> Iterator[None]:
    """Attribute the checkouts made inside the block to ``label``."""
    token = _current.set(bounded(label))
    try:
        yield
    finally:
        _current.reset(token)


def set_context(label: str | None) -> contextvars.Token[str | None]:
    """Set the label until ``reset_context(token)``; for integrations driven by signals."""
    return _current.set(None if label is None else bounded(label))


def reset_context(token: contextvars.Token[str | None]) -> None:
    _current.reset(token)


def process_role() -> str:
    """``web``, ``worker`` or ``command``: what this process is, for fleet views."""
    return _process_role


def set_process_role(role: str, label: str | None = None) -> None:
    global _process_role, _process_label
    _process_role = role
    _process_label = None if label is None else bounded(label)


def detect_process_role(argv: list[str] | None = None) -> tuple[str, str | None]:
    """Guess the role from the command line: ``manage.py <command>``, celery, or a web server."""
    argv = sys.argv if argv is None else argv
    program = argv[0].rsplit("/", 1)[-1] if argv else ""
    if "celery" in program or (len(argv) > 1 and argv[1] == "-m" and "celery" in argv[2:3]):
        return "worker", None
    if program in {"manage.py", "django-admin", "django-admin.py"} and len(argv) > 1:
        command = argv[1]
        if command in {"runserver", "runserver_plus", "testserver"}:
            return "web", None
        return "command", f"command {command}"
    return "web", None


class ContextBlock(ContextDecorator):
    """A context variable set for a ``with`` block or a decorated function, sync or async:
    the shape of :func:`~django_poolguard.workload` and :func:`~django_poolguard.priority`.

    Subclasses name ``_var`` and take one argument, ``name``; ``_value()`` is what the block sets.
    Blocks nest, the innermost wins; each thread, asyncio task and greenlet has its own value.
    """

    _var: ClassVar[contextvars.ContextVar[Any]]
    name: Any
    _token: contextvars.Token[Any] | None = None

    def _value(self) -> Any:
        return self.name

    def _recreate_cm(self) -> Self:
        # A fresh instance per decorated call: one decorated function may run in many threads at once.
        return type(self)(self.name)  # type: ignore[call-arg]

    def __enter__(self) -> Self:
        self._token = self._var.set(self._value())
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            self._var.reset(self._token)
            self._token = None

    def __call__(self, func: F) -> F:  # type: ignore[override]
        if inspect.iscoroutinefunction(func):
            # ContextDecorator would leave the block before the coroutine even starts.
            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with self._recreate_cm():
                    return await func(*args, **kwargs)

            return run_async  # type: ignore[return-value]
        return super().__call__(func)  # type: ignore[return-value]
