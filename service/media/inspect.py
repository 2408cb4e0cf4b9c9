"""What the API may know about an upload without decoding a picture.

Every size, codec, duration and frame count here comes from container and image headers, and from
demuxing packets; limits are checked before anything is decoded.  Pictures are never decoded: a
0.9 MB PNG can declare 30000×30000 pixels (3.6 GB once decoded), and FFmpeg's own stream probing
(``avformat_find_stream_info``) decodes frames unless told not to, so every container is opened
with no decoder allowed (``codec_whitelist=none``).  The worker checks the same limits again as it
decodes (``service.media.probe``, ``decode``, ``background``): headers can lie.

Import-light on purpose (PyAV and the standard library; no numpy, OpenCV or ONNX Runtime): the API
imports it.

Backgrounds accepted: still PNG, JPEG, WebP, GIF, BMP, AVIF and HEIC images (``max_background_pixels``);
animated GIF and APNG (each frame within the video frame limits, and frames × pixels within
``max_animated_background_pixels``); videos in the containers ``CONTAINER_MAGIC`` lists (the video
limits).  Everything else — SVG, TIFF, text, animated WebP (this build's FFmpeg cannot decode it) — is
refused with ``unsupported_background``.
"""

from __future__ import annotations

import math
import re
import stat
import struct
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO, Literal

import av

from service.config import Settings, get_settings
from service.errors import (
    BackdropError,
    BackgroundTooLarge,
    CorruptBackground,
    CorruptVideo,
    EmptyFile,
    InvalidBackground,
    InvalidColor,
    NotAVideo,
    NoVideoStream,
    UnsupportedBackground,
    UnsupportedCodec,
    VideoTooLarge,
)
from service.media import bmp, heif, timecode
from service.media.asf_header import asf_encrypted
from service.media.declared_size import cut_short
from service.media.metadata_bombs import metadata_bomb
from service.media.mp4_boxes import LEADING_BOXES
from service.media.mp4_boxes import boxes as _boxes
from service.media.mp4_boxes import find_box as _find_box
from service.media.packets import read_packets
from service.media.picture_size import larger, sizes_in, theora_picture_size

#: Demuxers that read single pictures: a PNG or JPEG opens as a one-frame "video" in FFmpeg.
IMAGE_FORMATS = ("image2", "_pipe")
#: Demuxers that turn any text into "video" (ANSI art): a text file is not a video.
TEXT_FORMATS = ("tty",)
#: Codecs whose frame size some containers keep only inside the pictures, which the API never
#: decodes (Sorenson H.263 and On2 VP6 in FLV; MPEG-4 Part 2 and H.263 outside MP4/MOV/3GP): such
#: a video is a codec this service cannot inspect, not a corrupt file.  (Raw DV's size is read from
#: its frames' headers: ``picture_size.dv_sizes``.)
PICTURE_SIZED_CODECS = frozenset({"flv", "vp6f", "vp6a", "vp6", "h263", "h263p", "mpeg4"})
#: Leading bytes of the video containers we know: a file that starts like one but will not open is
#: corrupt (typically truncated), not "not a video".  Old QuickTime files may start with an atom
#: other than ``ftyp``.
CONTAINER_MAGIC = (
    *((4, atom) for atom in LEADING_BOXES),  # MP4 / MOV / 3GP
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM
    (8, b"AVI "),  # AVI (RIFF)
    (0, b"\x00\x00\x01\xba"),  # MPEG-PS
    (0, b"FLV"),
    (0, b"OggS"),
)
#: ISO-BMFF major brands of still pictures (HEIF, AVIF): an ``ftyp`` box that is not a video
#: (FFmpeg's MOV demuxer opens their image items as one-frame streams).  Besides AVIF and HEIC:
#: HEIF's generic brands, its compact form (``mif3``), and H.264, layered HEVC, JPEG, JPEG 2000 and
#: VVC pictures, which this service does not read.
IMAGE_BRANDS = (b"heic", b"heix", b"mif1", b"mif2", b"mif3", b"miaf", b"avif", b"heim", b"heis", b"avci",
                b"jpeg", b"j2ki", b"vvic")
#: A JPEG's end-of-image marker is looked for in this many bytes at the end of the file (after the
#: scan), so that trailers some cameras append stay accepted.
JPEG_TAIL = 1 << 20
#: Exif data read for its orientation (the first directory comes first; a thumbnail may follow).
EXIF_BYTES = 1 << 16
#: Bytes that may stand between a JPEG's segments before the next marker (libjpeg skips any number).
JPEG_RESYNC = 1 << 16
#: Longest side of a still background (JPEG's own limit; libpng refuses past 1,000,000 rows).
MAX_IMAGE_SIDE = 65535
#: Chunks/markers walked before the picture data starts; a header longer than this is refused.
MAX_HEADER_ITEMS = 10_000

Kind = Literal["image", "animated", "video"]


