"""The Celery app the integration tests and the benchmark run in real worker processes
(``celery -A tests.celery_app.app worker``), and :class:`~tests.celery_app.worker.Worker` to start one."""
