"""Reading videos back in tests: frame counts, timestamps, frames, alpha, audio packets; short
clips of the shared videos (``short_clip``, ``remux``); and the small clip of rising grey and the
tone that tests of timing write."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


@dataclass
class Readback:
    frames: int
    width: int  # as displayed
    height: int
    rotation: int
    fps: Fraction
    pts_s: list[float]
    duration_s: float


def read_back(path: Path) -> Readback:
    """Decode every frame (proving the file plays) and collect its timing."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        pts: list[float] = []
        rotation = 0
        w = h = 0
        for f in c.decode(s):
            if not pts:
                rotation = int(round((getattr(f, "rotation", 0) or 0) / 90.0)) % 4 * 90
                w, h = (f.height, f.width) if rotation in (90, 270) else (f.width, f.height)
            pts.append(float(f.pts * f.time_base))
        fps = Fraction(s.average_rate)
        track = float(s.duration * s.time_base) if s.duration else None
    # The track's own length where the container records it (a sparse variable-rate clip's last
    # frame is not 1/average-rate long); else the frames' span plus one frame.
    # Times in order: AVI labels B-frames with file-order times (1, 2, 3, 5, 4, ...); the set of
    # times is what a clip's timing is.
    pts.sort()
    return Readback(len(pts), w, h, rotation, fps, pts, track or max(pts) - min(pts) + 1 / float(fps))


def frames_rgb(path: Path, indices: set[int] | None = None, upright: bool = True) -> dict[int, np.ndarray]:
    out: dict[int, np.ndarray] = {}
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if indices is None or i in indices:
                img = f.to_ndarray(format="rgb24")
                k = int(round((getattr(f, "rotation", 0) or 0) / 90.0)) % 4
                out[i] = np.ascontiguousarray(np.rot90(img, k)) if upright and k else img
            if indices is not None and i >= max(indices):
                break
    return out


def alpha_channel(path: Path) -> np.ndarray:
    """The alpha plane of every frame, float in [0, 1]: the matte video's grey, or the alpha
    channel of VP9 (decoded with libvpx, which reads the alpha side data) and ProRes 4444."""
    out = []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        name = s.codec_context.name
        if name == "vp9":
            dec = av.CodecContext.create("libvpx-vp9", "r")
            for p in c.demux(s):
                for f in dec.decode(p):
                    out.append(f.to_ndarray(format="rgba")[..., 3])
        else:
            for f in c.decode(s):
                if f.format.name.startswith("yuva"):
                    out.append(f.to_ndarray(format="rgba")[..., 3])
                else:
                    out.append(f.to_ndarray(format="gray"))
    return np.stack(out).astype(np.float32) / 255.0


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return []
        return [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]


def short_clip(src: Path, dst: Path, frames: int, scale: int = 2) -> Path:
    """The first ``frames`` frames of ``src`` at 1/``scale`` of its size (H.264), with its audio
    over the same span (AAC)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vin, ain = inp.streams.video[0], inp.streams.audio[0]
        rate = vin.average_rate
        assert rate is not None
        vout = out.add_stream("libx264", rate=rate)
        vout.pix_fmt = "yuv420p"
        vout.options = {"preset": "veryfast"}
        aout = out.add_stream("aac", rate=ain.rate)
        n, end = 0, 0.0
        for f in inp.decode(vin):
            img = f.reformat(width=f.width // scale // 2 * 2, height=f.height // scale // 2 * 2, format="yuv420p")
            if n == 0:
                vout.width, vout.height = img.width, img.height
            img.pts, img.time_base = n, Fraction(1) / rate
            out.mux(vout.encode(img))
            n += 1
            if n == frames:
                end = float(f.time or 0) + 1 / float(rate)
                break
        out.mux(vout.encode(None))
        inp.seek(0)
        for af in inp.decode(ain):
            if af.time is not None and af.time >= end:
                break
            af.pts = None
            out.mux(aout.encode(af))
        out.mux(aout.encode(None))
    return dst


def remux(src: Path, dst: Path, seconds: float, fmt: str | None = None, audio_codec: str | None = None,
          audio_rate: int | None = None, audio_layout: str | None = None, video_delay_s: float = 0.0) -> Path:
    """The first ``seconds`` of the first video stream and every audio stream of ``src`` in a new
    container (chosen by ``dst``'s extension or ``fmt``): real pictures and sound in another
    wrapping.  Packets are copied as they are; the audio is re-encoded with ``audio_codec`` where
    one is named (at ``audio_rate`` where given: Opus takes 48 kHz, not 44.1; in ``audio_layout``,
    the sound spread over its channels).  ``video_delay_s`` later on every video timestamp (a clip
    cut from a recording keeps its times)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format=fmt) as out:
        streams = [*inp.streams.video[:1], *inp.streams.audio]
        targets = {}
        sent: dict[int, int] = {}  # samples sent to each audio encoder
        for s in streams:
            if s.type == "audio" and audio_codec:
                targets[s.index] = out.add_stream(audio_codec, rate=audio_rate or s.codec_context.sample_rate)
                targets[s.index].codec_context.layout = audio_layout or s.codec_context.layout
            else:
                targets[s.index] = out.add_stream_from_template(s)
        for packet in inp.demux(*streams):
            if packet.dts is None or packet.time_base is None or float(packet.dts * packet.time_base) >= seconds:
                continue
            target = targets[packet.stream_index]
            if packet.stream.type == "audio" and audio_codec:
                for frame in packet.decode():
                    # numbered by samples from 0 (some encoders, FLAC's among them, give packets
                    # no time of their own for frames without one)
                    frame.pts, frame.time_base = sent.get(packet.stream_index, 0), Fraction(1, frame.sample_rate)
                    sent[packet.stream_index] = frame.pts + frame.samples
                    out.mux(target.encode(frame))
                continue
            if packet.stream.type == "video" and video_delay_s:
                delay = round(video_delay_s / packet.time_base)
                packet.pts, packet.dts = packet.pts + delay, packet.dts + delay
            packet.stream = target
            out.mux(packet)
        if audio_codec:
            for s in inp.streams.audio:
                out.mux(targets[s.index].encode(None))
    return dst


