"""The Celery application: configuration only.  The API imports this module to enqueue tasks by
name; the task code (which pulls in the pipeline and ONNX Runtime) is only imported by workers.

Run a worker with ``celery -A service.workers.celery_app worker``.
"""

from __future__ import annotations

from celery import Celery

from service.config import Settings, get_settings

PROCESS_TASK = "backdrop.process_job"
WEBHOOK_TASK = "backdrop.deliver_webhook"
HOUSEKEEPING_TASK = "backdrop.housekeeping"
PREVIEW_TASK = "backdrop.preview"
PREVIEW_SWEEP_TASK = "backdrop.sweep_previews"
PEOPLE_CHECK_TASK = "backdrop.check_people"
#: A long video's chunks and their join (``service.workers.chunks``), on the video queue.
CHUNK_TASK = "backdrop.process_chunk"
JOIN_TASK = "backdrop.join_chunks"


def create_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("backdrop", broker=settings.redis_url, include=["service.workers.tasks", "service.workers.chunks", "service.workers.preview"])
    app.conf.update(
        task_default_queue=settings.queue_name,
        # video jobs on their own queue (one slot per CPU/GPU worker); callbacks and housekeeping on a
        # light queue served by a small thread pool, so they never wait behind a video or take its slot
        task_routes={
            PROCESS_TASK: {"queue": settings.queue_name},
            CHUNK_TASK: {"queue": settings.queue_name},
            JOIN_TASK: {"queue": settings.queue_name},
            WEBHOOK_TASK: {"queue": settings.light_queue_name},
            HOUSEKEEPING_TASK: {"queue": settings.light_queue_name},
            # previews on a lane of their own: a worker that no video job can occupy
            PREVIEW_TASK: {"queue": settings.preview_queue_name},
            PREVIEW_SWEEP_TASK: {"queue": settings.light_queue_name},
            # a job's choice of people, checked on the first frame while POST /jobs waits
            PEOPLE_CHECK_TASK: {"queue": settings.preview_queue_name},
        },
        beat_schedule={
            "housekeeping": {
                "task": HOUSEKEEPING_TASK,
                "schedule": settings.housekeeping_interval_s,
                "options": {"queue": settings.light_queue_name, "expires": settings.housekeeping_interval_s},
            },
            "sweep-previews": {
                "task": PREVIEW_SWEEP_TASK,
                "schedule": settings.housekeeping_interval_s,
                "options": {"queue": settings.light_queue_name, "expires": settings.housekeeping_interval_s},
            },
        },
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        # one job per message, acknowledged only when done.  A job whose pool process dies is
        # acknowledged too: the lease reaper (housekeeping) puts it back, counting its attempts, so
        # a job that kills its worker every time cannot be redelivered for ever
        task_acks_late=True,
        task_reject_on_worker_lost=False,
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
    return settings.time_limits(duration_s)
