"""Hostile and odd inputs, made in the test.  The big pictures are written chunk by chunk with zlib
fed one row at a time, so a 30000×30000 PNG costs the test a few MB, not the gigabytes it declares."""

from __future__ import annotations

import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

PNG_SIG = b"\x89PNG\r\n\x1a\n"


def chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def zero_rows(width: int, height: int, bytes_per_pixel: int) -> bytes:
    """The zlib stream of a black picture's scanlines (each a filter byte 0 and zeros: all zeros).

    One MiB of zeros is compressed once and its output repeated: after a full flush the compressor
    starts afresh, so each repeat is a valid run of deflate blocks.  The checksum of n zeros is
    computed, not streamed (adler32: a = 1, b = n mod 65521)."""
    total = height * (1 + width * bytes_per_pixel)
    block = bytes(1 << 20)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    comp.compress(block)
    comp.flush(zlib.Z_FULL_FLUSH)
    unit = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    repeats, rest = divmod(total, len(block))
    last = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = last.compress(bytes(rest)) + last.flush(zlib.Z_FINISH)
    return b"\x78\xda" + unit * repeats + tail + struct.pack(">I", ((total % 65521) << 16) | 1)


def ihdr(width: int, height: int, depth: int, colour: int) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))


#: (bit depth, PNG colour type, bytes per pixel)
GREY8, RGB8, RGBA16 = (8, 0, 1), (8, 2, 3), (16, 6, 8)


def png_bytes(width: int, height: int, kind: tuple[int, int, int] = GREY8) -> bytes:
    depth, colour, bpp = kind
    return PNG_SIG + ihdr(width, height, depth, colour) + chunk(b"IDAT", zero_rows(width, height, bpp)) + chunk(b"IEND", b"")


def png(path: Path, width: int, height: int, kind: tuple[int, int, int] = GREY8) -> Path:
    path.write_bytes(png_bytes(width, height, kind))
    return path


def apng(path: Path, width: int, height: int, frames: int = 2, kind: tuple[int, int, int] = GREY8) -> Path:
    """An animated PNG: every frame black, full canvas, 10 frames a second."""
    depth, colour, bpp = kind
    data = zero_rows(width, height, bpp)
    out = [PNG_SIG, ihdr(width, height, depth, colour), chunk(b"acTL", struct.pack(">II", frames, 0))]
    seq = 0
    for i in range(frames):
        out.append(chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, width, height, 0, 0, 1, 10, 0, 0)))
        seq += 1
        if i == 0:
            out.append(chunk(b"IDAT", data))
        else:
            out.append(chunk(b"fdAT", struct.pack(">I", seq) + data))
            seq += 1
    out.append(chunk(b"IEND", b""))
    path.write_bytes(b"".join(out))
    return path


def png_in_mov(path: Path, pngs: list[bytes], width: int, height: int) -> Path:
    """A MOV whose video track holds the given PNG pictures (muxed as they are, never decoded);
    its header declares width×height, whatever the pictures are."""
    with av.open(str(path), "w", format="mov") as out:
        s = out.add_stream("png", rate=1)
        s.width, s.height, s.pix_fmt = width, height, "rgba64be"
        for i, data in enumerate(pngs):
            p = av.Packet(data)
            p.stream, p.pts, p.dts, p.time_base, p.is_keyframe = s, i, i, Fraction(1, 1), True
            out.mux(p)
    return path


def frames_of(src: Path, count: int, width: int, height: int) -> list[np.ndarray]:
    """The first ``count`` frames of a clip, as RGB at width×height."""
    out = []
    with av.open(str(src)) as c:
        for f in c.decode(video=0):
            out.append(f.to_ndarray(format="rgb24", width=width, height=height))
            if len(out) == count:
                break
    return out


def encode(path: Path, images: list[np.ndarray], codec: str, pix_fmt: str, fmt: str | None = None,
           rate: int = 10, matrix: list[int] | None = None, options: dict[str, str] | None = None,
           metadata: dict[str, str] | None = None) -> Path:
    h, w = images[0].shape[:2]
    with av.open(str(path), "w", format=fmt, options=options) as out:
        out.metadata.update(metadata or {})
        s = out.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        if matrix is not None:
            s.set_display_matrix(matrix)
        for i, img in enumerate(images):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            f.pts = i
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    return path


def gif(path: Path, images: list[np.ndarray]) -> Path:
    return encode(path, images, "gif", "rgb8", "gif")