@dataclass(frozen=True)
class AudioInfo:
    index: int
    codec: str
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    container: str
    codec: str
    coded_width: int
    coded_height: int
    rotation: int  # degrees counter-clockwise that make the picture upright (0, 90, 180, 270)
    fps: Fraction
    time_base: Fraction
    frames: int  # exact when the container records it, else estimated from duration × fps
    duration_s: float
    audio: tuple[AudioInfo, ...] = field(default_factory=tuple)
    #: The video track's own length in ``time_base`` ticks, where the container records one (the
    #: sum of its frame durations, which may end before the last frame's timestamp + duration).
    track_ticks: int | None = None
    #: The video's earliest packet time (``time_base`` ticks), where the packets are timed: the
    #: track's length counts from it.
    first_pts: int | None = None
    #: Where the input starts (``time_base`` ticks): its first frame shown, or its sound where that
    #: starts earlier.  The output starts there at 0, as FFmpeg's own command line does it: an HLS
    #: or DASH segment cut from the middle of a stream starts seconds (minutes) in, and an MPEG-TS
    #: whose clock wrapped starts below 0 (its frames came out hidden by MP4's edit list: a video
    #: with no picture at all); audio and video keep their distance.
    origin: int = 0
    #: Its colours as FFmpeg numbers them (AVColorPrimaries, AVColorTransferCharacteristic,
    #: AVColorSpace; 2 = unspecified): from the headers, then the first decoded frame.  The
    #: decoder turns the pictures into RGB with the matrix named; the writer tags its output with
    #: the primaries and transfer, which RGB keeps (``service.media.encode``).
    color_primaries: int = 2
    color_trc: int = 2
    colorspace: int = 2
    #: Width of a stored pixel over its height (DV, HDV and DVD video store 16:9 pictures in
    #: narrower frames): the output keeps it, and backgrounds are fitted to the picture as shown.
    sample_aspect: Fraction = Fraction(1)
    #: The largest picture (coded width, height) the frames' own headers write, where the packet
    #: scan reads them (VP8, VP9, H.264, HEVC, AV1: ``picture_size``): a recording that grows midway is written
    #: at this size where it is larger than the first frame (``probe_video``), whatever the
    #: container's header says, and the limits hold for it too.
    largest_picture: tuple[int, int] | None = None
    #: Whether the picture, once turned by ``rotation``, is shown flipped left to right (a display
    #: matrix that mirrors: ``orientation_from_matrix``); the pipeline flips it so.
    mirror: bool = False
    #: The input's subtitle tracks (stream indices): carried into the output beside its sound
    #: (``encode.SubtitleRoute``).
    subtitles: tuple[int, ...] = ()
    #: The SMPTE timecode of the video's start, where the file gives one (``timecode``): the output
    #: carries it (editors line footage up by it).
    timecode: str | None = None
    #: How many chapters the file marks (``encode.SideTrackCarrier`` carries them).
    chapters: int = 0
    #: Whether the packets' times are their decode times only: every AVI (which stores nothing else),
    #: and an MP4/MOV or FLV (which store decode times) whose every packet's pts equals its dts,
    #: rising in file order (a muxer that wrote no composition offsets, B-frames or not).  The
    #: frames are then timed by their dts (``decode._TimestampGuess``).
    decode_order_times: bool = False

    @property
    def width(self) -> int:
        """Displayed width (after rotation)."""
        return self.coded_height if self.rotation in (90, 270) else self.coded_width

    @property
    def height(self) -> int:
        return self.coded_width if self.rotation in (90, 270) else self.coded_height

    @property
    def has_audio(self) -> bool:
        return bool(self.audio)

    @property
    def has_side_tracks(self) -> bool:
        """Whether the output carries more of the input than its pictures: sound, subtitles or
        chapters (a track of their own in MP4), all read from the input when it is written."""
        return bool(self.audio or self.subtitles or self.chapters)

    @property
    def pixel_aspect(self) -> Fraction:
        """``sample_aspect`` of the upright frames the pipeline makes (turned a quarter, a pixel's
        width and height swap)."""
        return 1 / self.sample_aspect if self.rotation in (90, 270) else self.sample_aspect

    def track_from(self, first_shown: int) -> int | None:
        """The track's length counted from ``first_shown``, the first frame an output shows: later
        than the track's first where frames before the first keyframe could not be decoded (a
        clip cut mid-GOP), whose time the output does not have."""
        if not self.track_ticks or self.first_pts is None or first_shown <= self.first_pts:
            return self.track_ticks
        return self.track_ticks - (first_shown - self.first_pts)


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says: its format, canvas size and number of frames."""

    format: str  # png, jpeg, gif, webp, bmp, avif, heic
    width: int
    height: int
    frames: int = 1
    # why the picture cannot be decoded here, where its header alone shows it (a 12-bit or lossless
    # JPEG, a JPEG inside a BMP); empty where it can
    unsupported: str = ""
    # the Exif orientation (1-8) a PNG's eXIf chunk or a WebP's EXIF chunk records (a JPEG's is
    # applied by its decoder)
    orientation: int = 1
    # a PNG with no alpha channel: the grey or RGB sample its tRNS chunk makes see-through, as a
    # decoder gives it (1-, 2- and 4-bit grey widened to 8 bits); empty where none
    transparent: tuple[int, ...] = ()
    # a GIF's first picture on its canvas: (left, top, width, height); browsers show the canvas
    # around it see-through
    first_picture: tuple[int, ...] = ()


@dataclass(frozen=True)
class BackgroundInfo:
    kind: Kind
    width: int
    height: int
    frames: int
    #: A video's or an animation's headers (``inspect_video``): how its pictures are turned.  Not
    #: part of what a background is (equality, repr): the kind, size and length say that.
    video: VideoInfo | None = field(default=None, compare=False, repr=False)


class ImageHeaderError(ValueError):
    """An image whose header is malformed or whose data is cut short."""


# --- rotation -------------------------------------------------------------------------------------
def normalise_rotation(degrees: float) -> int:
    """FFmpeg's display-matrix angle (−180..180, counter-clockwise) as 0/90/180/270; an angle that
    is not a number (FFmpeg's answer for a degenerate matrix) is no rotation."""
    if not math.isfinite(degrees):
        return 0
    return int(round(degrees / 90.0)) % 4 * 90


def orientation_from_matrix(matrix: tuple[int, ...] | list[int]) -> tuple[int, bool]:
    """(rotation, mirror) a display matrix asks for: the quarter turns counter-clockwise that make
    the picture upright (0/90/180/270, FFmpeg's angle: ``av_display_rotation_get``), and whether the
    turned picture is then flipped left to right.  Those two give all eight ways a matrix can map a
    picture onto its axes, as FFmpeg's command line (``autorotate``) and browsers show them (a mirror
    alone, or with a turn, as some editors write it).  (0, False) for any other matrix (all zeros, a
    shear, an odd angle): such metadata is ignored, not guessed at.

    The matrix maps a stored pixel (x, y) to (a·x + c·y, b·x + d·y) shown: one that reverses the
    picture (a negative determinant) is a flip of the shown picture after the turn ``(-a, b, -c,
    d)`` writes."""
    a, b, c, d = (v / 65536.0 for v in (matrix[0], matrix[1], matrix[3], matrix[4]))
    scale = math.hypot(a, c)
    if scale == 0 or math.hypot(b, d) == 0:
        return 0, False
    mirror = a * d - b * c < 0
    if mirror:
        a, c = -a, -c
    angle = -math.degrees(math.atan2(b / math.hypot(b, d), a / scale))
    k = normalise_rotation(angle)
    r = math.radians(k)  # the matrix av_display_rotation_set(-k) writes: (cos r, -sin r, sin r, cos r)
    want = (math.cos(r), -math.sin(r), math.sin(r), math.cos(r))
    if any(abs(v / scale - w) > 0.01 for v, w in zip((a, b, c, d), want, strict=True)):
        return 0, False
    return k, mirror


@dataclass(frozen=True)
class Mp4VideoTrack:
    """What the first video track of an MP4/MOV/3GP records in its boxes, read without decoding.

    ``matrix``: its display matrix as FFmpeg computes it (the track header's times the movie
    header's), None without a track header.  ``entry``: the type of its first sample entry
    (``avc1``, ``hvc1``; ``encv`` where it is encrypted by Common Encryption, the codec's own moved
    into its ``sinf``).  ``size``: the width and height that entry records, None where zero or
    absent: FFmpeg drops them when it probes MPEG-4 Part 2 and H.263 tracks with no decoder allowed
    (it waits for its parser, which needs one); the worker checks the first decoded frame's own size
    again.  ``fragmented``: the file's samples are in fragments (``moov`` holds ``mvex``), whose
    length FFmpeg gives as where the last one ends (a segment cut from a stream starts seconds in)
    or as the whole stream's (the init segment's ``mdhd``: 3900 s for the 8 s a file held)."""

    matrix: tuple[int, ...] | None
    entry: bytes | None
    size: tuple[int, int] | None
    fragmented: bool = False

    @property
    def encrypted(self) -> bool:
        return self.entry == b"encv"


def mp4_video_track(path: Path) -> Mp4VideoTrack | None:
    """The first video track of an MP4/MOV (``Mp4VideoTrack``), or None where the file has no
    ``moov`` box or no video track in it.  Only the ``moov`` box is read, once."""
    with open(path, "rb") as fh:
        moov = _find_box(fh, 0, fh.seek(0, 2), b"moov")
        if moov is None:
            return None
        movie: tuple[int, ...] = _IDENTITY
        boxes = _boxes(fh, *moov)
        fragmented = any(kind == b"mvex" for kind, _, _ in boxes)
        for kind, start, end in boxes:
            if kind == b"mvhd":
                movie = _matrix_at(fh, start, 36, 28) or movie
            elif kind == b"trak" and _is_video_track(fh, start, end):
                tkhd = _find_box(fh, start, end, b"tkhd")
                track = tkhd and _matrix_at(fh, tkhd[0], 40, 52)
                matrix = _mul(track or _IDENTITY, movie) if tkhd else None
                return Mp4VideoTrack(matrix, *_sample_entry(fh, start, end), fragmented)
    return None


_IDENTITY = (65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30)


def _sample_entry(fh: BinaryIO, start: int, end: int) -> tuple[bytes | None, tuple[int, int] | None]:
    """The type of the first sample entry in the ``trak`` box between ``start`` and ``end``, and the
    width and height it records (None where zero)."""
    box: tuple[int, int] | None = (start, end)
    for kind in (b"mdia", b"minf", b"stbl", b"stsd"):
        box = box and _find_box(fh, *box, kind)
    # stsd: version and flags, entry count, then the first entry: its size and type, 6 reserved
    # bytes, the data reference index, 16 bytes of VisualSampleEntry fields, width, height
    if not box or box[1] - box[0] < 8 + 8:
        return None, None
    fh.seek(box[0] + 8)
    raw = fh.read(36) if box[1] - box[0] >= 8 + 36 else fh.read(8)
    entry = raw[4:8]
    width, height = struct.unpack(">HH", raw[32:36]) if len(raw) == 36 else (0, 0)
    return entry, ((width, height) if width and height else None)


def _is_video_track(fh: BinaryIO, start: int, end: int) -> bool:
    mdia = _find_box(fh, start, end, b"mdia")
    hdlr = mdia and _find_box(fh, *mdia, b"hdlr")
    if not hdlr:
        return False
    fh.seek(hdlr[0] + 8)
    return fh.read(4) == b"vide"


def _matrix_at(fh: BinaryIO, body: int, v0_offset: int, v1_offset: int) -> tuple[int, ...] | None:
    """The 9-value matrix of an mvhd/tkhd box, whose offset depends on the box's version."""
    fh.seek(body)
    version = fh.read(1)
    if not version:
        return None
    fh.seek(body + (v1_offset if version[0] == 1 else v0_offset))
    raw = fh.read(36)
    return struct.unpack(">9i", raw) if len(raw) == 36 else None


def _mul(track: tuple[int, ...], movie: tuple[int, ...]) -> tuple[int, ...]:
    shifts = (16, 16, 30)
    return tuple(
        sum((track[i * 3 + e] * movie[e * 3 + j]) >> shifts[e] for e in range(3)) for i in range(3) for j in range(3)
    )


# --- image headers --------------------------------------------------------------------------------
def sniff_image(head: bytes) -> str | None:
    """The image format the leading bytes announce, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM" and len(head) >= 26:
        return "bmp"
    return heif.kind(head)


def read_image_header(path: Path) -> ImageHeader:
    """Format, size and frame count of an image from its header, after checking that its picture
    data is there (PNG: an IDAT and an IEND; JPEG: a scan and an end-of-image marker; GIF: every
    block complete; WebP: every chunk within the file; BMP: the rows the header promises).
    Raises ``ImageHeaderError`` when the header is malformed or the data cut short."""
    with open(path, "rb") as fh:
        head = fh.read(64)
        kind = sniff_image(head)
        if kind is None:
            raise ImageHeaderError("not an image this service reads")
        size = fh.seek(0, 2)
        try:
            header = _PARSERS[kind](fh, size)
        except (struct.error, IndexError):
            raise ImageHeaderError(f"the {kind.upper()} file is cut short") from None
    if header.width <= 0 or header.height <= 0:
        raise ImageHeaderError(f"the {kind.upper()} header declares no picture ({header.width}x{header.height})")
    return header


def _png(fh: BinaryIO, size: int) -> ImageHeader:
    pos, width, height, frames, depth, colour = 8, 0, 0, 1, 8, 0
    orientation, transparent = 1, ()
    for _ in range(MAX_HEADER_ITEMS):
        fh.seek(pos)
        length, tag = struct.unpack(">I4s", fh.read(8))
        if pos == 8 and tag != b"IHDR":
            raise ImageHeaderError("the PNG does not start with its IHDR chunk")
        if tag == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", fh.read(10))
        elif tag == b"acTL":
            frames = max(1, struct.unpack(">I", fh.read(4))[0])
        elif tag == b"eXIf":
            orientation = exif_orientation(fh.read(min(length, EXIF_BYTES)))
        elif tag == b"tRNS" and length == {0: 2, 2: 6}.get(colour):  # one grey or RGB sample; a palette's
            samples = struct.unpack(f">{length // 2}H", fh.read(length))  # is the decoder's; never read more
            # a grey sample's bits past the depth are ignored, as libpng does
            transparent = samples if depth >= 8 else ((samples[0] & ((1 << depth) - 1)) * (255 // ((1 << depth) - 1)),)
        elif tag == b"IDAT":
            break
        elif tag == b"IEND":
            raise ImageHeaderError("the PNG has no image data (no IDAT chunk)")
        pos += 12 + length
        if pos > size:
            raise ImageHeaderError("the PNG is cut short before its image data")
    else:
        raise ImageHeaderError("the PNG header is too long")
    fh.seek(max(0, size - 4096))
    if b"IEND\xaeB`\x82" not in fh.read():
        raise ImageHeaderError("the PNG is cut short (no IEND chunk at its end)")
    return ImageHeader("png", width, height, frames, orientation=orientation, transparent=transparent)


def exif_orientation(data: bytes) -> int:
    """The orientation (1-8) that Exif data (a TIFF header and its first directory, after an
    ``Exif\\0\\0`` prefix where a writer put one) records; 1 where it records none or is malformed."""
    data = data.removeprefix(b"Exif\0\0")
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or len(data) < 8:
        return 1
    (ifd,) = struct.unpack(order + "I", data[4:8])
    if ifd + 2 > len(data):
        return 1
    (count,) = struct.unpack(order + "H", data[ifd:ifd + 2])
    for at in range(ifd + 2, min(ifd + 2 + 12 * count, len(data) - 11), 12):
        tag, kind, _, value = struct.unpack(order + "HHIH", data[at:at + 10])
        if tag == 0x0112 and kind == 3:  # Orientation, a SHORT
            return value if 1 <= value <= 8 else 1
    return 1


#: JPEG start-of-frame markers (baseline, extended, progressive, lossless; Huffman or arithmetic).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(fh: BinaryIO, size: int) -> ImageHeader:
    pos, width, height, unsupported = 2, 0, 0, ""
    for _ in range(MAX_HEADER_ITEMS):
        fh.seek(pos)
        # Bytes where a marker should be (a segment whose length is off by a few, junk an editor
        # left): libjpeg skips them up to the next 0xFF with a warning, and so do browsers.
        skip = fh.read(JPEG_RESYNC).find(b"\xff")
        if skip < 0:
            raise ImageHeaderError("the JPEG is cut short or malformed before its scan")
        fh.seek(pos + skip + 1)
        marker = fh.read(1)
        while marker == b"\xff":  # fill bytes
            marker = fh.read(1)
        if not marker:
            raise ImageHeaderError("the JPEG is cut short before its scan")
        m = marker[0]
        if m in (0x00, 0x01) or 0xD0 <= m <= 0xD8:  # no segment follows (0xFF 0x00: junk, skipped)
            pos = fh.tell()
            continue
        if m == 0xD9:
            raise ImageHeaderError("the JPEG ends before its scan")
        segment = fh.tell()
        (length,) = struct.unpack(">H", fh.read(2))
        if m in _SOF:
            precision, height, width = struct.unpack(">BHH", fh.read(5))
            unsupported = _jpeg_unsupported(m, precision)
        pos = segment + length
        if m == 0xDA:
            break
    else:
        raise ImageHeaderError("the JPEG header is too long")
    if not width:
        raise ImageHeaderError("the JPEG has no frame header (SOF) before its scan")
    if pos >= size:
        raise ImageHeaderError("the JPEG is cut short: its scan holds no data")
    start = max(pos, size - JPEG_TAIL)
    fh.seek(start)
    if b"\xff\xd9" not in fh.read(size - start):
        raise ImageHeaderError("the JPEG is cut short (no end-of-image marker after its scan)")
    return ImageHeader("jpeg", width, height, unsupported=unsupported)


def _jpeg_unsupported(sof: int, precision: int) -> str:
    """Why a JPEG of this coding (its SOF marker) and sample precision cannot be decoded here (the
    8-bit baseline, extended and progressive codings can), else ""."""
    if sof in (0xC3, 0xC7, 0xCB, 0xCF):
        kind = "lossless"
    elif sof in (0xC5, 0xC6, 0xCD, 0xCE):
        kind = "hierarchical"
    elif precision != 8:
        kind = f"{precision}-bit"
    else:
        return ""
    return f"this JPEG is {kind} (a medical or scientific coding), which this service does not read: send an 8-bit JPEG or a PNG"


def _gif(fh: BinaryIO, size: int) -> ImageHeader:
    """Walks every block (sub-blocks of at most 255 bytes) to count the frames: O(size / 255), read
    through a 1 MiB window so that memory stays flat whatever the file's size."""
    fh.seek(6)
    width, height, packed = struct.unpack("<HHB", fh.read(5))
    data = _Window(fh, size)
    pos = 13 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0)
    frames = 0
    first: tuple[int, ...] = ()
    while pos < size:
        block = data[pos]
        if block == 0x3B:  # trailer
            break
        if block == 0x2C:  # image descriptor (+ local colour table) + LZW code size
            left, top, w, h = struct.unpack("<4H", bytes(data[pos + k] for k in range(1, 9)))
            if w > width or h > height:  # FFmpeg decodes it to the canvas' width: rows out of step
                raise ImageHeaderError(f"a picture in the GIF ({w}x{h}) is larger than its canvas ({width}x{height})")
            first = first or (left, top, w, h)
            local = data[pos + 9]
            pos += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0) + 1
            frames += 1
        elif block == 0x21:  # extension: label
            pos += 2
        else:
            raise ImageHeaderError(f"the GIF has an unknown block 0x{block:02x}")
        while True:  # data sub-blocks up to a zero-length one
            n = data[pos]
            pos += 1 + n
            if n == 0:
                break
    if frames == 0:
        raise ImageHeaderError("the GIF holds no image")
    return ImageHeader("gif", width, height, frames, first_picture=first)


