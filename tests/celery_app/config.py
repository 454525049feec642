"""Broker and result backend for the test worker: Redis when it answers on 127.0.0.1:6379, else
kombu's server-less filesystem transport and Celery's file result backend, so the Celery tests
also run on a fresh machine. The choice travels to the worker process through the environment.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

REDIS_URL = os.environ.get("POOLGUARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_answers(host: str = "127.0.0.1", port: int = 6379) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def choose_broker(folder: Path) -> dict[str, str]:
    """Environment variables describing the broker: ``POOLGUARD_TEST_BROKER=filesystem`` forces the fallback."""
    forced = os.environ.get("POOLGUARD_TEST_BROKER")
    if forced != "filesystem" and (forced == "redis" or redis_answers()):
        return {"POOLGUARD_CELERY_BROKER": REDIS_URL, "POOLGUARD_CELERY_BACKEND": REDIS_URL}
    (folder / "results").mkdir(parents=True, exist_ok=True)
    return {
        "POOLGUARD_CELERY_BROKER": "filesystem://",
        "POOLGUARD_CELERY_BACKEND": f"file://{folder / 'results'}",
        "POOLGUARD_CELERY_FOLDER": str(folder),
    }


def celery_config(env: dict[str, str] | os._Environ[str]) -> dict[str, Any]:
    """Celery settings from the variables :func:`choose_broker` set (plus the queue name)."""
    config: dict[str, Any] = {
        "broker_url": env.get("POOLGUARD_CELERY_BROKER", "filesystem://"),
        "result_backend": env.get("POOLGUARD_CELERY_BACKEND"),
        "task_default_queue": env.get("POOLGUARD_CELERY_QUEUE", "poolguard-tests"),
        "worker_enable_remote_control": False,  # the broker may be shared: no broadcast traffic
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
        "result_expires": 600,
        "task_acks_late": False,
        "worker_prefetch_multiplier": 1,
    }
    folder = env.get("POOLGUARD_CELERY_FOLDER")
    if folder:
        Path(folder, "queue").mkdir(parents=True, exist_ok=True)
        Path(folder, "control").mkdir(parents=True, exist_ok=True)
        config["broker_transport_options"] = {
            "data_folder_in": str(Path(folder, "queue")),
            "data_folder_out": str(Path(folder, "queue")),
            "control_folder": str(Path(folder, "control")),
            "polling_interval": 0.05,  # s; the default 1 s makes every round trip take a second
        }
    return config