def animated_webp(path: Path, images: list[np.ndarray]) -> Path:
    return encode(path, images, "libwebp_anim", "yuva420p", "webp")


def zero_matrix_mp4(path: Path, images: list[np.ndarray]) -> Path:
    """An H.264 MP4 whose track header's display matrix is all zeros (FFmpeg: a NaN angle).
    The matrix is written by PyAV when it can; else the identity matrix's bytes are zeroed."""
    encode(path, images, "libx264", "yuv420p", "mp4", matrix=[0] * 9)
    data = path.read_bytes()
    identity = struct.pack(">9i", 65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30)
    tkhd = data.find(b"tkhd")
    at = data.find(identity, tkhd)
    if tkhd >= 0 and 0 <= at < tkhd + 120:
        data = data[:at] + bytes(36) + data[at + 36 :]
        path.write_bytes(data)
    return path


def mid_stream_growth(path: Path, small: int, large: int, codec: str = "libx264") -> Path:
    """A raw stream (H.264, or ``codec``'s: ``mpeg4`` for an .m4v) whose pictures change from small²
    to large² after five frames (a new SPS, a new VOL): its first header declares small²."""
    out = b""
    for side in (small, large):
        ctx = av.CodecContext.create(codec, "w")
        ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = side, side, "yuv420p", Fraction(1, 10)
        for i in range(5):
            f = av.VideoFrame.from_ndarray(np.full((side, side, 3), 40 * i, np.uint8), format="rgb24")
            f.pts = i
            out += b"".join(bytes(p) for p in ctx.encode(f))
        out += b"".join(bytes(p) for p in ctx.encode(None))
    path.write_bytes(out)
    return path


def growing_video(path: Path, codec: str, sizes: list[tuple[int, int]], per_size: int = 4,
                  declared: tuple[int, int] | None = None) -> Path:
    """A video (WebM, MKV, MP4, IVF, by ``path``'s suffix) whose pictures change size midway, as a
    WebRTC recording's do: ``per_size`` flat grey frames (levels 20, 35, 50, ...) at each of
    ``sizes`` (width, height) in turn, each run from an encoder of its own (``libvpx`` for VP8,
    ``libvpx-vp9``, ``libx264`` or ``libx265``: a new SPS in the stream; ``mpeg2video``: a new
    sequence header), so each size starts at a key frame.  The header declares the first size, or ``declared``."""
    out = av.open(str(path), "w")
    try:
        stream = out.add_stream(codec, rate=10)
        stream.width, stream.height = declared or sizes[0]
        stream.time_base = Fraction(1, 1000)
        i = 0
        for width, height in sizes:
            ctx = av.CodecContext.create(codec, "w")
            # MPEG-2 has a few frame rates only: 25 a second, its frames 40 ms apart
            tick = Fraction(1, 25) if codec == "mpeg2video" else Fraction(1, 1000)
            ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = width, height, "yuv420p", tick
            ctx.options = ({"deadline": "realtime", "cpu-used": "8"} if codec.startswith("libvpx")
                           else {"x265-params": "log-level=error"} if codec == "libx265" else {})
            packets = []
            for _ in range(per_size):
                frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 20 + 15 * i, np.uint8), format="rgb24")
                frame.pts = i if codec == "mpeg2video" else 100 * i
                packets += ctx.encode(frame)
                i += 1
            for packet in [*packets, *ctx.encode(None)]:
                packet.stream = stream
                out.mux(packet)
    finally:
        out.close()
    return path