class _Window:
    """Bytes of a file by position, read 1 MiB at a time (IndexError past the end)."""

    def __init__(self, fh: BinaryIO, size: int, span: int = 1 << 20):
        self.fh, self.size, self.span = fh, size, span
        self.start, self.buf = 0, b""

    def __getitem__(self, pos: int) -> int:
        if not self.start <= pos < self.start + len(self.buf):
            if pos >= self.size:
                raise IndexError(pos)
            self.fh.seek(pos)
            self.start, self.buf = pos, self.fh.read(self.span)
        return self.buf[pos - self.start]


def _webp(fh: BinaryIO, size: int) -> ImageHeader:
    fh.seek(12)
    pos, width, height, frames, has_image, orientation = 12, 0, 0, 0, False, 1
    for _ in range(1_000_000):
        if pos + 8 > size:
            break
        fh.seek(pos)
        tag, length = struct.unpack("<4sI", fh.read(8))
        if pos + 8 + length > size:
            raise ImageHeaderError(f"the WebP is cut short (its {tag.decode('latin-1')!r} chunk)")
        body = fh.read(min(length, 16))
        if tag == b"VP8X":
            w, h = body[4:7] + b"\0", body[7:10] + b"\0"
            width, height = struct.unpack("<I", w)[0] + 1, struct.unpack("<I", h)[0] + 1
        elif tag == b"VP8 " and not width:
            if body[3:6] != b"\x9d\x01\x2a":
                raise ImageHeaderError("the WebP's VP8 frame header is malformed")
            w, h = struct.unpack("<HH", body[6:10])
            width, height = w & 0x3FFF, h & 0x3FFF
        elif tag == b"VP8L" and not width:
            (bits,) = struct.unpack("<I", body[1:5])
            width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        elif tag == b"EXIF":
            fh.seek(pos + 8)
            orientation = exif_orientation(fh.read(min(length, EXIF_BYTES)))
        has_image |= tag in (b"VP8 ", b"VP8L", b"ANMF")
        frames += tag == b"ANMF"
        pos += 8 + length + (length & 1)
    if not has_image:
        raise ImageHeaderError("the WebP holds no image")
    return ImageHeader("webp", width, height, max(1, frames), orientation=orientation)


