"""The one options model: what a job (or ``backdrop replace``) may ask for, and which combinations
make sense.  The API validates a request with it before accepting the upload, and the pipeline
validates with it again before it decodes a frame, so a job the API accepted is never refused by a
worker for its options.

Import-light on purpose (pydantic only): the API imports it and must not pull in numpy or ONNX.
The vocabularies are written out here; a test keeps them equal to the model registry
(``service.inference.models.ModelName``), the compositors (``CompositorName``) and the encoder's
formats (``service.media.encode.FORMATS``).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.errors import (
    IncompatibleOptions,
    InvalidBackground,
    InvalidColor,
    InvalidParameter,
    UnknownModel,
)

ModelName = Literal["rvm", "deeplabv3plus"]
OutputFormat = Literal["mp4", "webm", "mov", "matte", "greenscreen"]
CompositorName = Literal["alpha", "poisson"]
#: ``none``: no background given (allowed only where the output shows none).
BackgroundKind = Literal["file", "color", "blur", "none"]
#: ``all``: everyone in the matte stays (the default); ``largest``: only the person owning most of the
#: first frame's matte.
PeopleChoice = Literal["all", "largest"]
MAX_KEEP_POINTS = 6  # the person detector finds at most six people
#: Blur strength of a ``blur`` background: 0.3 is the blur the service always had (a Gaussian sigma
#: of 0.3/40 of the frame's longer side, at least 2 pixels of the quarter-size frame); larger is blurrier.
BLUR_STRENGTH_DEFAULT = 0.3
BLUR_STRENGTH_MIN, BLUR_STRENGTH_MAX = 0.05, 1.0

MODEL_NAMES: tuple[str, ...] = get_args(ModelName)
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)
COMPOSITORS: tuple[str, ...] = get_args(CompositorName)
#: Output formats whose frames show the person on a background scene: only these need a background,
#: and only these give harmonisation a scene to match (webm/mov carry alpha, matte is the mask
#: itself, greenscreen is plain green).
SCENE_FORMATS = frozenset({"mp4"})
_HEX = frozenset("0123456789abcdefABCDEF")


class Options(BaseModel):
    """What a caller may choose for one video; invalid values and combinations raise a
    ``BackdropError`` with a precise code (see ``parse``)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), frozen=True)

    model: ModelName = Field("rvm", description="Matting model: " + ", ".join(MODEL_NAMES))
    output_format: OutputFormat = Field("mp4", description="Output: " + ", ".join(OUTPUT_FORMATS))
    composite: CompositorName = Field("alpha", description="Compositor: " + ", ".join(COMPOSITORS))
    harmonize: float = Field(
        0.0, ge=0.0, le=1.0, allow_inf_nan=False,
        description="Colour harmonisation strength, 0 (off) to 1; needs an output with a background (mp4)",
    )
    edge_refine: bool | None = Field(None, description="Refine mask edges; None: the setting, else the model's default")
    background: BackgroundKind | None = Field(
        None, description="Which background the job has; None while not known yet (checked again once it is)"
    )

    keep_points: tuple[tuple[int, int], ...] = Field(
        (), max_length=MAX_KEEP_POINTS,
        description="Keep only the people under these (x, y) pixels of the first, upright frame; "
        "also accepted as 'x,y;x,y'",
    )
    people: PeopleChoice = Field("all", description="Who stays: all, or only the largest person")

    @field_validator("keep_points", mode="before")
    @classmethod
    def _points(cls, value: Any) -> Any:
        return parse_points(value) if isinstance(value, str) else value

    @property
    def selects_people(self) -> bool:
        """Whether only some people stay (the person detector runs); False keeps today's output."""
        return bool(self.keep_points) or self.people != "all"

    @model_validator(mode="after")
    def _combinations(self) -> Options:
        if self.keep_points and self.people != "all":
            raise IncompatibleOptions("give keep_points or people=largest, not both")
        if any(x < 0 or y < 0 for x, y in self.keep_points):
            raise InvalidParameter(f"keep_points: pixel coordinates are not negative, got {_points_text(self.keep_points)}")
        if self.harmonize > 0 and self.output_format not in SCENE_FORMATS:
            raise IncompatibleOptions(
                f"harmonize matches the person to a background scene, which {self.output_format} output does not "
                f"have: use it with {' or '.join(sorted(SCENE_FORMATS))}, or set harmonize to 0"
            )
        if self.background == "none" and self.output_format in SCENE_FORMATS:
            raise InvalidBackground(
                f"{self.output_format} output needs a background: an image or video file, a #RRGGBB colour or blur"
            )
        return self

    @classmethod
    def parse(cls, **values: Any) -> Options:
        """Validate, turning pydantic's errors into ours (``unknown_model``, ``invalid_parameter``);
        combinations raise ``incompatible_options`` / ``invalid_background`` from the validator."""
        try:
            return cls(**values)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "options"
            if field == "model":
                raise UnknownModel(
                    f"unknown model {_short(first.get('input'))}; choose one of: {', '.join(MODEL_NAMES)}"
                ) from None
            raise InvalidParameter(f"{field}: {first['msg']}") from None

    def with_background(self, kind: BackgroundKind) -> Options:
        """These options with the background now known, validated again (same rules)."""
        return self.parse(**{**self.model_dump(), "background": kind})