def x264_options(path: Path) -> list[str]:
    """The options string libx264 wrote (a user-data SEI in each first keyframe), once per encoder
    run: one for a file from one encoder, one per chunk or part of a joined one."""
    found = []
    with av.open(str(path)) as container:
        for packet in container.demux(video=0):
            data = bytes(packet)
            at = data.find(b"options: ")
            if at >= 0:
                found.append(data[at + 9 : data.index(b"\0", at)].decode())
    return found


def audio_duration(path: Path) -> float:
    with av.open(str(path)) as c:
        a = c.streams.audio[0]
        end = 0.0
        start = None
        for p in c.demux(a):
            if p.pts is None:
                continue
            t = float(p.pts * p.time_base)
            start = t if start is None else min(start, t)
            end = max(end, float((p.pts + (p.duration or 0)) * p.time_base))
        return end - (start or 0.0)


def mask_frames(path: Path) -> np.ndarray:
    """A `_mask` video of videos_gt as booleans (N, H, W)."""
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="gray") > 127 for f in c.decode(video=0)])


def assert_parts_join_to_one_part(clip: Path, one: Path, parts: Path) -> None:
    """A matte video made in two parts side by side (``parts``) against the one-part run (``one``) of
    ``clip``: the same timestamps, the input's audio bytes, the matte equal before the seam (but for
    the encoder's rounding and the threads' float sums) and close after it, where the warm-up has
    settled the second part's recurrent state."""
    from service.media.chunks import chunk_pts

    n = len(chunk_pts(clip))
    assert chunk_pts(parts) == chunk_pts(one) and len(chunk_pts(one)) == n
    assert read_back(parts).duration_s == read_back(one).duration_s
    assert audio_packets(parts) == audio_packets(clip)
    a1, a2 = alpha_channel(one), alpha_channel(parts)
    seam = n // 2
    before = np.abs(a1[: seam - 2] - a2[: seam - 2]).mean(axis=(1, 2))
    assert before.max() < 0.002, before
    ious = [((x > 0.5) & (y > 0.5)).sum() / max(1, ((x > 0.5) | (y > 0.5)).sum()) for x, y in zip(a1, a2, strict=True)]
    assert min(ious[seam:]) > 0.95, ious[seam:]


def rising_grey(stream: av.video.stream.VideoStream, frames: int, rate: int) -> list[av.Packet]:
    """``frames`` pictures of rising grey at ``rate`` a second, one a frame from time 0, encoded by
    ``stream`` (its width and height set) and flushed: the packets, to mux as a test needs."""
    packets = []
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(
            np.full((stream.height, stream.width, 3), 20 + (9 * i) % 230, np.uint8), format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, rate)
        packets += stream.encode(frame)
    return packets + stream.encode()


