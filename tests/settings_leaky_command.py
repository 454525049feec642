"""tests.settings with thresholds small enough for a management command to leak in a test."""

from __future__ import annotations

import copy

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES as _DATABASES
from tests.settings import POOLGUARD as _POOLGUARD

DATABASES = copy.deepcopy(_DATABASES)
DATABASES["default"]["OPTIONS"]["poolguard"]["leak_threshold"] = 0.3
POOLGUARD = {**_POOLGUARD, "MONITOR_INTERVAL": 0.1}
