"""Video frames for training deeplabv3plus (issue 18): people in motion, with a target for each.

Two sources, both read from the shared data folder:

* the shared videos (``videos/``: ``SHARED_VIDEOS``; not ``odd/``, not ``rotated-tag-90.mp4``), whose
  target is the teacher's alpha (RVM, the service's model class): the teacher runs over *every*
  frame of a clip in order, so its recurrent state is the one it has when it serves that clip; the
  alphas of all frames are cached per clip (``CACHE/NAME.npz``), because that costs minutes on a CPU.
  Of each clip ``pick`` keeps evenly spaced frames, about ``n_frames`` in all, in proportion to the
  clips' lengths (at least ``min_per_clip`` each).
* the DAVIS-style clips of ``videos_gt`` in the ``select`` half only (``export/splits.py``; the
  ``holdout`` half is never read here), every ``davis_stride``-th frame, with their own ground truth
  (also standing in for the teacher's alpha).

Frames are resized once to ``long_side`` (the training's largest scale) before the teacher runs, so
the teacher sees what the student is trained on.  Everything is uint8: RGB frames, 0/255 masks
(the teacher's alpha thresholded at 0.5 for the shared videos), 0–255 teacher alphas.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from export.splits import part_of
from export.train_deeplab import _resize_long

log = logging.getLogger("video_frames")

SHARED_VIDEOS = (
    "walking-audio.mp4",
    "walking-sideways.mp4",
    "desk.mp4",
    "talking-head.mp4",
    "one-by-one-person-detection.mp4",
    "asl/*.mkv",
)


@dataclass
class VideoFrames:
    """Parallel lists: RGB frames, 0/255 masks, 0–255 teacher alphas and a name per frame."""

    imgs: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    teacher: list[np.ndarray] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.imgs)

    def add(self, img: np.ndarray, mask: np.ndarray, teacher: np.ndarray, name: str) -> None:
        self.imgs.append(img)
        self.masks.append(mask)
        self.teacher.append(teacher)
        self.names.append(name)


def shared_videos(videos_dir: Path) -> list[Path]:
    """The shared videos used for training, in a fixed order."""
    out: list[Path] = []
    for pattern in SHARED_VIDEOS:
        found = sorted(videos_dir.glob(pattern))
        if not found:
            raise FileNotFoundError(f"no {pattern} in {videos_dir}")
        out += found
    return out


def frames_of(path: Path, long_side: int, gray: bool = False) -> Iterator[np.ndarray]:
    """The clip's frames in order: RGB uint8 (or one-channel, ``gray``), long side ``long_side``."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise OSError(f"cannot open {path}")
    try:
        while True:
            ok, f = cap.read()
            if not ok:
                return
            f = cv2.cvtColor(f, cv2.COLOR_BGR2GRAY if gray else cv2.COLOR_BGR2RGB)
            if long_side:  # shrunk by area, enlarged bilinearly
                f = _resize_long(f, long_side, cv2.INTER_AREA if max(f.shape[:2]) > long_side else cv2.INTER_LINEAR)
            yield f
    finally:
        cap.release()


def clip_alphas(path: Path, long_side: int, cache: Path, teacher) -> np.ndarray:
    """(T, H, W) uint8: the teacher's alpha for every frame of the clip, run in order with one state
    (cached in ``cache``)."""
    if cache.exists():
        with np.load(cache) as z:
            return z["alpha"]
    state = teacher.new_state()
    out = []
    for f in frames_of(path, long_side):
        matte, state = teacher.predict(f[None], state)
        out.append(np.clip(matte.alpha[0] * 255.0 + 0.5, 0, 255).astype(np.uint8))
    alphas = np.stack(out)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, alpha=alphas)
    tmp.replace(cache)
    return alphas


def pick(lengths: list[int], n_frames: int, min_per_clip: int) -> list[np.ndarray]:
    """Evenly spaced frame indices per clip, ~``n_frames`` in all, in proportion to the lengths."""
    total = sum(lengths)
    out = []
    for n in lengths:
        k = min(n, max(min_per_clip, round(n_frames * n / total)))
        out.append(np.unique(np.linspace(0, n - 1, k).round().astype(int)))
    return out


def load_video_frames(
    data_dir: Path,
    cache_dir: Path,
    n_frames: int,
    long_side: int,
    teacher_name: str = "rvm",
    davis_stride: int = 1,
    min_per_clip: int = 12,
    davis: bool = True,
    videos: list[Path] | None = None,
) -> VideoFrames:
    """~``n_frames`` frames of the shared videos (``videos``: these of them; default all of
    ``SHARED_VIDEOS``) with the teacher's alpha, plus the ``select`` DAVIS clips' frames with their
    ground truth (see the module docstring)."""
    out = VideoFrames()
    t0 = time.time()
    videos = shared_videos(data_dir / "videos") if videos is None else videos
    teacher = None
    alphas = {}
    for v in videos:
        key = v.relative_to(data_dir / "videos").with_suffix("").as_posix().replace("/", "-")
        cache = cache_dir / f"{key}-{teacher_name}-{long_side}.npz"
        if teacher is None and not cache.exists():
            from service.inference.models import create_model

            teacher = create_model(teacher_name)
            teacher.load()
        tv = time.time()
        alphas[key] = (v, clip_alphas(v, long_side, cache, teacher))
        log.info("teacher %s on %s: %d frames (%.0fs)", teacher_name, key, len(alphas[key][1]), time.time() - tv)
    keys = list(alphas)
    chosen = pick([len(alphas[k][1]) for k in keys], n_frames, min_per_clip)
    for key, idx in zip(keys, chosen, strict=True):
        path, a = alphas[key]
        wanted = set(idx.tolist())
        for i, f in enumerate(frames_of(path, long_side)):
            if i in wanted and i < len(a):
                if f.shape[:2] != a[i].shape:
                    raise ValueError(f"{path}: frame {i} is {f.shape[:2]}, its cached alpha {a[i].shape}")
                out.add(f, np.where(a[i] >= 128, 255, 0).astype(np.uint8), a[i], f"vid-{key}-{i:05d}")
    n_shared = len(out)
    if davis:
        gt_dir = data_dir / "videos_gt"
        clips = part_of((p.stem for p in gt_dir.glob("*.mp4") if not p.stem.endswith("_mask")), "select")
        for name in clips:
            frames = frames_of(gt_dir / f"{name}.mp4", long_side)
            masks = frames_of(gt_dir / f"{name}_mask.mp4", long_side, gray=True)
            for i, (f, m) in enumerate(zip(frames, masks, strict=False)):  # up to the shorter, as the bench
                if i % davis_stride == 0:
                    m = np.where(m > 127, 255, 0).astype(np.uint8)
                    out.add(f, m, m, f"davis-{name}-{i:05d}")
    log.info("video frames: %d from %d shared videos, %d from select DAVIS clips (%.0fs)",
             n_shared, len(videos), len(out) - n_shared, time.time() - t0)
    return out
