"""The preview lane in the deployment files: compose and the manifests run a preview worker of its
own (one slot, the CPU worker image: a preview is one frame), on the queue the API sends previews
to, apart from the video and light queues; the autoscaler does not count it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
PREVIEW_QUEUE = Settings.model_fields["preview_queue_name"].default


def _preview_cmd_ok(cmd: list[str], queue: str) -> None:
    assert cmd[:4] == ["celery", "-A", "service.workers.celery_app", "worker"], cmd
    assert cmd[cmd.index("-Q") + 1] == queue
    concurrency = cmd[cmd.index("--concurrency") + 1] if "--concurrency" in cmd else cmd[cmd.index("-c") + 1]
    assert concurrency == "1"
    assert "-P" not in cmd and "-B" not in cmd  # prefork (the model loads once per process), no beat


def test_compose_runs_a_preview_worker() -> None:
    c: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = c["services"]
    env = services["api"]["environment"]
    queue = env["BACKDROP_PREVIEW_QUEUE_NAME"]
    assert queue == PREVIEW_QUEUE and queue not in (env["BACKDROP_QUEUE_NAME"], env["BACKDROP_LIGHT_QUEUE_NAME"])
    preview = services["preview-worker"]
    assert preview["environment"]["BACKDROP_PREVIEW_QUEUE_NAME"] == queue
    _preview_cmd_ok(preview["command"], queue)
    assert preview["build"]["dockerfile"] == "docker/Dockerfile.worker-cpu"


def test_k8s_runs_a_preview_worker_that_the_autoscaler_does_not_count() -> None:
    docs = [d for p in sorted((ROOT / "k8s").glob("*.yaml")) if p.name != "kustomization.yaml"
            for d in yaml.safe_load_all(p.read_text()) if d]
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    queue = config["BACKDROP_PREVIEW_QUEUE_NAME"]
    assert queue == PREVIEW_QUEUE and queue not in (config["BACKDROP_QUEUE_NAME"], config["BACKDROP_LIGHT_QUEUE_NAME"])
    deploy = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "backdrop-worker-preview")
    pod = deploy["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    _preview_cmd_ok(c["command"], queue)
    assert c["image"].startswith("backdrop-worker-cpu:") and "nvidia.com/gpu" not in c["resources"].get("limits", {})
    assert {next(iter(r.values()))["name"] for r in c["envFrom"]} == {"backdrop-config", "backdrop-secrets"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    scaled = [d["spec"]["scaleTargetRef"]["name"] for d in docs if d["kind"] == "ScaledObject"]
    assert "backdrop-worker-preview" not in scaled
    listed = yaml.safe_load((ROOT / "k8s" / "kustomization.yaml").read_text())["resources"]
    assert "worker-preview.yaml" in listed
