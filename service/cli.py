"""The ``backdrop`` command: ``replace`` (one file, no server), ``run`` (the local stack) and
``submit`` (a client of a running service)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from service.cli_service import add_commands
from service.cli_stdio import info_stream, piped
from service.errors import BackdropError, InvalidParameter, disk_full
from service.options import COMPOSITORS, MODEL_NAMES, OUTPUT_FORMATS, SCENE_FORMATS, Options, background_kind
from service.startup import started

#: Output suffixes that name a container: ``-o`` with one picks the format when ``--format`` is not
#: given (``-o person.webm`` is a WebM with alpha), and must agree with ``--format`` when it is.
SUFFIX_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".webm": "webm", ".mov": "mov"}
#: Suffixes of containers this service does not write: ``-o out.mkv`` asks for Matroska, and MP4
#: under that name would be a file whose name says what it is not.  Other names (none, ``.out``)
#: get MP4 as before.
OTHER_CONTAINERS = frozenset({".mkv", ".avi", ".ts", ".mts", ".m2ts", ".flv", ".wmv", ".mpg", ".mpeg", ".3gp",
                              ".ogv", ".gif", ".mxf"})


def output_format(given: str | None, output: Path | None) -> str:
    """The format of ``backdrop replace`` and ``submit``: ``--format``, else the one the output's
    suffix names, else mp4.  A suffix naming another container than ``--format`` writes, or one
    this service does not write (``.mkv``, ``.avi``), is ``invalid_parameter`` (a file named .mp4
    holding WebM plays nowhere)."""
    if output is None:
        return given or "mp4"
    suffix = output.suffix.lower()
    if suffix in OTHER_CONTAINERS:
        ours = given or "mp4"
        from service.media.encode import FORMATS

        raise InvalidParameter(
            f"the output is named {output.name[:100]!r}, but backdrop writes MP4 (.mp4), MOV (.mov) or WebM (.webm): "
            f"name it {output.stem[:100]}{FORMATS[ours].extension}"
        )
    if given is None:
        return SUFFIX_FORMATS.get(suffix, "mp4")
    from service.media.encode import FORMATS

    named = SUFFIX_FORMATS.get(suffix)
    if named is not None and FORMATS[named].container != FORMATS[given].container:
        raise InvalidParameter(
            f"--format {given} writes a {FORMATS[given].extension} file, but the output is named {output.name[:100]!r}: "
            f"name it {output.stem[:100]}{FORMATS[given].extension}, or leave --format out to write {named}"
        )
    return given


def _replace(args: argparse.Namespace) -> int:
    from service.media.encode import FORMATS

    # the one options model, checked with the background before any work (replace_background checks again)
    options = Options.parse(
        model=args.model, output_format=output_format(args.format, Path(args.output)), composite=args.composite,
        harmonize=args.harmonize, edge_refine=args.edge_refine, background=background_kind(args.background),
        keep_points=";".join(args.keep_person), people=args.people,
    )
    with piped(args.input, args.output, FORMATS[options.output_format].extension) as (src, out):
        assert out is not None  # -o is required
        return _replace_files(args, Path(src), out, options)


def _replace_files(args: argparse.Namespace, src: Path, out: Path, options: Options) -> int:
    from tqdm import tqdm

    from service.pipeline import replace_background

    started()  # the pipeline's modules are in (service.startup)
    if args.background is not None and options.output_format not in SCENE_FORMATS:
        print(f"backdrop: note: {options.output_format} output shows no background, so -b is not used (an .mp4 "
              "output puts the person on it)", file=sys.stderr)
    bars: list[tqdm] = []  # made on the first report, so a refused input prints no empty bar

    def progress(done: int, total: int) -> None:
        if not bars:
            # counted from the first report: else its first rate is those frames over no time (130,000 frame/s)
            bars.append(tqdm(total=total, initial=done, unit="frame", disable=args.quiet, dynamic_ncols=True))
        bars[0].total = total
        bars[0].n = done
        bars[0].refresh()

    try:
        result = replace_background(src, args.background, out, options, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    if not args.quiet:  # beside the video, not in it, where the video goes to standard output
        print(f"{args.output}: {result.frames} frames, {result.duration_s:.2f}s, {result.width}x{result.height}, "
              f"{result.size_bytes} bytes", file=info_stream(args.output))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backdrop", description="Replace the background behind people in videos.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True)

    rep = sub.add_parser("replace", help="replace the background of one video file")
    rep.add_argument("input", help="the input video (- for standard input)")
    rep.add_argument("-b", "--background", help="an image file, a video file, #RRGGBB, blur or blur:STRENGTH (0.05-1, default 0.3; larger is blurrier)")
    rep.add_argument("-o", "--output", required=True, help="the output file (- for standard output)")
    rep.add_argument("--model", default="rvm", help=" or ".join(MODEL_NAMES) + " (default rvm)")
    rep.add_argument("--format", default=None, choices=list(OUTPUT_FORMATS),
                     help="output format (default: the one the output's suffix names, .webm, .mov, .mp4; else mp4)")
    rep.add_argument("--composite", default="alpha", choices=list(COMPOSITORS), help="compositor")
    rep.add_argument("--harmonize", type=float, default=0.0, metavar="STRENGTH",
                     help="colour harmonisation strength, 0 (off) to 1; mp4 output only")
    rep.add_argument("--edge-refine", dest="edge_refine", action=argparse.BooleanOptionalAction, default=None,
                     help="refine mask edges (default: BACKDROP_EDGE_REFINE, else on for deeplabv3plus, off for rvm)")
    rep.add_argument("--keep-person", dest="keep_person", action="append", default=[], metavar="X,Y",
                     help="keep only the person under pixel X,Y of the first (upright) frame; repeatable")
    rep.add_argument("--people", default="all", choices=["all", "largest"],
                     help="who stays: all (default) or the largest person of the first frame")
    rep.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    rep.set_defaults(func=_replace)

    add_commands(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a container stopping), raised as Ctrl-C's KeyboardInterrupt
    is, so that the same ``finally`` blocks remove the partial output and the temporary files: with
    Python's default, SIGTERM ended the process where it stood and left them behind."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "replace":  # replace says so once it has imported the pipeline
        started()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv is None and args.command != "run":  # run stops its children itself
        signal.signal(signal.SIGTERM, _terminate)
    try:
        try:
            return int(args.func(args) or 0)
        except OSError as exc:
            full = disk_full(exc, "that holds the output or the temporary folder")
            if full is None:
                raise
            raise full from exc
    except BackdropError as exc:
        print(f"backdrop: error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # what reads standard output went away (``| head``): end as a Unix tool killed by SIGPIPE
        # does, quietly, and keep Python from failing again as it flushes stdout on the way out
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated)
        print("backdrop: " + ("terminated" if terminated else "interrupted"), file=sys.stderr)
        code = 128 + (signal.SIGTERM if terminated else signal.SIGINT)
        if argv is None:  # the command itself, not a caller in Python
            # cleaned up by now; a native thread (onnxruntime's or FFmpeg's) may still be running,
            # and finalising the interpreter under it aborted the process (SIGABRT, "terminate
            # called without an active exception") in 4 of 22 interrupts
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
