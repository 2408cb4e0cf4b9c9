"""The Celery application: configuration only.  The API imports this module to enqueue tasks by
name; the task code (which pulls in the pipeline and ONNX Runtime) is only imported by workers.

Run a worker with ``celery -A service.workers.celery_app worker``.
"""

from __future__ import annotations

from celery import Celery

from service.config import Settings, get_settings

PROCESS_TASK = "backdrop.process_job"
WEBHOOK_TASK = "backdrop.deliver_webhook"


def create_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("backdrop", broker=settings.redis_url, include=["service.workers.tasks"])
    app.conf.update(
        task_default_queue=settings.queue_name,
        task_routes={PROCESS_TASK: {"queue": settings.queue_name}, WEBHOOK_TASK: {"queue": settings.queue_name}},
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        # one job per message, acknowledged only when done; a lost worker puts it back
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.worker_concurrency,
        worker_max_tasks_per_child=settings.worker_max_tasks_per_child,
        # SIGQUIT (or SIGTERM with REMAP_SIGTERM=SIGQUIT): give the job a little time, then stop it and
        # hand its message back to the broker at once (a SIGKILL waits for the visibility timeout)
        worker_soft_shutdown_timeout=settings.worker_soft_shutdown_s,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout_s,
            "unacked_restore_interval": settings.broker_restore_interval_s,
            "unacked_restore_throttle": 1,
        },
        timezone="UTC",
    )
    return app


app = create_celery()


def time_limits(settings: Settings, duration_s: float) -> tuple[float, float]:
    """(soft, hard) time limits of a job on a video of ``duration_s`` seconds."""
    soft = settings.task_time_base_s + settings.task_time_per_video_s * max(0.0, duration_s)
    return soft, soft + 30.0
