"""Long videos in chunks: cut the input at keyframes by packet copy, join the encoded chunks by
packet copy, and mux the input's audio once.  Nothing here decodes or encodes a picture.

A chunk is the span of frames ``start_pts <= pts < end_pts`` (display order).  Its file begins at
the last keyframe at or before ``model_from_pts`` (``warmup`` frames before ``start_pts``: the
pipeline runs the model on them to settle its recurrent state, and drops their output) and ends
after the next chunk's first keyframe and any frames that display before that keyframe but are
decoded after it (the leading pictures of an open GOP).  Packets keep their timestamps: a chunk's
output frames carry the very timestamps of the sequential run, so the join only concatenates.

Chunk files are MP4/MOV with the input's own timescale (MOV/MP4 inputs), which keeps every
timestamp exact; other containers (their muxers pick their own time base) run unchunked.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from service.media.encode import (
    FORMATS,
    SideTrackCarrier,
    carry_timecode,
    last_frame_duration,
    shown_until,
)
from service.media.inspect import AudioInfo, VideoInfo, open_input, video_stream
from service.media.packets import read_packets

#: Containers whose chunks keep the input's timestamps exactly (see module doc).
_CHUNK_MUXER = {"mov": "mov", "mp4": "mov", "m4a": "mov", "3gp": "mov", "3g2": "mov", "mj2": "mov"}


class NotChunkable(Exception):
    """This input cannot be cut exactly (its container, missing timestamps, one keyframe…): it runs
    as one task, as it always did."""


@dataclass(frozen=True)
class ChunkSpan:
    index: int
    start_pts: int  # first frame written
    end_pts: int | None  # first frame of the next chunk (None: to the end)
    model_from_pts: int  # first frame the model sees (warm-up frames before start_pts)
    frames: int  # frames written
    warmup: int  # frames run through the model and dropped
    first_packet: int  # decode-order packet range of the chunk's file
    end_packet: int


@dataclass(frozen=True)
class ChunkPlan:
    chunks: tuple[ChunkSpan, ...]
    muxer: str

    def to_json(self) -> str:
        return json.dumps({"muxer": self.muxer, "chunks": [asdict(c) for c in self.chunks]})

    @classmethod
    def from_json(cls, raw: str | bytes) -> ChunkPlan:
        d = json.loads(raw)
        return cls(tuple(ChunkSpan(**c) for c in d["chunks"]), d["muxer"])


def chunk_muxer(info: VideoInfo) -> str:
    names = [n.strip() for n in info.container.split(",")]
    for n in names:
        if n in _CHUNK_MUXER:
            if info.time_base.numerator != 1:
                raise NotChunkable(f"time base {info.time_base} cannot be kept in MP4")
            return _CHUNK_MUXER[n]
    raise NotChunkable(f"container {info.container!r} is not cut into chunks")


#: (pts, dts, keyframe, shown) of a video packet: ``shown`` False for one an MP4 edit list leaves
#: out (decoded, for the frames that refer to it, but never displayed: ``Packet.is_discard``).
PacketInfo = tuple[int, int | None, bool, bool]


def video_packets(path: Path) -> list[PacketInfo]:
    """(pts, dts, keyframe, shown) of every video packet, in decode order (demuxed, never decoded)."""
    container = open_input(path)
    try:
        stream = video_stream(container)
        out: list[PacketInfo] = []
        for p in read_packets(container, stream):
            if p.size == 0 and p.pts is None:
                continue  # end-of-stream marker
            if p.pts is None:
                raise NotChunkable("a video packet has no timestamp")
            out.append((int(p.pts), None if p.dts is None else int(p.dts), bool(p.is_keyframe), not p.is_discard))
        return out
    finally:
        container.close()


def clean_keyframes(packets: Sequence[PacketInfo]) -> list[int]:
    """Indices of the keyframes (of ``video_packets``) a decode may start at for a clean cut: every
    packet before one in decode order displays before it, so nothing from there on is lost."""
    clean: list[int] = []
    latest = -(2**63)  # the latest time shown by the packets so far
    for i, (pts, _, key, _) in enumerate(packets):
        if key and latest < pts:
            clean.append(i)
        latest = max(latest, pts)
    return clean


def clean_start(packets: Sequence[PacketInfo], clean: Sequence[int], pts: int) -> int | None:
    """The last of the ``clean`` keyframes (indices into ``packets``) that displays at or before
    ``pts``: where a decode starts so that the frame at ``pts`` and every one after it come out whole
    (the warm-up of a chunk, or of a part).  None when there is none."""
    found = None
    for i in clean:  # a clean keyframe displays after every packet before it: in order of time too
        if packets[i][0] > pts:
            break
        found = i
    return found


def plan_chunks(info: VideoInfo, chunk_s: float, warmup: int) -> ChunkPlan | None:
    """Where to cut ``info``'s video: chunks of about ``chunk_s`` seconds starting at keyframes, or
    None when it is not longer than one chunk.  Raises ``NotChunkable`` when it cannot be cut
    exactly."""
    if chunk_s <= 0 or info.duration_s <= chunk_s:
        return None
    muxer = chunk_muxer(info)
    scanned = video_packets(info.path)
    packets = [(pts, key) for pts, _, key, _ in scanned]
    order = sorted(pts for pts, _, _, shown in scanned if shown)  # display order of the frames shown
    if len(order) < 2:
        return None
    if len(set(order)) != len(order):
        raise NotChunkable("two video packets share a timestamp")
    tb = info.time_base
    first = order[0]
    step = chunk_s / float(tb)
    # boundaries: the first keyframe at or after each multiple of chunk_s, at least half a chunk
    # before the end (a short tail goes to the chunk before it)
    # every packet decoded before a cut's keyframe must display before it, and nothing before it in
    # decode order may display after it: a clean cut
    keys = [(packets[i][0], i) for i in clean_keyframes(scanned)]
    last = order[-1]
    starts: list[tuple[int, int]] = [(first, 0)]
    target = first + step
    for pts, idx in keys:
        if pts < target or pts <= starts[-1][0]:
            continue
        if last - pts < step / 2:
            break
        starts.append((pts, idx))
        target = pts + step
    if len(starts) < 2:
        return None
    key_idx = [i for _, i in keys]  # a warm-up decodes from a clean keyframe too (as the parts' seek)
    chunks: list[ChunkSpan] = []
    for n, (start, idx) in enumerate(starts):
        end = starts[n + 1][0] if n + 1 < len(starts) else None
        pos = bisect.bisect_left(order, start)
        from_pos = max(0, pos - warmup) if n else 0
        model_from = order[from_pos]
        # decode from the last clean keyframe at or before the warm-up's first frame
        found = clean_start(scanned, key_idx, model_from)
        begin = idx if found is None else found
        if end is not None:
            nxt = starts[n + 1][1]
            stop = nxt + 1  # the next keyframe, and the leading pictures that need it
            while stop < len(packets) and packets[stop][0] < end:
                stop += 1
            frames = bisect.bisect_left(order, end) - pos
        else:
            stop = len(packets)
            frames = len(order) - pos
            if any(pts > last for pts, _ in packets):
                # packets an edit list leaves out after the last frame shown: copied into the
                # chunk's own file, they would be shown there; the window ends before them
                end = last + 1
        chunks.append(ChunkSpan(n, start, end, model_from, frames, pos - from_pos, begin, stop))
    return ChunkPlan(tuple(chunks), muxer)


def split_video(info: VideoInfo, plan: ChunkPlan, folder: Path) -> list[Path]:
    """Write each chunk's video packets (copied, never re-encoded) to ``folder``; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"in-{c.index:04d}.mp4" for c in plan.chunks]
    bounds = [(c.first_packet, c.end_packet) for c in plan.chunks]
    container = open_input(info.path)
    outs: dict[int, tuple[Any, Any]] = {}
    times: list[int] = []
    try:
        stream = video_stream(container)
        i = -1
        for packet in read_packets(container, stream):
            if packet.size == 0 and packet.pts is None:
                continue
            i += 1
            times.append(int(packet.pts) if packet.pts is not None else -1)
            for n, (a, b) in enumerate(bounds):
                if not a <= i < b:
                    continue
                if n not in outs:
                    out = av.open(str(paths[n]), mode="w", format=plan.muxer)
                    # the track keeps the input's timescale, and so does the movie's (the edit list that
                    # starts a chunk late would otherwise be rounded to milliseconds)
                    out.options["video_track_timescale"] = str(info.time_base.denominator)
                    out.options["movie_timescale"] = str(info.time_base.denominator)
                    outs[n] = (out, out.add_stream_from_template(stream))
                out, target = outs[n]
                packet.stream = target
                out.mux(packet)
                packet.stream = stream
            for n in [n for n in outs if bounds[n][1] <= i + 1]:
                outs.pop(n)[0].close()
    finally:
        for out, _ in outs.values():
            out.close()
        container.close()
    for c, path in zip(plan.chunks, paths, strict=True):
        if _packet_times(path) != times[c.first_packet : c.end_packet]:
            raise NotChunkable(f"the muxer changed the timestamps of chunk {c.index}")
    return paths