def tone(stream: av.audio.stream.AudioStream, seconds: float, start_s: float = 0.0) -> list[av.Packet]:
    """A mono tone of ``seconds`` from ``start_s`` on, encoded by ``stream`` (its rate and layout
    set; PyAV cuts the samples into the encoder's frames) and flushed: the packets."""
    rate = stream.rate
    samples = np.sin(np.arange(int(rate * seconds)) * 0.05).astype(np.float32)
    packets = []
    for at in range(0, len(samples), 1024):
        frame = av.AudioFrame.from_ndarray(samples[None, at : at + 1024], format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, at + int(rate * start_s), Fraction(1, rate)
        packets += stream.encode(frame)
    return packets + stream.encode()


def with_subtitles(src: Path, dst: Path, tracks: list[tuple[str, str, str]], video_from_s: float = 0.0,
                   audio: bool = True, timecode: str | None = None, chapters: list[str] | None = None) -> Path:
    """``src``'s streams copied into ``dst`` (Matroska or MP4 by its extension) with a subtitle track
    for each (format, language, text) of ``tracks``: the text of an ``srt`` or ``ass`` file, read
    by FFmpeg's own demuxer; into MP4 it goes as ``mov_text`` (FFmpeg's encoder).  ``video_from_s``:
    the pictures start that much later (the subtitles first; ``audio=False`` too, or the sound
    would start the video).  ``timecode``: the pictures' (MP4: a timecode track); ``chapters``:
    titles of chapters a second long each, from 0."""
    sources = []
    for i, (kind, _, text) in enumerate(tracks):
        path = dst.with_name(f"{dst.stem}-{i}.{kind}")
        path.write_text(text, encoding="utf-8")
        sources.append(av.open(str(path)))
    try:
        with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
            kept = ("video", "audio") if audio else ("video",)
            targets = {s.index: out.add_stream_from_template(s) for s in inp.streams if s.type in kept}
            ms = Fraction(1, 1000)
            out.set_chapters([{"id": i, "start": 1000 * i, "end": 1000 * (i + 1), "time_base": ms,
                               "metadata": {"title": t}} for i, t in enumerate(chapters or [])])
            if timecode:  # counted at the video's rate (a stream from a template has none: its time base's)
                video = targets[inp.streams.video[0].index]
                video.codec_context.framerate = inp.streams.video[0].average_rate
                video.metadata["timecode"] = timecode
            packets = [p for p in inp.demux() if p.stream.index in targets and p.dts is not None]
            for p in packets:
                shift = round(video_from_s / p.time_base)
                p.pts, p.dts = (None if p.pts is None else p.pts + shift), p.dts + shift
                p.stream = targets[p.stream.index]
            for source, (_, language, _) in zip(sources, tracks, strict=True):
                stream = source.streams.subtitles[0]
                if dst.suffix == ".mp4":
                    ctx = stream.codec_context
                    ctx.open()
                    target = out.add_stream("mov_text")
                    target.codec_context.time_base = stream.time_base
                    target.codec_context.subtitle_header = ctx.subtitle_header
                else:
                    target = out.add_stream_from_template(stream)
                target.metadata["language"] = language
                for p in source.demux(stream):
                    if p.pts is None:
                        continue
                    if dst.suffix == ".mp4":
                        q = target.codec_context.encode_subtitle(ctx.decode2(p))
                        q.pts, q.dts, q.duration, q.time_base = p.pts, p.pts, p.duration, p.time_base
                        p = q
                    p.stream = target
                    packets.append(p)
            for p in sorted(packets, key=lambda p: float(p.dts * p.time_base)):
                out.mux(p)
    finally:
        for source in sources:
            source.close()
    return dst


def subtitle_cues(path: Path) -> list[list[tuple[float, float, str]]]:
    """Each subtitle track of ``path`` as its cues: (start s, end s, the text without markup)."""
    with av.open(str(path)) as c:
        streams = list(c.streams.subtitles)
        tracks: dict[int, list[tuple[float, float, str]]] = {s.index: [] for s in streams}
        for p in c.demux(*streams):
            if p.pts is None or not p.size:
                continue
            subs = p.stream.codec_context.decode2(p)
            text = " ".join(s.dialogue.decode() for s in subs or [] if getattr(s, "dialogue", None))
            text = re.sub(r"\{[^}]*\}", "", text)  # ASS's override codes: {\\i1}
            if text:
                start = float(p.pts * p.time_base)
                tracks[p.stream.index].append((round(start, 3), round(start + float(p.duration * p.time_base), 3), text))
    return list(tracks.values())
