"""When the pool runs dry the error says who holds the connections, and where in the code."""

from __future__ import annotations

import pytest
from django.db import OperationalError, connections

from django_poolguard import PoolExhausted
from tests.waiting import queue_waiters

pytestmark = pytest.mark.django_db(transaction=True)


def test_timeout_raises_pool_exhausted_naming_holders(make_alias, holders):
    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 0.5})
    holders(alias, name="report")
    holders(alias, name="report")

    with pytest.raises(PoolExhausted) as caught:
        connections[alias].ensure_connection()

    error = caught.value
    assert isinstance(error, OperationalError), "code that catches Django's OperationalError keeps working"
    message = str(error)
    assert message.startswith(f"pool '{alias}' exhausted after 0.5 s (2/2 in use, 0 waiting): ")
    assert "2 held by thread report (oldest " in message
    assert "tests/conftest.py:" in message and "in Holder.hold_connection" in message
    assert error.alias == alias and error.queue_full is False
    assert error.waited >= 0.5


@pytest.mark.timing
def test_full_wait_queue_fails_at_once(make_alias, holders):
    import time

    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 3, "max_waiting": 1})
    from django_poolguard.engine.pool import get_pool

    holders(alias, name="slow-report")
    [waiter] = queue_waiters(alias, 1, within=5)

    started = time.monotonic()
    with pytest.raises(PoolExhausted) as caught:
        connections[alias].ensure_connection()
    assert time.monotonic() - started < 1.0, "a full queue must not make the caller wait for the timeout"
    assert caught.value.queue_full is True
    assert "1 requests already waiting (max_waiting=1" in str(caught.value)
    assert "held by thread slow-report" in str(caught.value)
    assert get_pool(alias).ledger.rejected_total == 1
    assert get_pool(alias).ledger.shed_total == 0, "only the middleware sheds requests"
    waiter.join(5)
