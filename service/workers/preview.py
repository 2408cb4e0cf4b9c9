"""The preview task: one still frame → the person cut out (RGBA PNG) and the frame as the chosen
output shows it (JPEG), on the ``preview`` queue.

That queue has a worker of its own (prefork, one slot, the default model loaded once when its
process starts, by ``tasks._load_models``), so a preview never waits behind a video job.  The frame
goes through the same steps, in the same order and with the same code, as the first frame of a
job: the model with a fresh recurrent state, edge refinement, harmonisation, then the pipeline's
own compositing (``service.pipeline.compose_batch``) — so what the preview shows is what the job's first
frame will be.

``sweep_previews`` (on the light queue, on the beat's timer) deletes the objects of expired
previews.  Import-light at module level: every worker imports this module.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from service.config import Settings, get_settings
from service.errors import BackdropError, InputError, InvalidFrame
from service.jobs import JobError, utcnow
from service.options import SCENE_FORMATS, blur_spec
from service.previews import COMPOSITE, CUTOUT, Preview, PreviewStatus, PreviewStore, preview_prefix
from service.spool import Workdir
from service.workers.celery_app import PEOPLE_CHECK_TASK, PREVIEW_SWEEP_TASK, PREVIEW_TASK, app
from service.workers.tasks import job_store, object_store

log = logging.getLogger(__name__)


def preview_store() -> PreviewStore:
    return PreviewStore(job_store().r, get_settings())


def read_frame(path: Path, settings: Settings) -> Any:
    """The frame as RGB uint8, its header checked before it is decoded and its decoded size
    against the header (headers can lie)."""
    import cv2
    import numpy as np

    from service.media.inspect import ImageHeaderError, check_frame_size, read_image_header

    try:
        header = read_image_header(path)
    except ImageHeaderError as exc:
        raise InvalidFrame(f"the frame: {exc}") from None
    if header.format not in ("png", "jpeg") or header.frames != 1:
        raise InvalidFrame("the frame must be one PNG or JPEG picture")
    if header.unsupported:
        raise InvalidFrame(f"the frame: {header.unsupported}")
    check_frame_size(header.width, header.height, settings, InvalidFrame)
    image = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise InvalidFrame(f"the {header.format.upper()} frame cannot be decoded")
    if image.shape[0] * image.shape[1] > header.width * header.height:
        raise InvalidFrame("the frame is larger than its header declares")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def render(image: Any, background: str | None, options: Any, settings: Settings) -> tuple[Any, Any | None, Any]:
    """(cut-out RGBA, what the output format shows or None for webm/mov, the alpha of everyone on
    it) of one RGB frame.

    The steps of ``service.pipeline._run`` for a first batch of one frame, and its compositing: with
    the people the options choose (``keep_points``, ``people``), as the job will show them (they
    were ignored: a preview with one person chosen showed both); the alpha before that choice
    lists everyone, so the page can offer the others."""
    import numpy as np

    from service.inference.compositing import create_compositor
    from service.inference.harmonize import Harmonizer
    from service.inference.models import get_model
    from service.inference.refine import EdgeRefiner
    from service.media.encode import FORMATS
    from service.options import background_kind
    from service.pipeline import Batch, background_for, compose_batch, edge_refine, people_selection

    options = options.with_background(background_kind(background))
    model = get_model(options.model, settings)
    h, w = image.shape[:2]
    fmt = options.output_format
    source = background_for(fmt, background, w, h, settings)
    try:
        images = image[None]
        plate = None if source is None else np.ascontiguousarray(source.frames(images, [0.0]))
    finally:
        if source is not None:
            source.close()
    batch = Batch(images, [0], [1], plate)
    matte, _ = model.predict(images, model.new_state())
    everyone = matte.alpha if not edge_refine(options, settings, model) else EdgeRefiner()(images, matte.alpha)
    selection = people_selection(options, settings)
    alpha = everyone if selection is None else selection(images, everyone)
    fg = matte.foreground
    if options.harmonize > 0 and plate is not None:
        fg = Harmonizer(options.harmonize, settings)(images if fg is None else fg, alpha, plate)
    compositor = create_compositor(options.composite)
    cutout = compose_batch(True, "webm", batch, alpha, fg, compositor)[0]
    shown = None if FORMATS[fmt].alpha else compose_batch(False, fmt, batch, alpha, fg, compositor)[0]
    return cutout, shown, everyone[0]


def _write(path: Path, image: Any, rgba: bool) -> None:
    import cv2

    code = cv2.COLOR_RGBA2BGRA if rgba else cv2.COLOR_RGB2BGR
    params = [cv2.IMWRITE_PNG_COMPRESSION, 3] if rgba else [cv2.IMWRITE_JPEG_QUALITY, 90]
    ok, buf = cv2.imencode(path.suffix, cv2.cvtColor(image, code), params)
    if not ok:
        raise RuntimeError(f"could not encode {path.name}")
    path.write_bytes(buf.tobytes())


@app.task(name=PREVIEW_TASK, acks_late=False, ignore_result=True)
def make_preview(preview_id: str) -> str:
    """Render one preview (see the module doc); its record says how it ended."""
    from service.options import Options

    settings = get_settings()
    store = preview_store()
    preview = store.get(preview_id)
    if preview is None or preview.status is not PreviewStatus.QUEUED:
        return "skipped"  # expired before a worker got to it, or a duplicate delivery
    preview.status = PreviewStatus.RUNNING
    store.save(preview)
    t0 = time.monotonic()
    held = Workdir(f"preview-{preview_id[:8]}-", settings.spool_dir)
    try:
        _render_to_store(preview, held.path, Options.parse(**preview.options), settings)
        preview.status = PreviewStatus.SUCCEEDED
    except BackdropError as e:
        preview.status, preview.error = PreviewStatus.FAILED, JobError(code=e.code, message=e.message[:1000])
    except Exception as e:  # noqa: BLE001 - reported on the preview, logged in full here
        log.exception("preview %s failed", preview_id)
        preview.status = PreviewStatus.FAILED
        preview.error = JobError(code="internal_error", message=f"{type(e).__name__}: {e}"[:1000])
    finally:
        held.remove()
    preview.finished_at = utcnow()
    preview.seconds = round(time.monotonic() - t0, 3)
    store.save(preview)
    return preview.status.value


def _render_to_store(preview: Preview, workdir: Path, options: Any, settings: Settings) -> None:
    objects = object_store()
    frame = workdir / f"frame{Path(preview.frame_key).suffix}"
    objects.get_file(preview.frame_key, frame)
    image = read_frame(frame, settings)
    background = preview.background_color
    if preview.background_key and options.output_format in SCENE_FORMATS:  # else not shown: not fetched
        path = workdir / f"background{Path(preview.background_key).suffix}"
        objects.get_file(preview.background_key, path)
        background = str(path)
    elif options.background == "blur":
        background = blur_spec(preview.background_blur_strength)
    cutout, shown, everyone = render(image, background, options, settings)
    _write(workdir / CUTOUT, cutout, rgba=True)
    objects.put_file(preview.prefix + CUTOUT, workdir / CUTOUT, "image/png")
    if shown is not None:
        _write(workdir / COMPOSITE, shown, rgba=False)
        objects.put_file(preview.prefix + COMPOSITE, workdir / COMPOSITE, "image/jpeg")
    preview.has_composite = shown is not None
    preview.people = people_of(image, everyone, settings)


def people_of(image: Any, alpha: Any, settings: Settings) -> list[dict[str, Any]]:
    """The people on the frame (choosing who stays, issue 14), split by the preview's own matte
    (everyone's, before a choice of people), as JSON-ready dicts."""
    from dataclasses import asdict

    from service.inference.people import first_frame_people

    return [asdict(p) for p in first_frame_people(image, alpha, settings)]


@app.task(name=PEOPLE_CHECK_TASK, acks_late=False, ignore_result=True)
def check_people(check_id: str, input_key: str, options: dict[str, Any]) -> str:
    """A job's choice of people checked on its stored video's first frame, while ``POST /jobs``
    waits (``service.people_check``): the frame is found and split as the job will do it."""
    from service.options import Options
    from service.people_check import CheckAnswer, answer
    from service.pipeline import first_frame_people

    settings = get_settings()
    held = Workdir(f"check-{check_id[:8]}-", settings.spool_dir)
    try:
        video = held.path / f"input{Path(input_key).suffix}"
        object_store().get_file(input_key, video)
        found = first_frame_people(video, Options.parse(**options), settings=settings)
        verdict = CheckAnswer(ok=True, people=len(found))
    except BackdropError as e:
        # an input error refuses the POST with its own code; anything else leaves it to the job
        verdict = CheckAnswer(ok=False, code=e.code if isinstance(e, InputError) else None, message=e.message[:1000])
    except Exception as e:  # noqa: BLE001 - the check could not run: the job's worker decides
        log.exception("people check %s failed", check_id)
        verdict = CheckAnswer(ok=False, message=f"{type(e).__name__}: {e}"[:1000])
    finally:
        held.remove()
    answer(job_store().r, check_id, verdict)
    return "ok" if verdict.ok else str(verdict.code)


@app.task(name=PREVIEW_SWEEP_TASK, acks_late=False, ignore_result=True)
def sweep_previews() -> int:
    """The preview sweeper, on the light queue every ``housekeeping_interval_s`` (the beat)."""
    return sweep(preview_store(), object_store())


def sweep(store: PreviewStore, objects: Any) -> int:
    """Delete the objects of expired previews (their records expire by TTL); an id whose objects
    could not be deleted stays listed for the next sweep.  Returns how many were swept."""
    done: list[str] = []
    for pid in store.expired_ids():
        try:
            objects.delete_prefix(preview_prefix(pid))
            done.append(pid)
        except Exception:  # noqa: BLE001 - storage away: the next sweep tries again
            log.warning("could not delete the objects of preview %s", pid, exc_info=True)
    store.forget(done)
    return len(done)
