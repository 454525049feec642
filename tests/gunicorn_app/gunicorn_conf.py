"""gunicorn settings for the integration test, and the multiprocess hook every deployment needs."""

import os

worker_class = "gthread"
workers = int(os.environ.get("POOLGUARD_GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("POOLGUARD_GUNICORN_THREADS", "16"))
backlog = 2048
# How many clients one worker takes at a time. gthread's accept loop otherwise lets whichever
# worker wakes first take a whole burst; a bound makes the other worker take its share.
worker_connections = int(os.environ.get("POOLGUARD_GUNICORN_CONNECTIONS", "1000"))
graceful_timeout = 5
accesslog = None


def child_exit(server, worker):
    # A dead worker's livesum gauges must stop counting (docs/metrics.md).
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    # Tell the test harness this worker has loaded the app and is about to accept.
    ready_dir = os.environ.get("POOLGUARD_GUNICORN_READY_DIR")
    if ready_dir:
        open(os.path.join(ready_dir, f"worker-{worker.pid}"), "w").close()
