"""Per-job choices the pipeline derives when nobody set them: edge correction and codec threads."""

from __future__ import annotations

from service.config import get_settings
from service.inference.models import create_model
from service.pipeline import ReplaceOptions, codec_threads, edge_refine


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
