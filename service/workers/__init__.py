"""Celery app (configuration only) and the tasks that run one job each."""
