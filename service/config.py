"""One settings class for the whole service, read from the environment (prefix ``BACKDROP_``).

Every field here has a default that runs Backdrop on one machine (local Redis, a local directory as
object store, CPU inference).  The README lists every setting; a test keeps that table in step.
"""

from __future__ import annotations

import ipaddress
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent
LOCAL_WEBHOOK_SECRET = "local-dev-secret"
#: Words that mark a value as a placeholder from an example file, never a real credential.
PLACEHOLDER_WORDS = ("replace", "change", "example", "placeholder", "secret", "your", "xxxx", "todo")
MIN_KEY_CHARS = 32
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: libx264's presets, fastest first.
X264Preset = Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"]
DEFAULT_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BACKDROP_", env_nested_delimiter="__", extra="ignore")

    # --- data and media limits -------------------------------------------------------------
    data_dir: Path = Field(ROOT.parent / "shared" / "data", description="Test/benchmark data folder.")
    max_upload_bytes: int = Field(2 * 1024**3, description="Largest accepted upload (video or background).")
    max_duration_s: float = Field(600.0, description="Longest accepted video, in seconds.")
    max_width: int = Field(3840, description="Widest accepted frame (displayed), in pixels.")
    max_height: int = Field(3840, description="Tallest accepted frame (displayed), in pixels.")
    max_pixels: int = Field(3840 * 2160, description="Most pixels per frame.")
    max_frames: int = Field(36_000, description="Most frames in one video.")
    max_background_pixels: int = Field(50_000_000, description="Most pixels in a still background image.")
    max_animated_background_pixels: int = Field(
        1_000_000_000,
        description="Most pixels in all frames of an animated background (GIF, APNG) together: frames × width × height "
        "(each frame also within max_width, max_height and max_pixels).",
    )
    inspect_cpu_seconds: int = Field(
        10,
        description="Most CPU seconds the first reading of an upload's or a fetched file's headers may take (a child "
        "process ends there): beyond it the file is refused as too large.  A 36,000-frame video takes 0.2 s.",
        ge=1,
    )
    inspect_memory_bytes: int = Field(
        1024**3, description="Most memory that first reading may add, in bytes; beyond it the file is refused.", ge=2**24
    )

    # --- inference ---------------------------------------------------------------------------
    model: str = Field("rvm", description="Default model name (rvm or deeplabv3plus).")
    model_dir: Path | None = Field(None, description="Folder holding ONNX weights; overrides the packaged ones.")
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_PROVIDERS),
        description="ONNX Runtime providers in order of preference, intersected with those installed.",
    )
    intra_op_threads: int = Field(0, description="ONNX Runtime intra-op threads (0 = runtime default).")
    inter_op_threads: int = Field(1, description="ONNX Runtime inter-op threads.")
    onnx_spinning: bool = Field(
        False,
        description="Let ONNX Runtime's idle threads spin; off, they yield the cores to decode and encode.",
    )
    rvm_long_side: int = Field(
        320, description="Long side, in pixels, of RVM's low-resolution pass (sets its downsample ratio)."
    )
    rvm_cpu_lowres: bool = Field(
        True,
        description="RVM on the CPU provider: run its network at low resolution and its full-resolution step in "
        "OpenCV from the uint8 frame (the same matte, a fraction of the time and memory); off = the published graph whole.",
    )
    rvm_int8: Literal["auto", "on", "off"] = Field(
        "auto",
        description="RVM's cut graph (rvm_cpu_lowres) with its decoder's 3x3 convolutions in int8: about a fifth less "
        "time a frame on a CPU with VNNI, 12-18 % less a job with AVX2 alone, DAVIS IoU within 0.002; auto = on where "
        "the CPU has AVX2.",
    )
    fp16: bool = Field(False, description="Use fp16 model variants where they exist (GPU only).")
    device_pipeline: Literal["auto", "on", "off"] = Field(
        "auto",
        description="The device path (frames stay in the model's device memory from decode to encode: NVDEC, IO "
        "binding, TensorRT, compositing on the GPU) for the jobs it covers: auto = when a CUDA provider works, "
        "on = also on the CPU provider, off = never.",
    )
    gpu_device: int = Field(0, description="CUDA device the worker's models, NVDEC and NVENC use.")
    engine_cache_dir: Path = Field(
        ROOT / "var" / "engines",
        description="Folder of generated model files: RVM with its downsample ratio fixed, TensorRT engines and timing cache.",
    )
    segments: int = Field(
        0, ge=0,
        description="Parts of one video run side by side, each on its own cores, then joined: on the CPU provider "
        "0 = one per core (at most 4; see README, One video across a machine's cores); on the GPU device path "
        "without NVENC 0 = one per 4 cores (at most 4), each with its own libx264; 1 = never.",
    )
    segment_max_pixels: int = Field(
        2_000_000, ge=0,
        description="Parts run side by side only while parts x width x height stays within this: each holds its own "
        "decoder, encoder and queues (1080p in two parts peaked at 1.19 GB, in one at 0.71 GB).",
    )
    batch_size: int = Field(
        4, description="Frames per inference batch (fewer for frames over 720p: a batch holds at most "
        "2 x 1920 x 1088 pixels, which keeps a 1080p job under 1 GB with every option and a 4K job near 1.2 GB).",
    )
    queue_depth: int = Field(4, description="Batches buffered between pipeline stages.")
    queue_memory_mb: int = Field(
        64, ge=1,
        description="Most memory the frames waiting between two pipeline stages take (fewer than queue_depth "
        "batches of large frames; at least one); a job up to 1080p also reuses up to twice this in frame-sized arrays "
        "(128 took 70 MB more at 1080p with a video background and ran no faster on 2 cores).",
    )
    decode_threads: int = Field(
        0, description="Decoder threads (0 = automatic: 1 while the model runs on the CPU, else FFmpeg's choice)."
    )
    encode_threads: int = Field(
        0, description="Encoder threads (0 = automatic: 1 while the model runs on the CPU, else FFmpeg's choice)."
    )
    x264_preset: X264Preset = Field(
        "veryfast",
        description="libx264's preset for the H.264 outputs (mp4, matte, greenscreen) at the same constant quality: "
        "faster presets encode faster into larger files (README, Encoder speed). A long video's chunks all take the "
        "preset of the worker that cuts it (they are joined without re-encoding).",
    )
    deeplab_flip_average: bool = Field(
        True, description="deeplabv3plus: average the logits of each frame and its mirror image (2x the model's work; "
        "stage 9, select at 256,384 px: portraits mIoU 0.9310 -> 0.9328, clips 0.8265 -> 0.8303)."
    )
    deeplab_long_sides: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [256, 384],
        description="deeplabv3plus: working sizes (long side, px) each frame runs at; with more than one, "
        "their logits are averaged (multi-scale, one model pass per size).",
    )
    deeplab_temporal: float = Field(
        0.3, ge=0, lt=1,
        description="deeplabv3plus: weight of the previous frame's probability map within a job (a moving average "
        "that steadies the mask; 0 = each frame alone; stage 9, held-out: flicker 10.4 % -> 9.3 % at -0.007 clip IoU).",
    )
    edge_refine: bool | None = Field(
        None, description="Refine mask edges at full resolution (guided filter); unset = the model's own default."
    )
    people_detect_every: int = Field(
        8, ge=1,
        description="Choosing who stays: run the person detector on every Nth frame; in between, people are "
        "followed by the matte's motion (1 = every frame).",
    )
    people_check_timeout_s: float = Field(
        30.0, gt=0,
        description="POST /jobs waits this long for the preview lane to check keep_points/people on the first frame; "
        "without an answer the job is queued and its worker checks.",
    )

    # --- service -------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Interface the API binds to.")
    port: int = Field(8000, description="Port the API binds to.")
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Accepted API keys as tenant:key pairs (key at least 32 characters); several keys may share a tenant.",
    )
    open_mode: bool = Field(
        False,
        description="Serve without API keys (one tenant, local); even then only loopback clients are answered. "
        "`backdrop run` sets it when no keys are given.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="Origins allowed to call the API from a browser.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for broker and job store.")
    queue_name: str = Field("video", description="Celery queue the jobs go to.")
    light_queue_name: str = Field(
        "light", description="Celery queue of webhook deliveries and housekeeping (served by a light thread pool)."
    )
    preview_queue_name: str = Field(
        "preview", description="Celery queue of first-frame previews, served by a worker of its own so long jobs never block it."
    )
    preview_ttl_s: int = Field(600, description="How long a preview (its record, frame and images) is kept.")
    max_queue_depth: int = Field(
        100, description="Queued jobs (and uploads under way) past which POST /jobs answers 503 queue_full."
    )
    tenant_max_queued: int = Field(
        20, description="Queued jobs (and uploads under way) one tenant may have; past it POST /jobs answers 429 quota_exceeded."
    )
    max_concurrent_uploads: int = Field(
        8, description="Uploads one API process takes at once; past it POST /jobs answers 503 busy."
    )
    body_idle_timeout_s: float = Field(
        30, gt=0, description="Seconds a request body may go without a byte before the request is refused (408 "
        "upload_stalled), so a client that stops sending mid-upload does not hold an upload slot."
    )
    body_min_rate_bytes_s: int = Field(
        4096, ge=0, description="Slowest a request body may come on average once body_idle_timeout_s has passed, in "
        "bytes a second (408 upload_stalled), so a client that drips bytes does not hold an upload slot either; 0: no minimum."
    )
    job_ttl_s: int = Field(7 * 24 * 3600, description="How long finished jobs and their objects are kept.")
    storage: Literal["local", "s3"] = Field("local", description="Object store kind.")
    storage_dir: Path = Field(ROOT / "var" / "objects", description="Folder of the local object store.")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (None = AWS).")
    s3_public_endpoint_url: str | None = Field(
        None, description="Endpoint put in presigned URLs when clients reach the store by another name."
    )
    s3_bucket: str = Field("backdrop", description="S3 bucket.")
    s3_region: str = Field("us-east-1", description="S3 region.")
    s3_access_key_id: str | None = Field(None, description="S3 access key id.")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret key.")
    presign_ttl_s: int = Field(3600, description="Lifetime of presigned result URLs.")
    webhook_secret: SecretStr = Field(
        SecretStr(LOCAL_WEBHOOK_SECRET),
        description="Master key from which each tenant's callback signing secret is derived (at least 32 characters with keys).",
    )
    webhook_allow_private: bool = Field(False, description="Allow callbacks to private/loopback addresses.")
    webhook_max_attempts: int = Field(5, description="Delivery attempts per callback.")
    fetch_allow_private: bool = Field(
        False, description="Allow video_url/background_url inputs on private/loopback addresses (local use, tests)."
    )
    fetch_timeout_s: float = Field(30.0, description="Connect and read timeout of fetching a video_url/background_url.")
    fetch_deadline_s: float = Field(
        600.0, description="Longest a worker spends fetching one video_url/background_url (a slow drip fails fetch_timeout)."
    )
    upload_ttl_s: int = Field(
        3600, description="Lifetime of a direct upload (POST /uploads) not used by a job; its object is swept after."
    )
    webhook_backoff_s: float = Field(2.0, description="First retry delay of callbacks (doubles each time).")
    worker_concurrency: int = Field(1, description="Jobs (or chunks of one) one worker runs at once.")
    chunk_seconds: float = Field(
        30.0, ge=0,
        description="A video longer than this is cut at keyframes into chunks of about this length that "
        "workers process at once, then joined (0 = never; see README, Scaling).",
    )
    chunk_warmup_frames: int = Field(
        16, ge=0,
        description="Frames each chunk (or part, see segments) runs through the model before its first one, output "
        "dropped (seams).",
    )
    worker_soft_shutdown_s: float = Field(
        10.0,
        description="On a cold shutdown (SIGQUIT), time the running job gets to finish before it is put back in the queue.",
    )
    worker_max_tasks_per_child: int = Field(50, description="Jobs before a worker process is replaced.")
    progress_interval_s: float = Field(0.25, description="Least time between progress writes.")
    upload_chunk_bytes: int = Field(1024 * 1024, description="Chunk size of object copies; S3 multipart part size (at least 5 MiB).")
    spool_dir: Path | None = Field(
        None, description="Folder for upload/worker temp files (None = system temp); the folders of a process that "
        "died are removed as a worker or the API starts.",
    )
    idempotency_ttl_s: int = Field(24 * 3600, description="How long an Idempotency-Key maps to its job.")
    jobs_page_size: int = Field(20, description="Default page size of GET /jobs (at most 100).")
    task_time_base_s: float = Field(120.0, description="Soft time limit of a job: this base plus task_time_per_video_s per video second.")
    task_time_per_video_s: float = Field(
        30.0, description="Seconds of soft time limit per second of video."
    )
    task_time_grace_s: float = Field(
        30.0, description="Seconds between a job's soft time limit and its hard one (the worker process is killed then)."
    )
    max_attempts: int = Field(
        3, description="Times a job may start; one whose worker died that many times fails with worker_lost."
    )
    task_max_retries: int = Field(5, description="Retries of a job after transient storage errors (with backoff).")
    job_lease_s: float = Field(
        30.0, description="Lease a running job holds (refreshed by heartbeat); a redelivered job waits it out."
    )
    housekeeping_interval_s: float = Field(
        15.0, description="Seconds between runs of the lease reaper and the expiry sweeper (light worker's beat)."
    )
    redis_retry_s: float = Field(
        60.0, description="How long a worker retries a lost Redis connection before it gives up on a write."
    )
    fault_injection: Literal["", "crash", "hang", "slow"] = Field(
        "", description="Testing only: make every job kill its worker process (crash), ignore its soft time limit "
        "(hang), or take at least 0.1 s a frame (slow: tests act on a running job on a machine of any speed)."
    )
    cancel_poll_interval_s: float = Field(0.5, description="Least time between cancel-flag checks in a worker.")
    broker_restore_interval_s: int = Field(10, description="Seconds between sweeps for unacknowledged jobs to redeliver.")
    webhook_timeout_s: float = Field(10.0, description="Timeout of one callback delivery attempt.")
    public_base_url: str | None = Field(
        None, description="Base URL clients reach the API at (result links in callbacks on the local store)."
    )
    readiness_timeout_s: float = Field(1.0, description="Timeout of each /readyz check (Redis, storage, worker ping).")

    @field_validator("providers", "cors_origins", "api_keys", "deeplab_long_sides", mode="before")
    @classmethod
    def _split_csv(cls, v: object) -> object:
        # env values arrive undecoded (NoDecode): "a,b" or a JSON list '["a", "b"]'
        if isinstance(v, str):
            if v.strip().startswith("["):
                return json.loads(v)
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @property
    def local_mode(self) -> bool:
        """No API keys: the API is open (with ``open_mode``) and answers loopback clients only."""
        return not self.api_keys

    @property
    def tenant_keys(self) -> dict[str, str]:
        """API key → tenant id (validated at start-up)."""
        return dict(_parse_key(k.get_secret_value()) for k in self.api_keys)

    def time_limits(self, duration_s: float) -> tuple[float, float]:
        """(soft, hard) time limits of a job on a video of ``duration_s`` seconds."""
        soft = self.task_time_base_s + self.task_time_per_video_s * max(0.0, duration_s)
        return soft, soft + self.task_time_grace_s

    @property
    def broker_visibility_timeout_s(self) -> int:
        """Seconds before the broker hands an unacknowledged job to another worker: derived from the
        longest job's hard limit, so a running job is never delivered twice.  A job whose worker died
        is settled much sooner by the lease reaper."""
        return int(self.time_limits(self.max_duration_s)[1]) + 600

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        if self.local_mode and not is_loopback(self.host):
            raise ValueError(
                f"an open API (no BACKDROP_API_KEYS) may only bind to loopback, not {self.host!r}; "
                "set BACKDROP_API_KEYS or bind to 127.0.0.1"
            )
        if not self.local_mode:
            keys = [_parse_key(k.get_secret_value()) for k in self.api_keys]
            if len({k for k, _ in keys}) != len(keys):
                raise ValueError("BACKDROP_API_KEYS lists the same key twice")
            secret = self.webhook_secret.get_secret_value()
            if secret == LOCAL_WEBHOOK_SECRET or len(secret) < MIN_KEY_CHARS or _placeholder(secret):
                raise ValueError(
                    f"set BACKDROP_WEBHOOK_SECRET to a random value of at least {MIN_KEY_CHARS} characters "
                    "(the default and placeholder values are refused)"
                )
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.batch_size < 1 or self.queue_depth < 1:
            raise ValueError("batch_size and queue_depth must be at least 1")
        if not self.deeplab_long_sides or not all(32 <= s <= 4096 for s in self.deeplab_long_sides):
            raise ValueError("deeplab_long_sides must list one or more sizes between 32 and 4096")
        return self


def _placeholder(value: str) -> bool:
    low = value.lower()
    return any(w in low for w in PLACEHOLDER_WORDS) or len(set(value)) < 8


def _parse_key(entry: str) -> tuple[str, str]:
    """``tenant:key`` → (key, tenant); refuses short, placeholder or malformed entries."""
    tenant, sep, key = entry.partition(":")
    if not sep or not TENANT_RE.match(tenant):
        raise ValueError(
            "each BACKDROP_API_KEYS entry is tenant:key (tenant: letters, digits, '_.-', up to 64 characters)"
        )
    if len(key) < MIN_KEY_CHARS or _placeholder(key) or any(c.isspace() for c in key):
        raise ValueError(
            f"the API key of tenant {tenant!r} is refused: use a random key of at least {MIN_KEY_CHARS} "
            "characters (placeholders from example files are refused)"
        )
    return key, tenant


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host)
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return addr.is_loopback
    except ValueError:
        return False


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
