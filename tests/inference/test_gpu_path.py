"""The GPU worker path (issue 15) on a machine without a GPU: every piece's CPU fallback, and the
parts that run the same on the CPU provider (IO binding, the fixed-ratio RVM, the YUV and blend
graphs, the device pipeline end to end) checked against the ordinary code."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import data_path
from videoutil import alpha_channel, assert_parts_join_to_one_part, frames_rgb, read_back, x264_options

from service.config import Settings
from service.device_pipeline import CORES_PER_ENCODER, covers, device_for, device_parts, run_device
from service.inference import gpu, rvm_export, sessions
from service.inference.compositing import AlphaCompositor
from service.inference.models import get_model
from service.inference.models.rvm_device import DeviceRVM
from service.inference.rvm_export import RATIO_INPUT
from service.media.background import ColorBackground, open_background
from service.media.chunks import chunk_pts
from service.media.decode import iter_frames
from service.media.encode import FORMATS
from service.media.hwdecode import cuda_decode_available, iter_planes, sync_decoder
from service.media.hwencode import device_format, nvenc_available, worker_cores
from service.media.probe import probe_video
from service.options import Options
from service.pipeline import Window, replace_background
from service.segments import MAX_AUTO_PARTS, MIN_FRAMES

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from chunkclip import build_clip  # noqa: E402

#: CI and this machine have no NVIDIA device; on one that has, the probes may say yes.
NO_GPU = not Path("/dev/nvidiactl").exists()
SIZE = (180, 320)  # height, width of the test clip


def make_clip(path: Path, frames: int = 6, colorspace: int | None = None, color_range: int | None = None,
              bars: bool = False) -> Path:
    """The first frames of a shared clip at 320×180, H.264 yuv420p at 30000/1001; with
    ``colorspace`` (AVColorSpace: 1 BT.709, 6 BT.601, 9 BT.2020) and ``color_range`` (1 limited,
    2 full), converted so and tagged so; with ``bars``, saturated colour bars over the top third
    (where the matrix shows: the desk is nearly grey)."""
    rate = Fraction(30000, 1001)
    names = {1: "ITU709", 6: "ITU601", 9: "BT2020"}
    with av.open(str(data_path("videos", "desk.mp4"))) as src, av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = SIZE[1], SIZE[0], "yuv420p"
        tags = {"colorspace": colorspace, "color_range": color_range}
        for name, value in tags.items():
            if value is not None:
                setattr(stream.codec_context, name, value)
        for i, frame in enumerate(src.decode(video=0)):
            if i >= frames:
                break
            if bars:
                rgb = frame.reformat(width=SIZE[1], height=SIZE[0], format="rgb24").to_ndarray()
                colours = [(230, 30, 30), (30, 200, 40), (40, 40, 220), (240, 220, 20), (220, 30, 200), (20, 210, 220)]
                for k, colour in enumerate(colours):
                    rgb[: SIZE[0] // 3, k * SIZE[1] // 6 : (k + 1) * SIZE[1] // 6] = colour
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            small = frame.reformat(width=SIZE[1], height=SIZE[0], format="yuv420p",
                                   dst_colorspace=names.get(colorspace or 0), dst_color_range=color_range)
            for name, value in tags.items():
                if value is not None:
                    setattr(small, name, value)
            small.pts, small.time_base = i, 1 / rate
            out.mux(stream.encode(small))
        out.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("gpu") / "clip.mp4")


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(engine_cache_dir=tmp_path_factory.mktemp("engines"), device_pipeline="on")


@pytest.fixture(scope="module")
def rgb(clip: Path) -> np.ndarray:
    return np.stack([f.image for f in iter_frames(probe_video(clip))])


def test_probes_fall_back_to_the_cpu_without_a_gpu(settings: Settings) -> None:
    assert NO_GPU, "these fallbacks are tested on a machine without an NVIDIA device"
    cpu_settings = settings.model_copy(update={"device_pipeline": "auto"})
    assert gpu.probe_device(cpu_settings).kind == "cpu"
    assert device_for(cpu_settings) is None  # auto: the ordinary path on a CPU
    assert device_for(settings) is not None and device_for(settings).kind == "cpu"  # type: ignore[union-attr]
    assert device_for(settings.model_copy(update={"device_pipeline": "off"})) is None
    assert cuda_decode_available(0) is False
    assert nvenc_available("h264_nvenc", 0) is False
    sync_decoder(0)  # no libcuda: nothing to wait for, and no error


def test_encoder_choice() -> None:
    assert device_format("mp4", nvenc=False) == FORMATS["mp4"]
    nv = device_format("mp4", nvenc=True, device=1)
    assert nv.codec == "h264_nvenc" and nv.options["gpu"] == "1" and "crf" not in nv.options
    assert device_format("webm", nvenc=True) == FORMATS["webm"]  # NVENC does H.264 here only
    assert 1 <= worker_cores() <= len(os.sched_getaffinity(0))


def test_x264_preset_setting_reaches_both_paths(clip: Path, settings: Settings, tmp_path: Path) -> None:
    """``x264_preset`` sets libx264's preset in the ordinary and the device path (x264 writes its
    options into the stream: ``subme`` is 2 at the default ``veryfast``, 1 at ``superfast``);
    NVENC takes no x264 preset."""
    assert device_format("mp4", nvenc=False, x264_preset="superfast").options["preset"] == "superfast"
    assert device_format("mp4", nvenc=True, x264_preset="superfast").codec == "h264_nvenc"
    for mode in ("off", "on"):
        for preset, subme in ((None, "subme=2"), ("superfast", "subme=1")):
            out = tmp_path / f"{mode}-{preset}.mp4"
            update = {"device_pipeline": mode} | ({"x264_preset": preset} if preset else {})
            replace_background(clip, "#204060", out, settings=settings.model_copy(update=update))
            options = x264_options(out)
            assert len(options) == 1 and subme in options[0].split(), (mode, preset, options)


def test_io_binding_on_the_cpu_provider_equals_session_run(settings: Settings, rgb: np.ndarray) -> None:
    runner = DeviceRVM(settings, gpu.Device("cpu"), SIZE, fixed=False)
    alphas = np.stack([runner.step_numpy(f)[0] for f in rgb])
    # the same session fed by session.run, states carried on the host
    z = np.zeros((1, 1, 1, 1), np.float32)
    rec, want = [z] * 4, []
    for f in rgb:
        src = np.ascontiguousarray(f.transpose(2, 0, 1)[None], dtype=np.float32) * (1.0 / 255.0)
        feed = {"src": src, "downsample_ratio": np.array([runner.ratio], np.float32),
                **{f"r{k + 1}i": rec[k] for k in range(4)}}
        _, pha, *rec = runner.session.run(None, feed)
        want.append(pha[0, 0])
    np.testing.assert_array_equal(alphas, np.stack(want))  # recurrent states carried on the binding
    runner.reset()
    np.testing.assert_array_equal(runner.step_numpy(rgb[0])[0], want[0])


def test_fixed_ratio_rvm_equals_the_dynamic_one(
    settings: Settings, rgb: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = DeviceRVM(settings, gpu.Device("cpu"), SIZE, fixed=True)
    graph = onnx.load(str(next(Path(settings.engine_cache_dir).glob("rvm-*-r*-180x320.onnx"))))
    inputs = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input}
    assert RATIO_INPUT not in inputs and inputs["src"] == [1, 3, *SIZE]
    assert all(all(inputs[f"r{k}i"]) for k in range(1, 5))  # static state shapes, kept as inputs
    # the ordinary sessions keep TensorRT away from the published graph only, not from this one
    fixed_file = next(Path(settings.engine_cache_dir).glob("rvm-*-r*-180x320.onnx"))
    assert sessions._dynamic_ratio(get_model("rvm", settings).weights_path)
    assert not sessions._dynamic_ratio(fixed_file)
    dynamic = DeviceRVM(settings, gpu.Device("cpu"), SIZE, fixed=False)
    for frame in rgb:
        a_fixed, fg_fixed = runner.step_numpy(frame)
        a_dyn, fg_dyn = dynamic.step_numpy(frame)
        assert np.abs(a_fixed - a_dyn).max() < 1e-4
        assert np.abs(fg_fixed - fg_dyn).max() < 1e-4
    # made once: the second call (here the ahead-of-time command an image build runs) finds it
    made = list(Path(settings.engine_cache_dir).glob("rvm-*-r*-180x320.onnx"))
    stamp = made[0].stat().st_mtime_ns
    assert rvm_export.main(["--sizes", "320x180", "--out", str(settings.engine_cache_dir)]) == 0
    assert capsys.readouterr().out.split() == [str(made[0])] and made[0].stat().st_mtime_ns == stamp
    assert list(Path(settings.engine_cache_dir).glob("rvm-*-r*-180x320.onnx")) == made


def _run(model: onnx.ModelProto, **feed: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def test_blend_graph_equals_the_numpy_compositor() -> None:
    rng = np.random.default_rng(1)
    h, w = 36, 64
    fgr = rng.random((1, 3, h, w), dtype=np.float32)
    pha = rng.random((1, 1, h, w), dtype=np.float32)
    pha[..., :5, :] = 0.0
    pha[..., -5:, :] = 1.0
    bg = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    out = _run(gpu.blend(h, w, "rgb"), fgr=fgr, pha=pha, bg=bg)
    fg8 = np.clip(fgr[0].transpose(1, 2, 0) * 255 + 0.5, 0, 255).astype(np.uint8)
    ref = AlphaCompositor()(fg8, pha[0, 0], bg, fg8)
    assert out.shape == ref.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - ref).max() <= 1  # the numpy path rounds F to uint8 first
    # the I420 output is the same composite converted on the device (BT.601, limited, 2×2 mean)
    i420 = _run(gpu.blend(h, w, "i420"), fgr=fgr, pha=pha, bg=bg)
    m, off = gpu.rgb_to_ycbcr("bt601")
    exact = fgr[0].transpose(1, 2, 0) * 255 * pha[0, 0, ..., None] + bg * (1 - pha[0, 0, ..., None])
    y = exact @ m[0] + off[0]
    pooled = exact.reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
    cb, cr = pooled @ m[1] + off[1], pooled @ m[2] + off[2]
    want = np.concatenate([y.ravel(), cb.ravel(), cr.ravel()]).reshape(h * 3 // 2, w)
    assert np.abs(i420.astype(float) - want).max() <= 0.51
    # the matte output: the alpha rounded to 8 bits, as grey in I420, as the ordinary path's encoder gets it
    grey = np.repeat(np.clip(pha[0, 0] * 255 + 0.5, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    ordinary = av.VideoFrame.from_ndarray(grey, format="rgb24").reformat(format="yuv420p").to_ndarray()
    assert np.abs(_run(gpu.matte(h, w), pha=pha).astype(int) - ordinary).max() <= 1


def test_decoder_falls_back_to_the_cpu_with_the_same_frames(clip: Path) -> None:
    info = probe_video(clip)
    planes = list(iter_planes(info, nvdec=False, on_device=False))
    frames = list(iter_frames(info))
    assert [(p.pts, p.duration) for p in planes] == [(f.pts, f.duration) for f in frames]
    with av.open(str(clip)) as c:
        for p, frame in zip(planes, c.decode(video=0), strict=True):
            assert p.layout == "i420" and not p.on_device
            for name, k in (("y", 0), ("u", 1), ("v", 2)):
                want = frame.to_ndarray(format="yuv420p")  # planes one after another, unpadded
                h, w = info.height, info.width
                spans = {0: (0, h * w), 1: (h * w, h * w * 5 // 4), 2: (h * w * 5 // 4, h * w * 3 // 2)}
                a, b = spans[k]
                pw = w if k == 0 else w // 2
                got = p.planes[name][:, :pw]
                np.testing.assert_array_equal(got.ravel(), want.ravel()[a:b])
    # the YUV graph gives the RGB the ordinary decoder gives, within the chroma upsampling's error
    convert = gpu.yuv_to_src("i420", info.height, info.width)
    src = _run(convert, **planes[0].planes)
    diff = np.abs(src[0].transpose(1, 2, 0) * 255 - frames[0].image)
    assert diff.mean() < 2.0 and np.percentile(diff, 99) < 12


@pytest.mark.parametrize("colorspace,color_range", [(1, 1), (9, 1), (6, 2)])
def test_the_yuv_graph_reads_each_video_as_its_decoder_does(tmp_path: Path, colorspace: int, color_range: int) -> None:
    """BT.709 (most HD video), BT.2020, and a full-range BT.601 video (phones, MJPEG): the device
    path's YUV → RGB gives the RGB the ordinary decoder gives.  All were read as limited-range
    BT.601 before, which moves each by several levels."""
    info = probe_video(make_clip(tmp_path / "clip.mp4", 1, colorspace, color_range, bars=True))
    assert info.colorspace == colorspace
    plane = next(iter(iter_planes(info, nvdec=False, on_device=False)))
    want = next(iter(iter_frames(info))).image.astype(np.float64)

    def error(matrix: str, planes: dict) -> float:  # type: ignore[type-arg]
        src = _run(gpu.yuv_to_src(plane.layout, info.height, info.width, matrix), **planes)
        return float(np.abs(src[0].transpose(1, 2, 0) * 255 - want).mean())

    assert error(gpu.matrix_for(info.colorspace), plane.planes) < 1.5
    with av.open(str(info.path)) as c:  # the same frame as it is stored, read as limited-range BT.601
        stored = next(c.decode(video=0)).to_ndarray(format="yuv420p")
    h, w = info.height, info.width
    raw = {"y": stored[:h], "u": stored[h:].reshape(h, w // 2)[: h // 2], "v": stored[h:].reshape(h, w // 2)[h // 2:]}
    assert error("bt601", raw) > 2 * error(gpu.matrix_for(info.colorspace), plane.planes)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return 10 * np.log10(255**2 / max(mse, 1e-9))


def test_device_path_on_the_cpu_matches_the_ordinary_pipeline(clip: Path, settings: Settings, tmp_path: Path) -> None:
    bg = str(data_path("backgrounds", "bg_1.jpg"))
    ordinary, device = tmp_path / "ordinary.mp4", tmp_path / "device.mp4"
    replace_background(clip, bg, ordinary, settings=settings.model_copy(update={"device_pipeline": "off"}))
    seen: list[int] = []
    result = replace_background(clip, bg, device, settings=settings, progress=lambda done, total: seen.append(done))
    a, b = read_back(ordinary), read_back(device)
    assert result.frames == a.frames == b.frames == 6 and seen[-1] == 6
    assert a.pts_s == b.pts_s and abs(a.duration_s - b.duration_s) < 1e-6
    fa, fb = frames_rgb(ordinary), frames_rgb(device)
    for i in fa:
        assert _psnr(fa[i], fb[i]) > 30, i
    # auto on a CPU takes the ordinary path: the very same file
    auto = tmp_path / "auto.mp4"
    replace_background(clip, bg, auto, settings=settings.model_copy(update={"device_pipeline": "auto"}))
    assert all(np.array_equal(fa[i], f) for i, f in frames_rgb(auto).items())


def test_device_path_covers_only_what_it_can(clip: Path, settings: Settings, tmp_path: Path) -> None:
    info = probe_video(clip)
    model = get_model("rvm", settings)
    plate = ColorBackground((0, 177, 64), info.width, info.height)
    assert covers(Options(), model, info, plate, settings) is None
    assert covers(Options(output_format="greenscreen"), model, info, plate, settings) is None
    assert covers(Options(output_format="matte"), model, info, None, settings) is None
    assert covers(Options(output_format="webm"), model, info, None, settings) == "output webm"
    assert covers(Options(composite="poisson"), model, info, plate, settings) == "compositor poisson"
    blur = open_background("blur", info.width, info.height, settings)
    assert covers(Options(), model, info, blur, settings) == "a background computed from the frame"
    assert covers(Options(), get_model("deeplabv3plus", settings), info, plate, settings) == "model deeplabv3plus"
    # what it does not cover runs the ordinary path: the same file as with the device path off
    outs = []
    for mode in ("on", "off"):
        out = tmp_path / f"{mode}.mp4"
        replace_background(clip, "blur", out, settings=settings.model_copy(update={"device_pipeline": mode}))
        outs.append(frames_rgb(out))
    assert all(np.array_equal(outs[0][i], outs[1][i]) for i in outs[0])


def test_device_path_reports_what_ran(clip: Path, settings: Settings, tmp_path: Path) -> None:
    info = probe_video(clip)
    out = tmp_path / "green.mp4"
    count = run_device(info, ColorBackground((0, 177, 64), info.width, info.height), out,
                       Options(output_format="greenscreen"), settings, gpu.Device("cpu"))
    assert (count.decoder, count.encoder, count.providers) == ("cpu", "libx264", ("CPUExecutionProvider",))
    assert count.count == read_back(out).frames == 6


def test_device_path_matte_matches_the_ordinary_one(clip: Path, settings: Settings, tmp_path: Path) -> None:
    mattes = []
    for mode in ("off", "on"):
        out = tmp_path / f"{mode}.mp4"
        replace_background(clip, None, out, Options(output_format="matte"),
                           settings=settings.model_copy(update={"device_pipeline": mode}))
        mattes.append(alpha_channel(out))
    assert mattes[0].shape == mattes[1].shape == (6, *SIZE)
    # the model's input differs by the chroma upsampling only: the mattes agree closely
    assert np.abs(mattes[0] - mattes[1]).mean() < 0.01


def test_device_path_chunk_window_and_video_background(clip: Path, settings: Settings, tmp_path: Path) -> None:
    """A chunk of a longer video (issue 16's Window: warm-up frames run the model and are dropped) on a
    looping video background: the frames and timestamps the ordinary path writes, about the same picture."""
    info = probe_video(clip)
    pts = [f.pts for f in iter_frames(info)]
    window = Window(info, model_from_pts=pts[1], start_pts=pts[3], end_pts=pts[5])
    background = str(make_clip(tmp_path / "bg.mp4", frames=3))  # shorter than the clip: it loops
    outs = {}
    for mode in ("off", "on"):
        out = outs[mode] = tmp_path / f"{mode}.mp4"
        result = replace_background(clip, background, out, window=window,
                                    settings=settings.model_copy(update={"device_pipeline": mode}))
        assert result.frames == 2
    a, b = read_back(outs["off"]), read_back(outs["on"])
    assert a.pts_s == b.pts_s and a.frames == b.frames == 2
    fa, fb = frames_rgb(outs["off"]), frames_rgb(outs["on"])
    assert all(_psnr(fa[i], fb[i]) > 30 for i in fa)


def test_device_parts_rule(settings: Settings) -> None:
    """A GPU worker without NVENC cuts a video into one part a ``CORES_PER_ENCODER`` cores (at most
    ``MAX_AUTO_PARTS``, never under ``MIN_FRAMES`` frames a part); NVENC, or ``segments=1``, never."""
    info = replace(probe_video(data_path("videos", "desk.mp4")), frames=600)
    auto = settings.model_copy(update={"segments": 0})
    assert device_parts(auto, info, nvenc=False, cores=16) == 4
    assert device_parts(auto, info, nvenc=False, cores=8) == 2
    assert device_parts(auto, info, nvenc=False, cores=2) == 1  # CI's runner, and this machine
    assert device_parts(auto, info, nvenc=True, cores=16) == 1
    assert device_parts(auto, replace(info, frames=MIN_FRAMES * 2 + 5), nvenc=False, cores=16) == 2
    assert device_parts(settings.model_copy(update={"segments": 1}), info, nvenc=False, cores=16) == 1
    assert device_parts(settings.model_copy(update={"segments": 3}), info, nvenc=False, cores=2) == 3
    assert CORES_PER_ENCODER * MAX_AUTO_PARTS <= 16


def test_device_path_in_parts_joins_to_the_one_part_run(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The device path in two parts side by side (a seek to the second part's keyframe, a warm-up,
    the join with the audio muxed once): the one-part run's timestamps and audio, its matte equal
    before the seam and close after it."""
    clip = build_clip(data_path("videos", "talking-head.mp4"), tmp_path / "clip.mp4", 20, 128, gop=25, fps=15)
    matte = Options(output_format="matte")
    one, two = (settings.model_copy(update={"segments": n}) for n in (1, 2))
    replace_background(clip, None, tmp_path / "one.mp4", matte, settings=one)
    seen: list[int] = []
    with caplog.at_level(logging.INFO):
        r = replace_background(clip, None, tmp_path / "two.mp4", matte, settings=two,
                               progress=lambda done, total: seen.append(done))
    assert "2 parts" in caplog.text and caplog.text.count("device path: ") == 2
    n = len(chunk_pts(clip))
    assert r.frames == n and seen[-1] == n
    assert_parts_join_to_one_part(clip, tmp_path / "one.mp4", tmp_path / "two.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "one.mp4", "two.mp4"]
