"""ONNX Runtime sessions, the model factory, edge refinement, harmonisation and compositors.

Never imports FastAPI, Celery or Redis; works on numpy frames only.
"""
