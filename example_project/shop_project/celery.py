"""The shop's Celery app. The broker comes from ``SHOP_BROKER_URL`` (the demo sets it to Redis when
one answers) and defaults to Kombu's server-less filesystem transport, so the demo needs no server."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop_project.settings")

app = Celery("shop_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _make_queue_folders(sender: Celery, **kwargs: object) -> None:
    # The filesystem transport needs its folders to exist before the first message.
    for key in ("data_folder_in", "processed_folder", "control_folder"):
        folder = (sender.conf.broker_transport_options or {}).get(key)
        if folder:
            os.makedirs(folder, exist_ok=True)
