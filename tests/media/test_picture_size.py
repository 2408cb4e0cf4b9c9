"""The picture sizes read from packets (``service.media.picture_size``), against what FFmpeg's
decoders make of the same bytes."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from service.media.picture_size import sizes_in


def _encoded(codec: str, width: int, height: int, pix_fmt: str = "yuv420p", rate: int = 10, **options: str) -> bytes:
    """One black frame as ``codec`` writes it (x264: Annex B, its SPS in the stream) at ``rate``."""
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = width, height, pix_fmt, Fraction(1, rate)
    ctx.options = options
    frame = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), format="rgb24").reformat(format=pix_fmt)
    frame.pts = 0
    return b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode(None)])


def _decoded_size(data: bytes, suffix: str, tmp_path: Path) -> tuple[int, int]:
    path = tmp_path / f"one.{suffix}"
    path.write_bytes(data)
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    return frame.width, frame.height


@pytest.mark.parametrize(
    ("width", "height", "pix_fmt", "options"),
    [(1920, 1080, "yuv420p", {}),  # cropped from 1088
     (720, 576, "yuv420p", {"x264-params": "interlaced=1"}),  # field pictures: map units are pairs of rows
     (161, 97, "yuv444p", {}),  # High 4:4:4, odd sizes cropped by single pixels
     (162, 98, "yuv422p", {}),
     (320, 240, "yuv420p10le", {}),
     (96, 64, "gray", {}),  # monochrome: chroma format 0
     (96, 64, "yuv420p", {"x264-params": "cqm=jvt"}),  # scaling matrices in the SPS
     (96, 64, "yuv420p", {"qp": "0"})],  # lossless: High 4:4:4 Predictive
)
def test_h264_sps_size_is_the_decoders(
    tmp_path: Path, width: int, height: int, pix_fmt: str, options: dict[str, str]
) -> None:
    data = _encoded("libx264", width, height, pix_fmt, **options)
    assert sizes_in("h264")(data) == [_decoded_size(data, "h264", tmp_path)] == [(width, height)]


def test_h264_reads_only_the_nal_units_before_the_picture() -> None:
    """An SPS comes before its access unit's first slice, after at most a few other NAL units: the
    reader stops at the first slice and after 32 units, so a packet of millions of tiny NAL units
    costs no more than one of a few."""
    sps = _encoded("libx264", 64, 48)
    sps = sps[sps.find(b"\x00\x00\x01\x67") :]
    sps = sps[: sps.find(b"\x00\x00\x01", 3)]
    sei, slice_ = b"\x00\x00\x01\x06\x05\x80", b"\x00\x00\x01\x65\x88\x80"
    read = sizes_in("h264")
    assert read(sei * 3 + sps + slice_) == [(64, 48)]
    assert read(sei * 40 + sps + slice_) == []
    assert read(slice_ + sps) == []
    assert read(sei * 1_000_000) == []


def test_h264_length_prefixed_packets_follow_the_avcc_length() -> None:
    """MP4 and Matroska write each NAL unit after its length (the ``avcC`` header says how many
    bytes); a stream muxed with start codes anyway is read as such."""
    data = _encoded("libx264", 80, 64)
    units = [u.rstrip(b"\x00") for u in data.split(b"\x00\x00\x01")]  # 4-byte start codes leave a 0
    units = [u for u in units if u]
    prefixed = b"".join(len(u).to_bytes(4, "big") + u for u in units)
    avcc = bytes([1, 100, 0, 30, 0xFF, 0xE1])  # 4-byte lengths (0xFF & 3 = 3, plus one)
    assert sizes_in("h264", avcc)(prefixed) == [(80, 64)]
    assert sizes_in("h264", avcc)(data) == [(80, 64)]


def test_vp8_key_frames_write_their_size_and_inter_frames_none() -> None:
    ctx = av.CodecContext.create("libvpx", "w")
    ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = 120, 88, "yuv420p", Fraction(1, 10)
    packets = []
    for i in range(3):
        frame = av.VideoFrame.from_ndarray(np.full((88, 120, 3), 30 * i, np.uint8), format="rgb24")
        frame.pts = i
        packets += [bytes(p) for p in ctx.encode(frame)]
    packets += [bytes(p) for p in ctx.encode(None)]
    read = sizes_in("vp8")
    assert read(packets[0]) == [(120, 88)]
    assert all(read(p) == [] for p in packets[1:])


def test_vp9_superframes_list_each_frame(tmp_path: Path) -> None:
    """A VP9 packet may hold several frames, their sizes listed in an index at its end."""
    small, large = _encoded("libvpx-vp9", 160, 120), _encoded("libvpx-vp9", 320, 240)
    read = sizes_in("vp9")
    assert read(small) == [(160, 120)] and read(large) == [(320, 240)]
    marker = 0xC0 | (3 << 3) | 1  # two frames, their sizes in 4 bytes each
    index = bytes([marker]) + len(small).to_bytes(4, "little") + len(large).to_bytes(4, "little") + bytes([marker])
    assert read(small + large + index) == [(160, 120), (320, 240)]
    assert read(b"\x00" * 3) == read(b"") == []


@pytest.mark.parametrize(
    ("width", "height", "pix_fmt"),
    [(1920, 1080, "yuv420p"),  # a conformance window of 8 rows
     (162, 98, "yuv444p"), (642, 360, "yuv422p"), (720, 576, "yuv420p10le"), (96, 64, "gray")],
)
def test_hevc_sps_size_is_the_decoders(tmp_path: Path, width: int, height: int, pix_fmt: str) -> None:
    data = _encoded("libx265", width, height, pix_fmt, **{"x265-params": "log-level=error"})
    assert sizes_in("hevc")(data) == [_decoded_size(data, "hevc", tmp_path)] == [(width, height)]


@pytest.mark.parametrize(("codec", "width", "height"), [("mpeg2video", 720, 576), ("mpeg1video", 352, 288),
                                                       ("mpeg2video", 1920, 1080)])
def test_mpeg12_sequence_header_size_is_the_decoders(tmp_path: Path, codec: str, width: int, height: int) -> None:
    data = _encoded(codec, width, height, rate=25)  # a rate MPEG-1 has
    assert sizes_in(codec)(data) == [_decoded_size(data, "m2v", tmp_path)] == [(width, height)]


def test_mpeg2_sequence_extension_adds_the_high_bits() -> None:
    """Past 4095 pixels MPEG-2 writes the two high bits of each side in its sequence extension."""
    header = b"\x00\x00\x01\xb3" + bytes([0x0A, 0x00, 0x78, 0x13, 0xFF, 0xFF, 0xE0, 0x18])  # 160 x 120
    extension = b"\x00\x00\x01\xb5" + bytes([0x14, 0x8B, 0xC0, 0x01, 0x00, 0x00])  # +1 << 13 | 1 << 12, +2 << 12
    picture = b"\x00\x00\x01\x00" + bytes(8)
    read = sizes_in("mpeg2video")
    assert read(header + extension + picture) == [(160 + 3 * 4096, 120 + 2 * 4096)]
    assert read(header + picture) == [(160, 120)]  # MPEG-1: no extension
    assert read(picture) == [] and read(header[:6]) == []  # a packet with none, one cut short


def test_a_still_mpeg_program_stream_has_its_size_read(tmp_path: Path) -> None:
    """A DVD still (one MPEG-2 picture in a program stream: a menu, a VOB of a photo) gave FFmpeg no
    size when nothing is decoded while probing: it was refused as corrupt."""
    from service.media.inspect import inspect_video
    from service.media.probe import probe_video

    path = tmp_path / "still.vob"
    with av.open(str(path), "w", format="dvd") as out:
        stream = out.add_stream("mpeg2video", rate=25)
        stream.width, stream.height, stream.pix_fmt = 720, 576, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.full((576, 720, 3), 90, np.uint8), format="rgb24")
        frame.pts = 0
        out.mux([*stream.encode(frame), *stream.encode(None)])
    assert (inspect_video(path).coded_width, inspect_video(path).coded_height) == (720, 576)
    info = probe_video(path)
    assert (info.width, info.height, info.frames) == (720, 576, 1)


def test_other_codecs_are_not_read() -> None:
    assert sizes_in("mpeg4") is None and sizes_in("h263") is None


def _av1_sequence_header(width: int, height: int) -> bytes:
    """An AV1 sequence header OBU (5.5) allowing ``width`` x ``height``: one operating point at
    level 5.0, no timing information, 16-bit size fields; the fields after the size left out."""
    fields = [(0, 3), (0, 1), (0, 1), (0, 1), (0, 1), (0, 5), (0, 12), (12, 5), (0, 1),  # ... seq_tier
              (15, 4), (15, 4), (width - 1, 16), (height - 1, 16)]
    bits = "".join(format(value, f"0{n}b") for value, n in fields)
    bits += "0" * (-len(bits) % 8)
    payload = int(bits, 2).to_bytes(len(bits) // 8, "big")
    return bytes([1 << 3 | 1 << 1, len(payload)]) + payload  # OBU_SEQUENCE_HEADER, its size


def test_av1_sequence_headers_tell_the_largest_frame() -> None:
    """AV1 encoders write a sequence header with each key frame, sized for the pictures (libaom and
    SVT-AV1 write a new one where they grow): its max_frame_width and max_frame_height are read,
    after a temporal delimiter, and at most 32 OBUs into a packet."""
    delimiter, frame = bytes([2 << 3 | 1 << 1, 0]), bytes([6 << 3 | 1 << 1, 3, 1, 2, 3])
    read = sizes_in("libdav1d")
    assert read is not None and sizes_in("av1") is read
    assert read(delimiter + _av1_sequence_header(1280, 720) + frame) == [(1280, 720)]
    assert read(delimiter + frame) == []
    assert read(delimiter * 40 + _av1_sequence_header(64, 64)) == []
    assert read(delimiter + bytes([1 << 3 | 1 << 1, 0x80])) == []  # a size field cut short


def test_hevc_reads_only_the_base_layers_sps() -> None:
    """An MV-HEVC stereo video's second view has an SPS of its own syntax (nuh_layer_id 1): not
    read, as FFmpeg decodes the base layer only."""
    data = _encoded("libx265", 96, 64, **{"x265-params": "log-level=error"})
    at = data.find(b"\x00\x00\x01\x42\x01") + 3  # the SPS's two header bytes: type 33, layer 0
    assert sizes_in("hevc")(data) == [(96, 64)]
    second_view = data[: at + 1] + bytes([1 << 3 | data[at + 1] & 7]) + data[at + 2 :]
    assert sizes_in("hevc")(second_view) == []


def test_a_theora_picture_is_read_from_its_identification_header() -> None:
    """FFmpeg's Ogg reader reports a Theora stream's coded frame (whole macroblocks) where no decoder
    may run; the picture inside it is what the decoder gives and what the limits are about.  The
    header here is laid out as fate's ``offset_test.ogv`` writes it: 512×512 at (128, 144) in 48×49
    macroblocks."""
    from service.media.picture_size import theora_picture_size

    def header(version: bytes, mbs: tuple[int, int], picture: tuple[int, int], at: tuple[int, int]) -> bytes:
        return (b"\x80theora" + version + mbs[0].to_bytes(2, "big") + mbs[1].to_bytes(2, "big")
                + picture[0].to_bytes(3, "big") + picture[1].to_bytes(3, "big") + bytes(at) + bytes(20))

    xiph_laced = b"\x00\x2a" + header(b"\x03\x02\x01", (48, 49), (512, 512), (128, 144))
    assert theora_picture_size(xiph_laced) == (512, 512)
    assert theora_picture_size(header(b"\x03\x02\x00", (40, 23), (640, 360), (0, 8))) == (640, 360)
    assert theora_picture_size(header(b"\x03\x01\x00", (48, 49), (512, 512), (0, 0))) is None  # 3.1: no picture
    assert theora_picture_size(header(b"\x03\x02\x01", (4, 4), (512, 512), (0, 0))) is None  # past the frame
    assert theora_picture_size(b"\x01vorbis" + bytes(30)) is None
    assert theora_picture_size(None) is None