def damaged_packets(src: Path, dst: Path, damage: set[int], drop: set[int] | None = None) -> Path:
    """``src``'s video stream remuxed into ``dst`` with the packets numbered in ``damage`` (from 0,
    in file order) made unreadable (their first four bytes set to 0xFF: an H.264 NAL unit longer
    than its packet, a VP8 partition past its frame) and those in ``drop`` left out (a recording
    that starts before its first key frame)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = inp.streams.video[0]
        copy = out.add_stream_from_template(stream)
        number = -1
        for packet in inp.demux(stream):
            if not packet.size:
                continue
            number += 1
            if number in (drop or set()):
                continue
            if number in damage:
                data = b"\xff" * 4 + bytes(packet)[4:]
                hurt = av.Packet(data)
                hurt.pts, hurt.dts, hurt.time_base = packet.pts, packet.dts, packet.time_base
                hurt.duration, hurt.is_keyframe = packet.duration, packet.is_keyframe
                packet = hurt
            packet.stream = copy
            out.mux(packet)
    return dst


def with_empty_packets(path: Path, frames: int = 6) -> Path:
    """A NUT file of MPEG-4 Part 2 video (64x48, 10 fps) whose frames at 0, 0.2, 0.4 s ... are each
    followed by an empty packet 0.1 s later, as Theora in Ogg has one for a frame shown again; NUT's
    muxer keeps them (Matroska's drops them; AVI's writes zero-size chunks, which its demuxer
    passes over)."""
    ctx = av.CodecContext.create("mpeg4", "w")
    ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = 64, 48, "yuv420p", Fraction(1, 10)
    packets = []
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 30 * i, np.uint8), format="rgb24")
        frame.pts = 2 * i
        packets += ctx.encode(frame)
    packets += ctx.encode(None)
    with av.open(str(path), "w", format="nut") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt, stream.time_base = 64, 48, "yuv420p", Fraction(1, 10)
        for packet in packets:
            at = packet.pts
            packet.stream = stream
            out.mux(packet)
            empty = av.Packet(b"")
            empty.pts = empty.dts = at + 1
            empty.time_base, empty.stream = Fraction(1, 10), stream
            out.mux(empty)
    return path


def garbled_slices(path: Path, frames: int = 8) -> Path:
    """A raw H.264 stream (64x64) whose parameter sets are whole and every picture's slice data
    random bytes (seeded): headers that read, pictures that do not."""
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = 64, 64, "yuv420p", Fraction(1, 10)
    data = b""
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 20 * i, np.uint8), format="rgb24")
        frame.pts = i
        data += b"".join(bytes(p) for p in ctx.encode(frame))
    data += b"".join(bytes(p) for p in ctx.encode(None))
    noise = np.random.default_rng(1)
    units = []
    for unit in data.split(b"\x00\x00\x00\x01"):
        if unit and unit[0] & 0x1F in (1, 5):  # a slice: its header byte kept, the rest noise
            unit = unit[:1] + noise.integers(0, 256, len(unit) - 1, dtype=np.uint8).tobytes()
        units.append(unit)
    path.write_bytes(b"\x00\x00\x00\x01".join(units))
    return path


def _ogg_crc(data: bytes) -> int:
    """An Ogg page's checksum (CRC-32, polynomial 0x04C11DB7, not reflected, from 0)."""
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = (crc << 1 ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
    return crc


def ogg_with_a_wild_time(path: Path, frames: int = 8) -> Path:
    """VP8 in Ogg (64x48, 10 fps, each frame on a page of its own) whose fourth frame's page says
    2**30 frames in, as a damaged granule position does (FFmpeg takes it as it is); its checksum
    is made right, so the page is read."""
    with av.open(str(path), "w", format="ogg", options={"page_duration": "1"}) as out:
        stream = out.add_stream("libvpx", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 30 * i, np.uint8), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    data = bytearray(path.read_bytes())
    at, page = 0, 0
    while at < len(data):
        segments = data[at + 27 : at + 27 + data[at + 26]]
        size = 27 + len(segments) + sum(segments)
        if page == 5:  # two header pages, then frames 0, 1, 2: this is frame 3's (VP8: frame << 32)
            granule = struct.unpack_from("<q", data, at + 6)[0]
            struct.pack_into("<q", data, at + 6, 2**30 << 32 | granule & 0xFFFFFFFF)
            struct.pack_into("<I", data, at + 22, 0)
            struct.pack_into("<I", data, at + 22, _ogg_crc(bytes(data[at : at + size])))
        at, page = at + size, page + 1
    path.write_bytes(bytes(data))
    return path


def jpeg_cut_after_header(src: Path, dst: Path) -> Path:
    """A JPEG cut right after its scan header (SOS): headers complete, no picture data."""
    data = src.read_bytes()
    sos = data.find(b"\xff\xda")
    length = struct.unpack(">H", data[sos + 2 : sos + 4])[0]
    dst.write_bytes(data[: sos + 2 + length])
    return dst


SVG = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="30000" height="30000"></svg>\n'


def nut_tag_bomb(path: Path, tags: int = 30_000) -> Path:
    """A NUT file of three small frames whose header holds ``tags`` tags.  FFmpeg's tag dictionary is
    searched whole for each tag added, so it costs seconds of CPU to open (30,000 tags, 340 kB: about
    4 s on a 2-core EPYC), and no count of ours looks at NUT's tags."""
    images = [np.full((48, 64, 3), 100 + 40 * i, np.uint8) for i in range(3)]
    return encode(path, images, "mpeg4", "yuv420p", "nut", metadata={f"key{i}": "v" for i in range(tags)})