def _bmp(fh: BinaryIO, size: int) -> ImageHeader:
    header = bmp.read_header(fh)
    width, height, compression = header.width, header.height, header.compression
    if compression in (4, 5):
        return ImageHeader("bmp", width, abs(height), unsupported="this BMP's coding (a JPEG or PNG inside it, or "
                           "OS/2's 24-bit run lengths) is not one this service reads: send a PNG or JPEG")
    if compression not in (0, 1, 2, 3, 6):  # RGB, RLE8, RLE4, bit fields
        raise ImageHeaderError(f"the BMP's compression ({compression}) is unknown")
    height = abs(height)
    rows = ((width * header.bits + 31) // 32) * 4 * height
    need = header.offset + (rows if compression in (0, 3, 6) else 1)
    if need > size:
        raise ImageHeaderError("the BMP is cut short (fewer rows than its header declares)")
    return ImageHeader("bmp", width, height)


def _heif(fh: BinaryIO, size: int) -> ImageHeader:
    try:
        header = heif.read_header(fh, size)
    except heif.HeifError as exc:
        raise ImageHeaderError(str(exc)) from None
    return ImageHeader(header.format, header.width, header.height)


_PARSERS = {"png": _png, "jpeg": _jpeg, "gif": _gif, "webp": _webp, "bmp": _bmp, "avif": _heif, "heic": _heif}


# --- videos ---------------------------------------------------------------------------------------
def still_picture_brand(head: bytes) -> str | None:
    """The major brand of a HEIF still picture (``IMAGE_BRANDS``) whose ``ftyp`` box ``head``
    starts with, else None: an ISO-BMFF file that is not a video."""
    if head[4:8] == b"ftyp" and head[8:12] in IMAGE_BRANDS:
        return head[8:12].decode("latin-1")
    return None


def looks_like_container(head: bytes) -> bool:
    """Whether ``head`` (``HEAD_BYTES`` of a file) starts like a video container we know."""
    if still_picture_brand(head):
        return False
    if any(head[off : off + len(magic)] == magic for off, magic in CONTAINER_MAGIC):
        return True
    # MPEG-TS (HLS segments, camcorders' .mts): 188-byte packets each starting 0x47, or 192 with a
    # 4-byte time code before each (M2TS); three in a row, as FFmpeg's own probe asks
    return any(len(head) >= first + 2 * size + 1 and all(head[first + k * size] == 0x47 for k in range(3))
               for first, size in ((0, 188), (4, 192)))


#: How much of a file is read to tell what it is: three MPEG-TS packets (``looks_like_container``).
HEAD_BYTES = 3 * 192 + 4


def _head(path: Path, n: int = HEAD_BYTES) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _check_file(path: Path) -> None:
    """The video is a regular file with bytes in it: else ``not_a_video`` (missing, a folder, a
    device, unreadable) or ``empty_file``."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise NotAVideo(f"file not found: {path.name}") from None
    except OSError as exc:
        raise NotAVideo(f"{path.name} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise NotAVideo(f"{path.name} is not a file (a folder, a device or a pipe)")
    if st.st_size == 0:
        raise EmptyFile("the video file is empty (0 bytes)")


def _video_head(path: Path) -> bytes:
    """The video's leading bytes; ``not_a_video`` where the file cannot be read (no permission)."""
    try:
        return _head(path)
    except OSError as exc:
        raise NotAVideo(f"{path.name} cannot be read: {exc.strerror}") from None


def video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The video a file holds: its first video stream that is not cover art, unless that one is a
    single picture and another holds more.  An animated AVIF is such a file: FFmpeg lists its still
    picture (the item a viewer shows first) before the sequence, so the first stream alone made a
    ten-second animation one frame.  Every reader of an input (inspecting, decoding, splitting
    into chunks, a background video) takes the same one."""
    if not container.streams.video:
        raise NoVideoStream("the file has no video stream")
    moving = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not moving:
        raise NoVideoStream("the file has no video stream, only a cover picture (an audio file?)")
    first, longest = moving[0], max(moving, key=lambda s: s.frames)
    return longest if first.frames <= 1 < longest.frames else first


ENCRYPTED = "the video is encrypted (DRM): this service reads unencrypted video only"


# How every input is opened.  No decoder may run while FFmpeg probes the streams (``codec_whitelist``):
# sizes and codec come from the headers, and a picture is decoded only when the caller decodes it,
# with the limits it sets on its own decoder.  Metadata that is not UTF-8 (a title or comment
# in Latin-1 from an old camera or Photoshop) is read with its odd bytes replaced: PyAV's default
# raised UnicodeDecodeError while opening, and the video was refused as corrupt.
OPEN_OPTIONS: dict[str, Any] = {
    "mode": "r", "timeout": 30, "container_options": {"codec_whitelist": "none"}, "metadata_errors": "replace",
}


def open_input(path: Path) -> av.container.InputContainer:
    """Open a media file for demuxing (``OPEN_OPTIONS``), mapping FFmpeg's failures to our codes."""
    path = Path(path)
    _check_file(path)
    bomb = metadata_bomb(path)  # before FFmpeg spends minutes reading it
    if bomb:
        raise VideoTooLarge(bomb)
    try:
        return av.open(str(path), **OPEN_OPTIONS)
    except av.error.MemoryError:  # its headers ask more than the process may hold (``confined``)
        raise VideoTooLarge("the file's headers need more memory than a video is allowed") from None
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        if looks_like_container(_video_head(path)):
            track = mp4_video_track(path)
            if track and track.encrypted:  # FFmpeg opens no fragmented CENC file without its key
                raise UnsupportedCodec(ENCRYPTED) from None
            raise CorruptVideo(f"the video file is corrupt or truncated ({exc.__class__.__name__})") from None
        raise NotAVideo("the file is not a video this service can read") from None


def inspect_video(path: Path, settings: Settings | None = None) -> VideoInfo:
    """Size (displayed), codec, frame rate, duration, frame count and audio of a video, from its
    headers and its packets; raises the input error that fits (``not_a_video``,
    ``no_video_stream``, ``corrupt_video``, ``unsupported_codec``, ``video_too_large``,
    ``empty_file``).  Animated GIF and APNG with more than one frame are videos; still images are
    not.  Nothing is decoded."""
    settings = settings or get_settings()
    path = Path(path)
    _check_file(path)
    brand = still_picture_brand(_video_head(path))
    if brand:
        raise NotAVideo(f"this is a still image ({brand}), not a video")
    animated = _animated_image(path, settings)
    container = open_input(path)
    try:
        name = container.format.name
        if name in TEXT_FORMATS:
            raise NotAVideo("this is a text file, not a video")
        if any(tag in name for tag in IMAGE_FORMATS):
            raise NotAVideo(f"this is a still image ({name}), not a video")
        stream = video_stream(container)
        ctx = stream.codec_context
        mp4 = mp4_video_track(path) if name.startswith("mov") else None
        if stream.metadata.get("enc_key_id") or (mp4 and mp4.encrypted) or (name.startswith("asf") and asf_encrypted(path)):
            raise UnsupportedCodec(ENCRYPTED)  # Matroska/WebM's ContentEncryption, MP4's encv, ASF's DRM
        if ctx is None or ctx.codec is None:
            raise UnsupportedCodec("the video codec is not supported")
        coded_w, coded_h = (animated.width, animated.height) if animated else (ctx.width, ctx.height)
        if ctx.codec.name == "theora":  # the coded frame, not the picture, without the decoder
            coded_w, coded_h = theora_picture_size(ctx.extradata) or (coded_w, coded_h)
        if (coded_w <= 0 or coded_h <= 0) and mp4:
            coded_w, coded_h = mp4.size or (0, 0)
        if (coded_w <= 0 or coded_h <= 0) and ctx.codec.name in PICTURE_SIZED_CODECS:
            raise UnsupportedCodec(
                f"{ctx.codec.name} video in {name.split(',')[0].upper()} records its frame size only inside its "
                "pictures; this service reads the size from the headers. Re-encode it to MP4 (H.264)"
            )
        sizes = sizes_in(ctx.codec.name, ctx.extradata)
        if (coded_w <= 0 or coded_h <= 0) and sizes is None:  # else the scan reads it (``picture_size``)
            raise CorruptVideo("the video's headers record no frame size")
        rotation, mirror = orientation_from_matrix(mp4.matrix) if mp4 and mp4.matrix else (0, False)
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not fps or fps <= 0:
            raise CorruptVideo("the video stream has no usable frame rate")
        fps = Fraction(fps)
        time_base = Fraction(stream.time_base) if stream.time_base else Fraction(1, 90000)
        if stream.duration:
            declared = float(stream.duration * time_base)
        elif container.duration:
            declared = container.duration / av.time_base
        else:
            declared = 0.0
        # Only MP4/MOV declare the track's own length for certain: elsewhere FFmpeg's "duration" can
        # be where the stream ends (Matroska's DURATION tag) or an estimate, and the start time it
        # gives is the file's earliest (the sound's, say), so the packets below tell the length.
        info = VideoInfo(
            path=path, container=name, codec=ctx.codec.name, coded_width=coded_w, coded_height=coded_h,
            rotation=rotation, mirror=mirror, fps=fps, time_base=time_base, frames=0,
            duration_s=declared if mp4 and not mp4.fragmented else 0.0,
            color_primaries=int(ctx.color_primaries or 2), color_trc=int(ctx.color_trc or 2),
            colorspace=int(ctx.colorspace or 2),
            sample_aspect=sample_aspect(stream),
            audio=tuple(
                AudioInfo(a.index, a.codec_context.codec.canonical_name, a.codec_context.sample_rate or 0,
                          a.codec_context.channels or 0)
                for a in container.streams.audio
                if a.codec_context is not None and same_program(name, stream, a)
            ),
            subtitles=tuple(t.index for t in container.streams.subtitles if same_program(name, stream, t)),
            timecode=timecode.tagged(container, stream),
            chapters=len(container.chapters()),
        )
        check_limits(info, settings)  # the frame size and an MP4/MOV track's declared length, before demuxing
        cut = cut_short(path)  # Matroska's and AVI's sizes; an MP4's sample count is checked below
        if cut:
            raise CorruptVideo(cut)
        scan = scan_packets(container, stream, settings.max_frames, sizes)
        frames = scan.count - scan.discarded  # the frames a decoder gives
        measured = scan.rate(time_base)
        if measured and (not stream.average_rate or (declares_rate(name) and not 2 / 3 <= fps / measured <= 1.5)):
            # none recorded (FFmpeg's guess is the time base: 1000 in Matroska), or a declared
            # constant far from the frames' own rate (a remux wrote 15360 fps for a 10 fps clip in
            # Matroska's DefaultDuration; FLV's metadata said 1000): the packets' times say it
            fps = measured
        frame_ticks = float(1 / (fps * time_base))
        span = scan.span(frame_ticks)
        track = None if mp4 and mp4.fragmented else track_length(name, stream.duration, scan.first_pts, span, frame_ticks)
        # MP4/MOV headers index every sample, so fewer packets than listed means the file was cut
        # short.  (AVI headers count dropped frames too, Matroska lists none: no such check there.)
        if name.startswith("mov") and stream.frames and scan.count < stream.frames:
            raise CorruptVideo(
                f"the video is truncated: the container lists {stream.frames} frames, the file holds {scan.count}"
            )
        if scan.count == 0:  # an init segment sent alone, a recording stopped before its first frame
            raise CorruptVideo("the video stream holds no frames")
        if track:
            duration = float(track * time_base)
        else:  # the shorter of the declared length and the packets' span: an end time declared as
            # the length, or a timestamp jump in the packets, each makes one of them too long
            duration = min([d for d in (declared, float((span or 0) * time_base)) if d > 0] or [0.0])
        if frames <= 0:
            frames = max(1, math.ceil(duration * fps - 1e-6))
        if duration <= 0:
            duration = float(frames / fps)
        # the size the output is written at (``probe_video``)
        coded_w, coded_h = larger((coded_w, coded_h), scan.largest)
        if coded_w <= 0 or coded_h <= 0:
            raise CorruptVideo("the video's headers record no frame size, nor do its frames")
        info = replace(info, coded_width=coded_w, coded_height=coded_h, fps=fps, frames=frames, duration_s=duration,
                       track_ticks=track, first_pts=scan.first_pts,
                       origin=start_of(container, scan.first_pts, time_base, {a.index for a in info.audio}),
                       largest_picture=scan.largest, decode_order_times=scan.decode_order)
    finally:
        container.close()
    check_limits(info, settings)
    return info


def sample_aspect(stream: av.video.stream.VideoStream) -> Fraction:
    """A stream's sample aspect ratio (the container's, else the codec's) as the pipeline uses it:
    1 where none is recorded (0/1) or where it is past 1:4 or 4:1, which no real camera or disc
    writes."""
    value = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    if not value or value <= 0:
        return Fraction(1)
    value = Fraction(value).limit_denominator(1000)
    return value if Fraction(1, 4) <= value <= 4 else Fraction(1)


def _animated_image(path: Path, settings: Settings) -> ImageHeader | None:
    """For a file that is an image: its header when animated (and within the video limits), else
    ``not_a_video``.  None for anything else."""
    try:
        if sniff_image(_head(path)) is None:
            return None
        header = read_image_header(path)
    except FileNotFoundError:
        return None  # open_input names it
    except ImageHeaderError as exc:
        raise CorruptVideo(f"the animated image is corrupt: {exc}") from None
    if header.frames <= 1:
        raise NotAVideo(f"this is a still image ({header.format}), not a video")
    if header.format not in ("gif", "png"):
        raise UnsupportedCodec(f"animated {header.format.upper()} cannot be decoded by this service")
    check_frame_size(header.width, header.height, settings)
    if header.frames > settings.max_frames:
        raise VideoTooLarge(f"{header.frames} frames exceed the limit of {settings.max_frames}")
    return header


def declares_rate(container: str) -> bool:
    """Whether FFmpeg's frame rate for ``container`` is a constant the file declares (Matroska's
    DefaultDuration, FLV's or ASF's metadata), which muxers fill from wherever, so that the packets'
    own rate is the one to trust when the two are far apart.  Not MP4/MOV, where FFmpeg counts the
    samples, nor MPEG-TS/PS, where a field picture can be a packet of its own (packets twice as often
    as frames)."""
    return not container.startswith(("mov", "mpeg"))


@dataclass(frozen=True)
class PacketScan:
    """What demuxing a video stream's packets tells: how many there are and the times they span."""

    count: int  # all of them, also those an MP4 edit list leaves out (``discarded``)
    discarded: int = 0
    first_pts: int | None = None  # of the frames shown, as are the times below
    last_pts: int | None = None  # the latest presentation time
    last_duration: int = 0  # that packet's duration, 0 where it records none
    timed_end: int | None = None  # the latest pts + duration among the packets that record one
    steps: tuple[int, int] = (0, 0)  # (how many, ticks in all) of the ordinary steps between frame times
    largest: tuple[int, int] | None = None  # the largest picture the packets write (``picture_size``)
    decode_order: bool = False  # the packets are timed by their decode times only (``VideoInfo``)

    def rate(self, time_base: Fraction) -> Fraction | None:
        """Frames a second as the packets' times give it: the mean of the ordinary steps between
        consecutive frame times, so that a jump in the timestamps (a splice, a pause in a recording)
        does not count as frames' time."""
        count, ticks = self.steps
        if count < 1 or ticks <= 0:
            return None
        return (Fraction(count) / (ticks * time_base)).limit_denominator(1001)

    def span(self, frame_ticks: float) -> int | None:
        """Ticks from the first frame shown to the end of the last (``frame_ticks`` long where its
        packet records no duration), where the packets are timed."""
        if self.first_pts is None or self.last_pts is None:
            return None
        end = self.last_pts + (self.last_duration or round(frame_ticks))
        return max(end, self.timed_end or end) - self.first_pts


def ordinary_steps(times: Sequence[int]) -> tuple[int, int]:
    """(count, total) of the steps between consecutive distinct ``times`` (in display order) that are
    at most four times the median step: a frame shown longer (frames dropped) is ordinary, a jump in
    the timestamps is not."""
    ordered = sorted(set(times))
    steps = [b - a for a, b in zip(ordered[:-1], ordered[1:], strict=True)]
    if not steps:
        return 0, 0
    typical = sorted(steps)[len(steps) // 2]
    ordinary = [d for d in steps if d <= 4 * typical]
    return len(ordinary), sum(ordinary)


def track_length(
    container: str, declared: int | None, first_pts: int | None, span: int | None, frame_ticks: float
) -> int | None:
    """The video track's own length in ticks where the file records it, else None (the frames'
    timing is all there is).  MP4/MOV record it in the sample table (FFmpeg's stream duration).
    Matroska records where the track ends (its DURATION tag, as FFmpeg writes it): less the first
    frame's time, taken only where that lands within a frame of the packets' ``span``, since other
    muxers may have written a length there.  Elsewhere FFmpeg's figure is an estimate."""
    if not declared or declared <= 0:
        return None
    if container.startswith("mov"):
        return int(declared)
    if container.startswith("matroska") and span and first_pts is not None:
        length = int(declared) - first_pts
        return length if abs(length - span) <= frame_ticks else None
    return None


def scan_packets(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, max_frames: int,
    sizes: Callable[[bytes], list[tuple[int, int]]] | None = None,
) -> PacketScan:
    """Count the video packets of a container just opened, and the times they span, by demuxing
    (no decoding: cheap), stopping at the first packet past ``max_frames``.  A cut-off file shows
    up here as a demuxer error or as fewer packets than the header promised.  With ``sizes``, the
    reader of the sizes the codec's packets write (``picture_size.sizes_in``), the largest is read
    too."""
    count, discarded, last, last_duration, timed_end = 0, 0, None, 0, None
    times = array("q")  # every timed packet's pts: its first frame's time and the steps between
    # AVI records decode times only (a packet's place in the file), and FFmpeg makes presentation
    # times up from them for B-frames, a frame or two on; the decoder's frames are timed by their
    # places too (``decode._TimestampGuess``), so the first picture's time is its packet's dts
    by_dts = container.format.name == "avi"
    # only where the container stores decode times (MP4/MOV's sample table, FLV's tags) can its
    # presentation times be those (a muxer that wrote no composition offsets); Matroska, Ogg and
    # the rest store presentation times, and FFmpeg makes their dts up (here, with no decoder to
    # say how far frames are reordered, as the pts)
    decode_order, last_dts = container.format.name.startswith(("mov", "flv")), None
    largest: tuple[int, int] | None = None
    try:
        for packet in read_packets(container, stream):
            if not packet.size:
                continue
            count += 1
            if count > max_frames:
                raise VideoTooLarge(f"the video has more frames than the limit of {max_frames}")
            for size in sizes(bytes(packet)) if sizes else ():
                largest = larger(largest or (0, 0), size)
            if packet.is_discard:  # decoded for the frames that refer to it, never shown
                discarded += 1
                continue
            when = packet.dts if by_dts else packet.pts
            if when is None:
                continue
            dts = packet.dts
            if dts is None or dts != packet.pts or last_dts is not None and dts <= last_dts:
                decode_order = False
            last_dts = dts
            pts, duration = int(when), int(packet.duration or 0)
            times.append(pts)
            if last is None or pts > last:
                last, last_duration = pts, duration
            if duration > 0:
                timed_end = pts + duration if timed_end is None else max(timed_end, pts + duration)
    except av.error.FFmpegError as exc:
        raise CorruptVideo(f"the video file is corrupt or truncated ({exc.__class__.__name__})") from None
    return PacketScan(count, discarded, min(times) if times else None, last, last_duration, timed_end,
                      ordinary_steps(times), largest, by_dts or decode_order and len(times) > 1)


def check_frame_size(width: int, height: int, settings: Settings, error: type[BackdropError] = VideoTooLarge) -> None:
    """Refuse a (displayed) frame size past the video limits."""
    s = settings
    if width > s.max_width or height > s.max_height or width * height > s.max_pixels:
        raise error(
            f"frame size {width}x{height} exceeds the limit ({s.max_width}x{s.max_height}, {s.max_pixels} pixels)"
        )


def start_of(container: av.container.InputContainer, first_pts: int | None, time_base: Fraction,
             audio: set[int]) -> int:
    """Where the input starts in ``time_base`` ticks (``VideoInfo.origin``): its first frame shown,
    or the earliest start of its ``audio`` streams (indices: those the output carries) where that
    is earlier (as the demuxer has it: not decoded)."""
    if first_pts is None:
        return 0
    starts = [math.floor(a.start_time * Fraction(a.time_base) / time_base)
              for a in container.streams.audio if a.index in audio and a.start_time is not None and a.time_base]
    return min([first_pts, *starts])


#: How far from its video's start a stream of an MPEG-TS may start and still be of its programme:
#: one programme's streams start within a second or two of each other, and each programme of a
#: broadcast multiplex keeps a clock of its own, hours from the others'
PROGRAM_WINDOW_S = 60


def same_program(container: str, video: av.video.stream.VideoStream, other: av.stream.Stream) -> bool:
    """Whether ``other`` (a sound or subtitle track) plays beside ``video``.  An MPEG-TS can carry
    a broadcast's every channel, each on its own clock: only the streams that start within
    ``PROGRAM_WINDOW_S`` of the video are its programme's.  A DVB multiplex's capture (five
    channels, twelve sound tracks) came out 21 hours long, holding 1.6 s of pictures, every
    channel's sound at its own time.  Any stream of another container (or one whose start is not
    known) is the video's."""
    if container != "mpegts" or video.start_time is None or other.start_time is None:
        return True
    if not video.time_base or not other.time_base:
        return True
    gap = other.start_time * Fraction(other.time_base) - video.start_time * Fraction(video.time_base)
    return abs(gap) <= PROGRAM_WINDOW_S


def check_limits(info: VideoInfo, settings: Settings) -> None:
    check_frame_size(info.width, info.height, settings)
    if info.largest_picture:
        w, h = info.largest_picture
        check_frame_size(*((h, w) if info.rotation in (90, 270) else (w, h)), settings)
    if info.duration_s > settings.max_duration_s:
        raise VideoTooLarge(f"duration {info.duration_s:.1f}s exceeds the limit of {settings.max_duration_s:.0f}s")
    if info.frames > settings.max_frames:
        raise VideoTooLarge(f"{info.frames} frames exceed the limit of {settings.max_frames}")


# --- backgrounds ----------------------------------------------------------------------------------
COLOR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")


def parse_color(spec: str) -> tuple[int, int, int]:
    if not COLOR_RE.match(spec):
        raise InvalidColor(f"colour {spec!r} is not of the form #RRGGBB")
    return int(spec[1:3], 16), int(spec[3:5], 16), int(spec[5:7], 16)


def validate_background(spec: str, settings: Settings | None = None) -> BackgroundInfo | None:
    """Refuse a bad background early (the API calls this before accepting a job): ``blur``, a
    ``#RRGGBB`` colour (None for both) or a file, inspected by ``inspect_background``."""
    spec = spec.strip()
    if spec.lower() == "blur":
        return None
    if spec.startswith("#"):
        parse_color(spec)
        return None
    return inspect_background(Path(spec), settings)


def inspect_background(path: Path, settings: Settings | None = None) -> BackgroundInfo:
    """Kind, size and frame count of a background file, from its headers; refuses unknown types
    (``unsupported_background``), cut or malformed images (``corrupt_background``) and anything
    past its limits (``background_too_large``).  Nothing is decoded."""
    settings = settings or get_settings()
    path = Path(path)
    if not path.is_file():
        raise InvalidBackground(f"background {path.name!r} is not '#RRGGBB', 'blur' or an existing file")
    head = _head(path)
    if not head:
        raise EmptyFile("the background file is empty")
    if sniff_image(head):
        try:
            header = read_image_header(path)
        except ImageHeaderError as exc:
            raise CorruptBackground(str(exc)) from None
        if header.unsupported:
            raise UnsupportedBackground(header.unsupported)
        if header.frames <= 1:
            check_image_pixels(header.width, header.height, settings)
            return BackgroundInfo("image", header.width, header.height, 1)
        if header.format == "webp":
            raise UnsupportedBackground("animated WebP backgrounds are not supported (this build cannot decode them)")
        check_animation(header.width, header.height, header.frames, settings)
        animation = _background_video(path, settings)
        frames = max(animation.frames, header.frames)
        check_animation(header.width, header.height, frames, settings)  # the frames it really holds
        return BackgroundInfo("animated", header.width, header.height, frames, animation)
    if looks_like_container(head):
        info = _background_video(path, settings)
        return BackgroundInfo("video", info.width, info.height, info.frames, info)
    brand = still_picture_brand(head)
    if brand:  # a HEIF picture, not AVIF or HEIC (sniff_image took those)
        raise UnsupportedBackground(
            f"this HEIF picture ({brand}) is coded in a way this service does not read: send AVIF, HEIC (HEVC), PNG or JPEG"
        )
    lead = head.lstrip().lower()
    if lead.startswith((b"<?xml", b"<svg", b"<!doctype svg")):
        raise UnsupportedBackground("SVG (vector) backgrounds are not supported: send PNG, JPEG, WebP, GIF, BMP, AVIF or HEIC")
    spec = _spec_sent_as_file(head)
    if spec:
        raise UnsupportedBackground(
            f"the background file holds only the text {spec!r}: a colour or a blur is not sent as the background "
            "file but in its own field (over HTTP: background_color=#RRGGBB, or background_blur=true)"
        )
    raise UnsupportedBackground(
        "the background is not a supported type: PNG, JPEG, WebP, GIF, BMP, AVIF or HEIC images, or an MP4/MOV, "
        "Matroska/WebM, AVI, MPEG-PS, MPEG-TS, FLV or Ogg video"
    )


#: What a careless ``curl -F background=#3a6ea5`` uploads as the background file (the field is a
#: file's): a colour, with or without its ``#``, in 3 or 6 digits, or the word ``blur``.
_SPEC_TEXT = re.compile(r"#?(?:[0-9a-f]{3}|[0-9a-f]{6})|blur(?::[0-9.]+)?", re.IGNORECASE)


def _spec_sent_as_file(head: bytes) -> str | None:
    """The colour or blur a background file's whole content names, if that is all it holds."""
    if len(head) > 64:
        return None
    text = head.decode("ascii", "replace").strip()
    return text if _SPEC_TEXT.fullmatch(text) else None


def check_image_pixels(width: int, height: int, settings: Settings) -> None:
    if max(width, height) > MAX_IMAGE_SIDE:
        raise BackgroundTooLarge(f"background image {width}x{height} has a side past {MAX_IMAGE_SIDE} pixels")
    if width * height > settings.max_background_pixels:
        raise BackgroundTooLarge(
            f"background image {width}x{height} exceeds {settings.max_background_pixels} pixels"
        )


def check_animation(width: int, height: int, frames: int, settings: Settings) -> None:
    """An animated background: each frame within the video frame limits, all frames together within
    ``max_animated_background_pixels``."""
    check_frame_size(width, height, settings, BackgroundTooLarge)
    if frames * width * height > settings.max_animated_background_pixels:
        raise BackgroundTooLarge(
            f"animated background of {frames} frames of {width}x{height} exceeds "
            f"{settings.max_animated_background_pixels} pixels in all"
        )


_AS_BACKGROUND: dict[type[BackdropError], type[BackdropError]] = {
    VideoTooLarge: BackgroundTooLarge,
    CorruptVideo: CorruptBackground,
    EmptyFile: EmptyFile,
}


def _background_video(path: Path, settings: Settings) -> VideoInfo:
    """``inspect_video`` for a background, its errors named as background errors."""
    try:
        return inspect_video(path, settings)
    except BackdropError as exc:
        cls = _AS_BACKGROUND.get(type(exc), UnsupportedBackground)
        raise cls(f"background: {exc.message}") from None
