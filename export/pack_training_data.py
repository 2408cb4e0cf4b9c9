"""Pack what ``export/train_deeplab.py`` reads into pieces small enough to carry to a bare GPU machine.

A lent GPU machine (see the README's GPU section) reaches no data: everything a run reads travels
with the call, at most ~30 MiB a call beside the ~33 MB working tree.  The shared data folder is 150 MB,
but a run reads far less of it, so this writes a data folder of the same layout that holds only that:

* ``portraits/train``: images shrunk to ``--long-side`` (the training's largest scale: ``load_split``
  shrinks them to it anyway; JPEG quality 88) and masks shrunk the way ``load_split`` does;
* the ``select`` half of ``portraits/val`` as it is (checkpoint selection); the ``holdout`` half only
  as empty files of the same names, because ``export/splits`` cuts a folder in two by rank among the
  names present: without them the run would take half of ``select`` for it (the same for the clips);
* ``backgrounds`` at the long side ``load_backgrounds`` uses;
* the shared videos ``export/video_frames.py`` trains on, and the ``select`` DAVIS clips, as they are
  (the ``holdout`` clips as empty files);

and beside it, in ``caches/``, the teacher's alphas a run with ``--teacher rvm`` would otherwise
compute (RVM, which the GPU machine does not have): the portraits' (``teacher-rvm-SIZE.npz``,
recompressed) and the videos' (``video-teacher/``); copy them into the run's ``--out``.  They are
taken from ``--teacher-from`` (a ``train_deeplab`` ``--out`` folder that has them, or ``runs/teacher``),
and computed there first where they are missing, with train_deeplab's own functions (RVM on this
machine: about 3.5 minutes on 2 cores).

Files are tarred in an order that lets the first piece alone train a smoke run (``--limit``): val,
backgrounds, then each training image beside its mask.  The tar is split into ``--piece-mib`` pieces
``pack.tar.00``, ``pack.tar.01``...; ``cat pack.tar.* | tar x`` joins them.  Nothing here is committed:
the data's licences forbid it (``OUT`` defaults to the ignored ``runs/pack``).

    .venv/bin/python -m export.pack_training_data            # caches in (or made into) runs/teacher
"""

from __future__ import annotations

import argparse
import io
import shutil
import tarfile
from pathlib import Path

import cv2
import numpy as np

from export.splits import part_of
from export.train_deeplab import _resize_long, cached_teacher_alphas, load_split
from export.video_frames import shared_videos

BACKGROUND_SIDE = 640  # train_deeplab.fit: load_backgrounds(..., 640)


