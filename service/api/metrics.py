"""Prometheus metrics read from the job store at scrape time, so every API replica reports the
same figures and the workers need no metrics port of their own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from service.jobs import PROCESSING_BUCKETS, JobStatus, JobStore


def count_workers(celery: Any, timeout: float) -> int:
    """Celery workers that answer a ping within ``timeout`` (video and light workers alike)."""
    return len(celery.control.ping(timeout=timeout) or [])


class JobsCollector(Collector):
    def __init__(self, store: JobStore, queue_name: str, celery: Any = None, ping_timeout: float = 0.5):
        self.store = store
        self.queue_name = queue_name
        self.celery = celery
        self.ping_timeout = ping_timeout

    def collect(self) -> Iterator[Any]:
        try:
            stats = self.store.stats()
            queued = self.store.queue_depth()
            running = self.store.running_count()
            broker = int(self.store.r.llen(self.queue_name))
        except Exception:  # noqa: BLE001 - Redis down: /readyz says so; metrics stay scrapeable
            up = GaugeMetricFamily("backdrop_job_store_up", "Whether the job store answered this scrape")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily("backdrop_job_store_up", "Whether the job store answered this scrape")
        up.add_metric([], 1)
        yield up
        if self.celery is not None:
            workers = GaugeMetricFamily("backdrop_workers", "Celery workers that answered a ping at this scrape")
            try:
                workers.add_metric([], count_workers(self.celery, self.ping_timeout))
            except Exception:  # noqa: BLE001 - the broker hiccuped: report none
                workers.add_metric([], 0)
            yield workers
        jobs = GaugeMetricFamily("backdrop_jobs_active", "Jobs now in each live state", labels=["status"])
        jobs.add_metric(["queued"], queued)
        jobs.add_metric(["running"], running)
        yield jobs
        total = CounterMetricFamily("backdrop_jobs", "Jobs that entered each state", labels=["status"])
        for s in JobStatus:
            total.add_metric([s.value], stats.get(f"jobs_{s.value}", 0.0))
        yield total
        depth = GaugeMetricFamily("backdrop_queue_depth", "Jobs waiting for a worker")
        depth.add_metric([], queued)
        yield depth
        blen = GaugeMetricFamily("backdrop_broker_queue_length", "Messages in the Celery queue list")
        blen.add_metric([], broker)
        yield blen
        buckets = [(f"{le:g}", stats.get(f"processing_seconds_bucket_{le:g}", 0.0)) for le in PROCESSING_BUCKETS]
        count = stats.get("processing_seconds_count", 0.0)
        buckets.append(("+Inf", count))
        hist = HistogramMetricFamily("backdrop_processing_seconds", "Worker time per finished job")
        hist.add_metric([], buckets, sum_value=stats.get("processing_seconds_sum", 0.0))
        yield hist
        frames = CounterMetricFamily("backdrop_frames_processed", "Frames composited by the workers")
        frames.add_metric([], stats.get("frames_total", 0.0))
        yield frames
        fps = GaugeMetricFamily("backdrop_frames_per_second", "Frames per second of the last finished job")
        fps.add_metric([], stats.get("last_fps", 0.0))
        yield fps
        sec = stats.get("processing_seconds_sum", 0.0)
        avg = GaugeMetricFamily("backdrop_frames_per_second_avg", "Frames per second over all finished jobs")
        avg.add_metric([], stats.get("frames_total", 0.0) / sec if sec else 0.0)
        yield avg
