"""Request and response schemas, named by role (``JobCreate``, ``JobPublic``, ``JobsPublic``).

What a job may ask for is ``service.options.Options``, the model the pipeline validates with too;
``JobCreate`` is only the shape of the ``POST /jobs`` form around it (which background, the
callback) and the request's fingerprint for ``Idempotency-Key``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from service.errors import InvalidParameter
from service.options import (
    BLUR_STRENGTH_DEFAULT,
    BLUR_STRENGTH_MAX,
    BLUR_STRENGTH_MIN,
    Options,
    form_background_kind,
)

JobStatusName = Literal["queued", "running", "succeeded", "failed", "canceled"]
#: The options a client may set through the API (``edge_refine`` stays the operator's setting).
API_OPTION_FIELDS = ("model", "output_format", "composite", "harmonize", "keep_points", "people")
MAX_URL_CHARS = 2048


class JobForm(BaseModel):
    """The form fields of ``POST /jobs`` beside the options."""

    callback_url: str | None = Field(
        None, max_length=MAX_URL_CHARS, description="URL that gets a signed POST when the job ends"
    )
    background_color: str | None = Field(None, description="Solid background, #RRGGBB")
    background_blur: bool = Field(False, description="Blur the original background instead")
    background_blur_strength: float | None = Field(
        None, ge=BLUR_STRENGTH_MIN, le=BLUR_STRENGTH_MAX, allow_inf_nan=False,
        description=f"How strong the blur is, {BLUR_STRENGTH_MIN} to {BLUR_STRENGTH_MAX} (larger is blurrier; "
        f"default {BLUR_STRENGTH_DEFAULT}); only with background_blur=true",
    )

    @field_validator("callback_url", "background_color", "background_blur_strength", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("background_blur", mode="before")
    @classmethod
    def _empty_is_false(cls, v: object) -> object:
        """A blank ``background_blur`` (an HTML form's empty input) is one not given: no blur."""
        return False if isinstance(v, str) and not v.strip() else v


@dataclass(frozen=True)
class JobCreate:
    """A validated ``POST /jobs`` form: the options (background kind included) and the rest."""

    options: Options
    callback_url: str | None
    background_color: str | None
    background_blur_strength: float | None = None

    @classmethod
    def from_form(cls, fields: dict[str, str], has_background_file: bool, default_model: str) -> JobCreate:
        """Validate the form fields; errors carry the stable codes (``invalid_parameter``,
        ``invalid_background``, ``invalid_color``, ``unknown_model``, ``incompatible_options``)."""
        unknown = sorted(set(fields) - set(API_OPTION_FIELDS) - set(JobForm.model_fields))
        if unknown:
            raise InvalidParameter(f"unknown field(s): {', '.join(u[:40] for u in unknown[:5])}")
        try:
            form = JobForm.model_validate({k: v for k, v in fields.items() if k in JobForm.model_fields})
        except ValidationError as e:
            err = e.errors()[0]
            raise InvalidParameter(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
        kind = form_background_kind(has_background_file, form.background_color, form.background_blur)
        if form.background_blur_strength is not None and kind != "blur":
            raise InvalidParameter("background_blur_strength is only for a blurred background (background_blur=true)")
        # a blank field is a field not given, as for the form fields above (an HTML form sends empty inputs)
        chosen: dict[str, Any] = {k: fields[k] for k in API_OPTION_FIELDS if fields.get(k, "").strip()}
        chosen.setdefault("model", default_model)
        options = Options.parse(**chosen, background=kind)
        color = form.background_color if kind == "color" else None
        return cls(options, form.callback_url, color, form.background_blur_strength)

    def fingerprint(self, file_sha256: dict[str, str]) -> str:
        """SHA-256 of what this request asks for (options, background, callback and each file's
        SHA-256): a reused ``Idempotency-Key`` must come with the same request."""
        body: dict[str, Any] = {
            "options": self.options.model_dump(mode="json"),
            "callback_url": self.callback_url,
            "background_color": self.background_color,
            "files": dict(sorted(file_sha256.items())),
        }
        if self.background_blur_strength is not None:  # absent otherwise: older keys keep their fingerprint
            body["background_blur_strength"] = self.background_blur_strength
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def job_form_schema() -> dict[str, Any]:
    """The OpenAPI schema of the ``POST /jobs`` multipart body, from the same models that validate
    it (so clients and fuzzers see the real vocabularies and bounds)."""
    option_props = Options.model_json_schema()["properties"]
    props: dict[str, Any] = {
        "video": {"type": "string", "format": "binary", "description": "the video (any container FFmpeg reads)"},
        "background": {"type": "string", "format": "binary", "description": "background image or video"},
    }
    for name in API_OPTION_FIELDS:
        prop = {k: v for k, v in option_props[name].items() if k != "title"}
        props[name] = prop
    props["keep_points"] = {  # a form field is text: "x,y;x,y" (the JSON body sends the same string)
        "type": "string", "maxLength": 200, "description": option_props["keep_points"]["description"],
    }
    props["model"]["description"] += " (default: the service's setting)"
    props["model"].pop("default", None)
    props["callback_url"] = {
        "type": "string", "maxLength": MAX_URL_CHARS, "description": JobForm.model_fields["callback_url"].description,
    }
    props["background_color"] = {
        "type": "string", "pattern": "^#[0-9A-Fa-f]{6}$", "description": JobForm.model_fields["background_color"].description,
    }
    props["background_blur"] = {
        "type": "boolean", "default": False, "description": JobForm.model_fields["background_blur"].description,
    }
    props["background_blur_strength"] = {
        "type": "number", "minimum": BLUR_STRENGTH_MIN, "maximum": BLUR_STRENGTH_MAX, "default": BLUR_STRENGTH_DEFAULT,
        "description": JobForm.model_fields["background_blur_strength"].description,
    }
    return {
        "type": "object",
        "required": ["video"],
        "properties": props,
        "additionalProperties": False,
    }


class ProgressPublic(BaseModel):
    frames_done: int = Field(description="Frames written so far (a chunked job: the sum over its chunks)")
    frames_total: int
    percent: float
    chunks_total: int = Field(0, description="Chunks the video was cut into across workers; 0 when it runs as one task")
    chunks_done: int = Field(0, description="Chunks finished")


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
    options: dict[str, str | float | list[list[int]]]
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
