"""Request and response schemas, named by role (``JobCreate``, ``JobPublic``, ``JobsPublic``).

The API never imports the inference code, so the option vocabularies live here; a test keeps them
equal to the model registry, the pipeline's compositors and the encoder's formats.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from service.errors import InvalidBackground, InvalidColor, InvalidParameter, UnknownModel

MODEL_NAMES = ("rvm", "deeplabv3plus")
OUTPUT_FORMAT_NAMES = ("mp4", "webm", "mov", "matte", "greenscreen")
COMPOSITE_NAMES = ("alpha", "poisson")
COLOR_CHARS = frozenset("0123456789abcdefABCDEF")

JobStatusName = Literal["queued", "running", "succeeded", "failed", "canceled"]


class JobCreate(BaseModel):
    """The text fields of ``POST /jobs`` (the files travel beside them)."""

    model: str = Field("rvm", description="Matting model: " + ", ".join(MODEL_NAMES))
    output_format: str = Field("mp4", description="Output: " + ", ".join(OUTPUT_FORMAT_NAMES))
    composite: str = Field("alpha", description="Compositor: alpha or poisson")
    harmonize: float = Field(0.0, ge=0.0, le=1.0, description="Colour harmonisation strength, 0..1")
    callback_url: str | None = Field(None, description="URL that gets a signed POST when the job ends")
    background_color: str | None = Field(None, description="Solid background, #RRGGBB")
    background_blur: bool = Field(False, description="Blur the original background instead")

    @field_validator("callback_url", "background_color", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @classmethod
    def from_form(cls, fields: dict[str, str], default_model: str) -> JobCreate:
        """Build from form fields, picking known names only; errors carry the stable codes."""
        known = set(cls.model_fields)
        unknown = sorted(set(fields) - known)
        if unknown:
            raise InvalidParameter(f"unknown field(s): {', '.join(unknown)}")
        picked = {name: fields[name] for name in known if name in fields}
        picked.setdefault("model", default_model)
        try:
            job = cls.model_validate(picked)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise InvalidParameter(f"{loc}: {err['msg']}") from None
        if job.model not in MODEL_NAMES:
            raise UnknownModel(f"unknown model {job.model!r}; choose one of: {', '.join(MODEL_NAMES)}")
        if job.output_format not in OUTPUT_FORMAT_NAMES:
            raise InvalidParameter(
                f"unknown output_format {job.output_format!r}; choose one of: {', '.join(OUTPUT_FORMAT_NAMES)}"
            )
        if job.composite not in COMPOSITE_NAMES:
            raise InvalidParameter(f"unknown composite {job.composite!r}; choose alpha or poisson")
        c = job.background_color
        if c is not None and not (len(c) == 7 and c[0] == "#" and set(c[1:]) <= COLOR_CHARS):
            raise InvalidColor(f"background_color must be #RRGGBB, not {c[:20]!r}")
        return job

    def background_choice(self, has_file: bool) -> str:
        """'file', 'color' or 'blur': exactly one must be given."""
        given = [k for k, v in (("file", has_file), ("color", self.background_color), ("blur", self.background_blur)) if v]
        if len(given) != 1:
            raise InvalidBackground(
                "give exactly one background: a 'background' file, 'background_color' or 'background_blur=true'"
            )
        return given[0]


class ProgressPublic(BaseModel):
    frames_done: int
    frames_total: int
    percent: float


class ErrorPublic(BaseModel):
    code: str
    message: str


class ResultPublic(BaseModel):
    url: str | None = Field(description="Presigned (S3) or API URL of the output; expires on S3")
    size: int
    duration: float
    format: str
    content_type: str
    frames: int
    width: int
    height: int


class JobPublic(BaseModel):
    id: str
    status: JobStatusName
    progress: ProgressPublic
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: ErrorPublic | None
    result: ResultPublic | None
    options: dict[str, str | float]
    background: dict[str, str | None]
    video: dict[str, int | float | bool] | None
    callback_url: str | None
    attempts: int


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int = Field(description="Jobs this key has in all")
    offset: int
    limit: int


class Problem(BaseModel):
    """RFC 9457 problem details (``application/problem+json``)."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None