def _packet_times(path: Path) -> list[int]:
    container = open_input(path)
    try:
        return [-1 if p.pts is None else int(p.pts) for p in read_packets(container, container.streams.video[0])
                if not (p.size == 0 and p.pts is None)]
    finally:
        container.close()


def chunk_info(whole: VideoInfo, path: Path) -> VideoInfo:
    """The video facts a chunk is processed with: the whole video's (size, rotation, rate, time
    base, so every chunk's encoder is set up alike), with the chunk's file and no audio, subtitles or
    chapters (the join carries the whole input's)."""
    return replace(whole, path=path, audio=(), subtitles=(), chapters=0, track_ticks=None)


def info_to_json(info: VideoInfo) -> str:
    d = asdict(info)
    d["path"] = str(info.path)
    d["fps"] = str(info.fps)
    d["time_base"] = str(info.time_base)
    d["sample_aspect"] = str(info.sample_aspect)
    d["audio"] = [asdict(a) for a in info.audio]
    return json.dumps(d, default=str)


def info_from_json(raw: str | bytes) -> VideoInfo:
    d = json.loads(raw)
    d["path"] = Path(d["path"])
    d["fps"] = Fraction(d["fps"])
    d["time_base"] = Fraction(d["time_base"])
    d["sample_aspect"] = Fraction(d.get("sample_aspect", "1"))  # a plan written before it was kept
    d["audio"] = tuple(AudioInfo(**a) for a in d["audio"])
    d["subtitles"] = tuple(d.get("subtitles", ()))
    return VideoInfo(**d)


