"""The ``TEST_RUNNER`` of the Django-suite runs: Django's own runner, plus a JSON file of every
test's outcome so ``run.py`` can compare the two engines test by test, not just by totals.

Imported inside Django's ``runtests.py`` process (``run.py`` puts this directory on
``PYTHONPATH``), so it uses nothing but Django and the standard library.
"""

from __future__ import annotations

import json
import os
import re
import unittest
from typing import Any

from django.test.runner import DiscoverRunner

RESULTS_ENV = "POOLGUARD_SUITE_RESULTS"
# Subtest ids may show object addresses ("<... object at 0x7f...>"), which differ between runs.
ADDRESS = re.compile(r" at 0x[0-9a-f]+")


class RecordingMixin:
    """Keeps ``{test id: outcome}``; outcomes are unittest's words (ok, FAIL, ERROR, skip, ...)."""

    outcomes: dict[str, str]

    def _record(self, test: Any, outcome: str) -> None:
        if not hasattr(self, "outcomes"):
            self.outcomes = {}
        self.outcomes[ADDRESS.sub("", test.id())] = outcome

    def addSuccess(self, test: Any) -> None:
        super().addSuccess(test)  # type: ignore[misc]
        self._record(test, "ok")

    def addFailure(self, test: Any, err: Any) -> None:
        super().addFailure(test, err)  # type: ignore[misc]
        self._record(test, "FAIL")

    def addError(self, test: Any, err: Any) -> None:
        super().addError(test, err)  # type: ignore[misc]
        self._record(test, "ERROR")

    def addSkip(self, test: Any, reason: str) -> None:
        super().addSkip(test, reason)  # type: ignore[misc]
        self._record(test, "skip")

    def addExpectedFailure(self, test: Any, err: Any) -> None:
        super().addExpectedFailure(test, err)  # type: ignore[misc]
        self._record(test, "expected failure")

    def addUnexpectedSuccess(self, test: Any) -> None:
        super().addUnexpectedSuccess(test)  # type: ignore[misc]
        self._record(test, "unexpected success")

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, err)  # type: ignore[misc]
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._record(subtest, "FAIL" if failed else "ERROR")


class RecordingRunner(DiscoverRunner):
    def get_resultclass(self) -> Any:
        base = super().get_resultclass() or unittest.TextTestResult
        return type(f"Recording{base.__name__}", (RecordingMixin, base), {})

    def run_suite(self, suite: Any, **kwargs: Any) -> Any:
        result = super().run_suite(suite, **kwargs)
        path = os.environ.get(RESULTS_ENV)
        if path:
            summary = {
                "ran": result.testsRun,
                "failures": len(result.failures),
                "errors": len(result.errors),
                "skipped": len(result.skipped),
                "expected_failures": len(result.expectedFailures),
                "unexpected_successes": len(result.unexpectedSuccesses),
            }
            with open(path, "w") as out:
                json.dump({"summary": summary, "outcomes": getattr(result, "outcomes", {})}, out, indent=1)
        return result