def check_color(value: str) -> str:
    """``#RRGGBB`` or ``InvalidColor``."""
    if not (len(value) == 7 and value[0] == "#" and set(value[1:]) <= _HEX):
        raise InvalidColor(f"a background colour is #RRGGBB, not {_short(value)}")
    return value


def background_kind(spec: str | None) -> BackgroundKind:
    """The kind of a background given as one string (the CLI's ``-b`` and the worker's spec): a
    file path, ``#RRGGBB``, ``blur``, ``blur:<strength>`` or None.  A colour and a blur strength are
    checked here."""
    if spec is None or spec == "":
        return "none"
    if blur_strength(spec) is not None:
        return "blur"
    if spec.startswith("#"):
        check_color(spec)
        return "color"
    return "file"


def blur_strength(spec: str) -> float | None:
    """The strength of a ``blur`` / ``blur:<strength>`` spec (``blur`` is ``BLUR_STRENGTH_DEFAULT``),
    None for any other spec; ``InvalidParameter`` for a strength that is not a number in range."""
    name, sep, value = spec.strip().partition(":")
    if name.lower() != "blur":
        return None
    if not sep:
        return BLUR_STRENGTH_DEFAULT
    return check_blur_strength(value)


def check_blur_strength(value: str | float) -> float:
    """A blur strength as a float in [BLUR_STRENGTH_MIN, BLUR_STRENGTH_MAX], or ``InvalidParameter``."""
    text = str(value).strip()
    try:
        strength = float(text) if text.isascii() else float("nan")  # float() also reads Arabic digits
    except ValueError:
        strength = float("nan")
    if not BLUR_STRENGTH_MIN <= strength <= BLUR_STRENGTH_MAX:  # NaN is refused here too
        raise InvalidParameter(
            f"a blur strength is a number from {BLUR_STRENGTH_MIN} to {BLUR_STRENGTH_MAX}, not {_short(value)}"
        )
    return strength


def blur_spec(strength: float | None) -> str:
    """The background spec of a blur: ``blur`` (the default strength) or ``blur:<strength>``."""
    return "blur" if strength is None else f"blur:{strength}"


def form_background_kind(has_file: bool, color: str | None, blur: bool) -> BackgroundKind:
    """The kind of a background given as the API's three form inputs: at most one of them."""
    choices: tuple[tuple[BackgroundKind, object], ...] = (("file", has_file), ("color", color), ("blur", blur))
    given = [kind for kind, value in choices if value]
    if len(given) > 1:
        raise InvalidBackground(
            "give one background: a 'background' file, 'background_color' or 'background_blur=true', not "
            + " and ".join(given)
        )
    if color:
        check_color(color)
    return given[0] if given else "none"


def parse_points(text: str) -> tuple[tuple[int, int], ...]:
    """``"x,y;x,y"`` (whole pixels; spaces allowed) → ((x, y), ...); ``InvalidParameter`` otherwise."""
    points = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        xy = [c.strip() for c in part.split(",")]
        if len(xy) != 2 or not all(c.isascii() and c.isdigit() for c in xy):
            raise InvalidParameter(f"keep_points: a point is x,y in whole pixels (points joined by ';'), not {_short(part)}")
        points.append((int(xy[0]), int(xy[1])))
    return tuple(points)


def _points_text(points: tuple[tuple[int, int], ...]) -> str:
    return ";".join(f"{x},{y}" for x, y in points)


def _short(value: object) -> str:
    return repr(value if not isinstance(value, str) else value[:40])


__all__ = [
    "BLUR_STRENGTH_DEFAULT", "BLUR_STRENGTH_MAX", "BLUR_STRENGTH_MIN", "COMPOSITORS", "MODEL_NAMES",
    "OUTPUT_FORMATS", "SCENE_FORMATS", "BackgroundKind", "Options", "background_kind", "blur_spec",
    "blur_strength", "check_blur_strength", "check_color", "form_background_kind", "parse_points",
]