def _jpeg(bgr: np.ndarray, quality: int = 88) -> bytes:
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def _png(gray: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", gray)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _add_empty(tar: tarfile.TarFile, name: str) -> None:
    """A name without its data: the held-out items keep their place in the split, never their pixels."""
    _add(tar, name, b"")


def make_teacher_caches(data_dir: Path, folder: Path, long_side: int, teacher: str = "rvm",
                        imgs: list[np.ndarray] | None = None) -> None:
    """The teacher's alphas of the training portraits (``imgs``: ``load_split``'s, loaded here when not
    given) and of every frame of the shared videos, in ``folder`` as ``train_deeplab`` caches them; a
    no-op where they are there already."""
    from export.train_deeplab import teacher_alphas
    from export.video_frames import load_video_frames

    folder.mkdir(parents=True, exist_ok=True)
    if imgs is None:
        imgs = load_split(data_dir / "portraits" / "train", long_side)[0]
    teacher_alphas(imgs, folder / f"teacher-{teacher}-{long_side}.npz", teacher)
    load_video_frames(data_dir, folder / "video-teacher", 1, long_side, teacher, davis=False)


def pack(data_dir: Path, teacher_from: Path | None, out: Path, long_side: int, teacher: str = "rvm",
         train: tuple[list, list, list] | None = None) -> Path:
    """Write ``out/pack.tar`` (see the module docstring) and return its path; ``train``: ``load_split``
    of ``portraits/train`` at ``long_side``, loaded here when not given."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "pack.tar"
    with tarfile.open(path, "w") as tar:
        val = data_dir / "portraits" / "val"
        val_names = [p.stem for p in (val / "images").glob("*.jpg")]
        for name in part_of(val_names, "select"):
            tar.add(val / "images" / f"{name}.jpg", f"data/portraits/val/images/{name}.jpg")
            tar.add(val / "masks" / f"{name}.png", f"data/portraits/val/masks/{name}.png")
        for name in part_of(val_names, "holdout"):
            _add_empty(tar, f"data/portraits/val/images/{name}.jpg")
        for p in sorted((data_dir / "backgrounds").glob("*.jpg")):
            img = cv2.imread(str(p))
            if img is not None:
                _add(tar, f"data/backgrounds/{p.name}", _jpeg(_resize_long(img, BACKGROUND_SIDE)))
        imgs, masks, names = train or load_split(data_dir / "portraits" / "train", long_side)
        for img, mask, name in zip(imgs, masks, names, strict=True):
            _add(tar, f"data/portraits/train/images/{name}.jpg", _jpeg(cv2.cvtColor(img, cv2.COLOR_RGB2BGR)))
            _add(tar, f"data/portraits/train/masks/{name}.png", _png(mask))
        for v in shared_videos(data_dir / "videos"):
            tar.add(v, f"data/{v.relative_to(data_dir).as_posix()}")
        gt = data_dir / "videos_gt"
        clips = [p.stem for p in gt.glob("*.mp4") if not p.stem.endswith("_mask")]
        for name in part_of(clips, "select"):
            for suffix in ("", "_mask"):
                tar.add(gt / f"{name}{suffix}.mp4", f"data/videos_gt/{name}{suffix}.mp4")
        for name in part_of(clips, "holdout"):
            _add_empty(tar, f"data/videos_gt/{name}.mp4")
        if teacher_from is not None:
            cache = teacher_from / f"teacher-{teacher}-{long_side}.npz"
            alphas = cached_teacher_alphas(cache, imgs)
            if alphas is None:
                raise ValueError(f"{cache} does not match portraits/train at long side {long_side}")
            buf = io.BytesIO()
            np.savez_compressed(buf, **{f"a{i}": a for i, a in enumerate(alphas)})
            _add(tar, f"caches/{cache.name}", buf.getvalue())
            for p in sorted((teacher_from / "video-teacher").glob(f"*-{teacher}-{long_side}.npz")):
                tar.add(p, f"caches/video-teacher/{p.name}")
    return path


def split(path: Path, piece_mib: float) -> list[Path]:
    """Cut ``path`` into ``path.00``, ``path.01``... of at most ``piece_mib`` MiB each (removing it)."""
    size = int(piece_mib * 2**20)
    pieces = []
    with path.open("rb") as f:
        while chunk := f.read(size):
            piece = path.with_name(f"{path.name}.{len(pieces):02d}")
            piece.write_bytes(chunk)
            pieces.append(piece)
    path.unlink()
    return pieces


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=None, help="shared data folder (default: settings.data_dir)")
    ap.add_argument("--teacher-from", type=Path, default=Path("runs/teacher"),
                    help="a train_deeplab --out folder whose teacher caches to pack (teacher-rvm-SIZE.npz, "
                         "video-teacher/); made there first where missing")
    ap.add_argument("--no-teacher", action="store_true", help="pack no teacher caches (runs without --teacher)")
    ap.add_argument("--out", type=Path, default=Path("runs/pack"))
    ap.add_argument("--long-side", type=int, default=400, help="train_deeplab's --scale-max")
    ap.add_argument("--piece-mib", type=float, default=30,
                    help="piece size: a device call carries 64 MiB with the working tree (~33 MB)")
    args = ap.parse_args(argv)
    if args.data_dir is None:
        from service.config import get_settings

        args.data_dir = Path(get_settings().data_dir)
    if args.out.exists():
        shutil.rmtree(args.out)
    teacher_from = None if args.no_teacher else args.teacher_from
    train = load_split(args.data_dir / "portraits" / "train", args.long_side)  # once, for both
    if teacher_from is not None:
        make_teacher_caches(args.data_dir, teacher_from, args.long_side, imgs=train[0])
    pieces = split(pack(args.data_dir, teacher_from, args.out, args.long_side, train=train), args.piece_mib)
    for p in pieces:
        print(p, f"{p.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