@dataclass
class JoinResult:
    frames: int
    first_pts: int
    end_pts: int  # end of the last frame


def join_chunks(parts: Sequence[Path], whole: VideoInfo, fmt: str, out_path: Path, audio_from: Path | None) -> JoinResult:
    """Concatenate the encoded chunks ``parts`` (packet copy) into ``out_path`` in format ``fmt``,
    with the audio of ``audio_from`` (the original input) muxed once, as the sequential writer
    does; the last frame's duration is set the way ``VideoWriter.close`` sets it."""
    spec = FORMATS[fmt]
    out = av.open(str(out_path), mode="w", format=spec.container)
    carrier: Any = None
    try:
        first = open_input(parts[0])
        try:
            template = first.streams.video[0]
            stream = out.add_stream_from_template(template)
            carry_timecode(stream, whole)
            stream.time_base = template.time_base
            extradata = template.codec_context.extradata
        finally:
            first.close()
        tb = Fraction(stream.time_base) if stream.time_base is not None else whole.time_base
        if "movflags" in spec.options:
            out.options["movflags"] = spec.options["movflags"]
        if spec.container in ("mp4", "mov") and tb.numerator == 1:
            out.options["video_track_timescale"] = str(tb.denominator)
            out.options["movie_timescale"] = str(tb.denominator)  # the edit list exact (VideoWriter)
        if spec.container == "webm" and spec.alpha:
            stream.metadata["alpha_mode"] = "1"
        if audio_from is not None and whole.has_side_tracks:
            carrier = SideTrackCarrier(replace(whole, path=audio_from), out, spec)
        held: av.Packet | None = None
        frames, first_pts, end, reached = 0, None, 0, 0
        first_dts: int | None = None
        for part in parts:
            src = open_input(part)
            try:
                vs = src.streams.video[0]
                if Fraction(vs.time_base or 0) != tb or vs.codec_context.extradata != extradata:
                    raise ValueError(f"chunk {part.name} was encoded differently from the first")
                for packet in read_packets(src, vs):
                    if packet.size == 0 and packet.pts is None:
                        continue
                    frames += 1
                    assert packet.pts is not None
                    first_pts = packet.pts if first_pts is None else min(first_pts, packet.pts)
                    end = max(end, packet.pts + (packet.duration or 0))
                    if first_dts is None and packet.dts is not None:
                        first_dts = packet.dts
                    if carrier is not None:
                        carrier.mux_until(float(packet.pts * tb))
                    packet.stream = stream
                    if held is not None:
                        reached = max(reached, shown_until(held, packet) or 0)
                        out.mux(held)
                    held = packet
            finally:
                src.close()
        if held is not None:
            if held.pts is not None and held.dts is not None and first_pts is not None and first_dts is not None:
                # in the input's ticks, from the input's start (``VideoInfo.origin``; the chunks' times
                # start at 0): a WebM chunk's are milliseconds, and its last frame was given the
                # input's track length in them (a 9.6 s clip said 123 s)
                def ticks(t: int) -> int:
                    return round(t * tb / whole.time_base)

                length = last_frame_duration(whole, ticks(first_pts) + whole.origin, ticks(end) + whole.origin,
                                             ticks(first_dts), ticks(held.dts), ticks(held.pts) + whole.origin,
                                             ticks(reached) + whole.origin)
                held.duration = max(1, round(length * whole.time_base / tb))
            out.mux(held)
        if carrier is not None:
            carrier.finish()
        return JoinResult(frames, int(first_pts or 0), int(end))
    finally:
        if carrier is not None:
            carrier.close()
        out.close()


def chunk_pts(path: Path) -> list[int]:
    """Presentation times of a file's video packets, sorted (tests and the bench compare them)."""
    container = open_input(path)
    try:
        s = container.streams.video[0]
        return sorted(int(p.pts) for p in read_packets(container, s) if p.pts is not None)
    finally:
        container.close()
