"""Per-job choices the pipeline derives when nobody set them: edge correction and codec threads."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest
from conftest import data_path
from videoutil import remux

from service.config import get_settings
from service.inference.models import create_model
from service.pipeline import ReplaceOptions, codec_threads, edge_refine, replace_background


def _cpu_settings(**update: object):
    return get_settings().model_copy(update={"providers": ["CPUExecutionProvider"], **update})


def test_edge_refine_follows_job_then_setting_then_model() -> None:
    settings = _cpu_settings()
    rvm, deeplab = create_model("rvm", settings), create_model("deeplabv3plus", settings)
    assert edge_refine(ReplaceOptions(), settings, rvm) is False
    assert edge_refine(ReplaceOptions(), settings, deeplab) is True
    assert edge_refine(ReplaceOptions(edge_refine=True), settings, rvm) is True
    assert edge_refine(ReplaceOptions(), _cpu_settings(edge_refine=True), rvm) is True
    assert edge_refine(ReplaceOptions(edge_refine=False), _cpu_settings(edge_refine=True), deeplab) is False


def test_codecs_get_one_thread_each_beside_a_cpu_model_unless_set() -> None:
    settings = _cpu_settings()
    model = create_model("rvm", settings)
    assert model.providers[0] == "CPUExecutionProvider"
    assert codec_threads(model, settings) == (1, 1)
    assert codec_threads(model, _cpu_settings(decode_threads=3, encode_threads=2)) == (3, 2)


def _threads() -> dict[str, str]:
    """This process's threads: id -> name."""
    names = {}
    for task in os.listdir("/proc/self/task"):
        try:
            names[task] = Path(f"/proc/self/task/{task}/comm").read_text().strip()
        except OSError:  # the thread ended meanwhile
            pass
    return names


def _thread_names(before: dict[str, str]) -> set[str]:
    """The names of this process's threads, but those already running ``before`` (an earlier
    test's decoder that the garbage collector has not freed yet is not this job's)."""
    return {name for task, name in _threads().items() if task not in before}


@pytest.mark.parametrize(("parts", "seconds"), [(1, 1.0), (2, 6.6)])
def test_a_background_video_is_decoded_with_the_jobs_decoder_threads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, parts: int, seconds: float
) -> None:
    """Beside a CPU model every decoder of a job has one thread, the background video's too (in each
    part where the video runs in parts): FFmpeg's frame threads each hold frames of their own (a 4K
    background's three took 50 MB more).  FFmpeg names the frame threads it starts
    ``av:<codec>:df<n>``; none may run while the job does."""
    clip = remux(data_path("videos", "desk.mp4"), tmp_path / "in.mp4", seconds)
    background = data_path("videos", "walking-sideways.mp4")
    settings = get_settings().model_copy(update={"providers": ["CPUExecutionProvider"], "segments": parts,
                                                 "progress_interval_s": 0.0})
    seen: set[str] = set()
    before = _threads()
    with caplog.at_level(logging.INFO, logger="service.segments"):
        replace_background(clip, str(background), tmp_path / "out.mp4", settings=settings,
                           progress=lambda done, total: seen.update(_thread_names(before)))
    assert ("runs in 2 parts" in caplog.text) == (parts == 2)
    assert seen  # looked at while the job ran
    assert not [name for name in seen if re.fullmatch(r"av:\w+:df\d+", name)], seen
