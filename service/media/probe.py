"""The worker's probe: the API's header inspection (``service.media.inspect``) plus the first frame
decoded, within the limits, before any work is spent on the video.

Every way an upload can be wrong maps to its own error code (``service.errors``): an empty file, a
file that is no media at all (or a still image), a container with no video stream, a truncated or
corrupt file, a codec this build cannot decode, or a video over the limits in settings.  Headers can
lie, so the first frame's real size is checked against the limits again, and outside MP4/MOV (whose
boxes the headers read) it is the frame's own display matrix that sets the rotation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from itertools import chain
from pathlib import Path

import av

from service.config import Settings, get_settings
from service.errors import CorruptVideo, UnsupportedCodec, VideoTooLarge
from service.media.inspect import (
    AudioInfo,
    VideoInfo,
    check_limits,
    inspect_video,
    normalise_rotation,
    open_input,
    sample_aspect,
    video_stream,
)
from service.media.packets import read_packets
from service.media.picture_size import larger

__all__ = [
    "AudioInfo", "VideoInfo", "check_limits", "decoded_frames", "decoder_pixel_cap", "frame_rotation",
    "normalise_rotation", "open_input", "orientation", "prepare_decoder", "probe_video", "thread_decoder",
    "too_large_after_error", "video_stream",
]

log = logging.getLogger(__name__)


def probe_video(path: Path, settings: Settings | None = None) -> VideoInfo:
    """Inspect the headers, check the limits, then decode the first frame; raise on any problem."""
    settings = settings or get_settings()
    info = inspect_video(path, settings)
    container = open_input(path)
    try:
        stream = video_stream(container)
        prepare_decoder(stream, settings.max_pixels)
        first = _first_frame(container, stream, info, settings.max_pixels)
        rotation, mirror = orientation(info, first)
        # a pixel shape recorded only in the pictures (H.264's VUI in MPEG-TS, H.263): the decoder has
        # read it now; a PAL 16:9 broadcast came out 5:4
        aspect = info.sample_aspect if info.sample_aspect != 1 else sample_aspect(stream)
        # the size written: the first frame's (the header's can lie), or the largest picture the
        # packets write where a recording grows midway
        size = larger((first.width, first.height), info.largest_picture)
        info = replace(info, coded_width=size[0], coded_height=size[1], rotation=rotation,
                       mirror=mirror, sample_aspect=aspect,
                       color_primaries=_known(first.color_primaries, info.color_primaries),
                       color_trc=_known(first.color_trc, info.color_trc),
                       colorspace=_known(first.colorspace, info.colorspace))
    finally:
        container.close()
    check_limits(info, settings)
    return info


def _known(frame_value: int | None, header_value: int) -> int:
    """The frame's colour property where it names one (not 2, unspecified), else the header's."""
    return int(frame_value) if frame_value not in (None, 0, 2) else header_value


#: The least cap a decoder gets, whatever the frame size: FFmpeg's MPEG-4 Part 2 and H.263 decoders
#: check a buffer of their own of 125,440 pixels against it however small the frames are, so a
#: 176x144 phone video (3GP, AVI) was refused as too large.  A 512x512 picture is 0.4 MB of YUV.
MIN_DECODER_PIXELS = 512 * 512


def decoder_pixel_cap(pixels: int, width: int = 0, height: int = 0) -> int:
    """The most pixels a decoder may allocate for frames of ``pixels``: decoders round the width up
    to their stride alignment (up to 64) and the height to whole macroblocks before they check.
    A square frame's margin is not enough for a narrow one (8x1080 is checked as 64x1080), so where
    the headers give a size within ``pixels``, the cap leaves that margin on each side of it.  Never
    under ``MIN_DECODER_PIXELS``."""
    side = max(1, int(pixels**0.5))
    square = max(MIN_DECODER_PIXELS, (side + 128) * (side + 128) + pixels * 2 // 100)
    if 0 < width * height <= pixels:
        return max(square, (width + 128) * (height + 128))
    return square


def prepare_decoder(stream: av.video.stream.VideoStream, pixels: int) -> None:
    """Set up the stream's decoder as every reader of ours needs it: refusing, before allocating, any
    frame much larger than ``pixels`` (or than the size its headers declare, when that is within
    ``pixels``), and, for a raw H.264 stream, holding back enough frames to reorder
    (``h264_reorder_depth``)."""
    ctx = stream.codec_context
    cap = decoder_pixel_cap(pixels, ctx.width or 0, ctx.height or 0)
    options = {**(ctx.options or {}), "max_pixels": str(cap)}
    depth = h264_reorder_depth(stream)
    if depth:
        options["has_b_frames"] = str(depth)
    ctx.options = options


#: H.264's MaxDpbMbs by ``level_idc`` (Table A-1; 9 is level 1b): the macroblocks of the frames a
#: decoder's picture buffer holds.
_H264_DPB_MBS = {9: 396, 10: 396, 11: 900, 12: 2376, 13: 2376, 20: 2376, 21: 4752, 22: 8100, 30: 8100,
                 31: 18000, 32: 20480, 40: 32768, 41: 32768, 42: 34816, 50: 110400, 51: 184320, 52: 184320,
                 60: 696320, 61: 696320, 62: 696320}
#: Most frames an H.264 decoder holds back to reorder (its picture buffer's 16, less the current one).
_H264_MAX_REORDER = 15


def h264_reorder_depth(stream: av.video.stream.VideoStream) -> int:
    """How many frames the decoder of a raw H.264 stream (an ``.264``/``.h264`` file) must hold back
    to put its frames in display order, or 0 where the stream is not one.

    An SPS may say how many (its VUI's ``max_num_reorder_frames``), and a container's timestamps
    tell FFmpeg the depth before decoding; a raw stream has no timestamps, and without the VUI count
    FFmpeg's decoder (opened with nothing decoded while probing: ``open_input``) learns the depth
    from frames that arrive out of order and drops the ones it has already passed: the first 3 of
    the 297 of a hierarchical-B stream (``IbBbBbBbP``).  So it is given the most its level allows,
    the frames of its size that fit the level's picture buffer (A.3.1 h), as FFmpeg's decoder takes
    with ``-strict strict``: no frame is lost, and the frames held are at most the level's buffer,
    which a stream may fill with reference frames anyway (a level the table lacks counts as the
    largest's: at 8K, 5 frames)."""
    ctx = stream.codec_context
    if ctx.name != "h264" or stream.container.format.name != "h264":
        return 0
    mbs = max(1, ((ctx.width or 0) + 15) // 16 * (((ctx.height or 0) + 15) // 16))
    dpb = _H264_DPB_MBS.get(ctx.level or 0, _H264_DPB_MBS[62])  # a level not in the table: the largest's
    return max(1, min(_H264_MAX_REORDER, dpb // mbs))


def thread_decoder(stream: av.video.stream.VideoStream, threads: int) -> None:
    """Let FFmpeg thread the stream's decoder (frame or slice threads, as the codec allows) with
    ``threads`` threads, 0 = FFmpeg's choice (``pipeline.codec_threads`` says how many a job's
    decoders get)."""
    stream.thread_type = "AUTO"
    if threads:
        stream.codec_context.thread_count = threads


def too_large_after_error(stream: av.video.stream.VideoStream, pixels: int) -> bool:
    """Whether a decoder error came from a frame past ``pixels`` (refused by ``prepare_decoder``):
    FFmpeg leaves the refused size in the context, or zeroes it when it refuses the dimensions."""
    ctx = stream.codec_context
    return ctx.width == 0 or ctx.width * ctx.height > pixels


def orientation(info: VideoInfo, frame: av.VideoFrame) -> tuple[int, bool]:
    """(rotation, mirror) that show ``info``'s pictures as their display matrix asks
    (``VideoInfo.rotation``, ``VideoInfo.mirror``): an MP4's or MOV's from its boxes
    (``inspect.orientation_from_matrix``), another container's (Matroska's projection) or a
    codec's (an orientation SEI) from ``frame``, its first decoded one (``frame_rotation``)."""
    if info.container.startswith("mov"):
        return info.rotation, info.mirror
    return frame_rotation(frame), False


def frame_rotation(frame: av.VideoFrame) -> int:
    """The rotation (0/90/180/270, counter-clockwise) a frame's display matrix asks for: 0 without
    one, or with one that is no such rotation (an odd angle; a degenerate matrix, whose NaN PyAV
    gives as INT_MIN).  Only the angle can be read safely, so a mirror is not seen: a left-right
    one reads as a half turn, a top-bottom one as none (an MP4's or MOV's are read from its boxes).

    Read through PyAV's ``frame.rotation``, never ``frame.side_data``: PyAV 18 wraps each side
    data's metadata in a Dictionary that frees it when collected, and the frame frees it again.
    A PNG's ICC profile carries its name there, so a PNG or APNG with an ``iCCP`` chunk, as a
    video or a background, crashed the worker (SIGSEGV) at its next garbage collection, in
    whichever job it was running by then."""
    angle = frame.rotation
    if not -180 <= angle <= 180 or angle % 90:
        return 0
    return angle % 360


#: Of a video's packets, how many the decoder may refuse for it to be read (past either, it is
#: ``corrupt_video``): before its first picture, up to one in ``LEADING_SHARE`` (a recording that
#: starts before its first key frame loses the frames up to it); after it, up to one in
#: ``DAMAGED_SHARE``, and ``DAMAGED_ANYWAY`` more in a short video.
LEADING_SHARE = 2
DAMAGED_SHARE = 4
DAMAGED_ANYWAY = 2


def decoded_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                   frames: int, pixels: int) -> Iterator[av.VideoFrame]:
    """The stream's frames as ``container.decode`` gives them, except that a packet the decoder
    refuses as invalid data is skipped, as players and FFmpeg's command line skip it: a frame lost
    on the network in a WebRTC or RTSP recording, one that starts before its first key frame (VP8
    refuses the frames before it; H.264 drops them silently), a damaged sector.  The frame that
    packet held is missing (the one before it stays on screen for its time) and the frames that
    refer to it may show its damage.  Past the shares above of the ``frames`` the video holds it is
    ``corrupt_video``.  A refusal of a frame past ``pixels`` (``prepare_decoder``) is raised, for the
    caller's ``video_too_large``; invalid data before any size is known is damage (garbage H.264
    was called too large: "its headers declare 16x2")."""
    allowed = {True: frames // LEADING_SHARE, False: DAMAGED_ANYWAY + frames // DAMAGED_SHARE}
    refused = {True: 0, False: 0}  # before the first picture, after it
    leading = True
    for packet in chain(read_packets(container, stream), [None]):
        if packet is not None and not packet.size:
            # a packet with no data (Theora's for a frame repeated; the demuxer's flush packet)
            # would tell the decoder the stream had ended: every packet after it was refused
            continue
        try:
            decoded = stream.decode(packet)  # None at the end: the frames the decoder still holds
        except av.error.InvalidDataError:
            ctx = stream.codec_context
            if ctx.width * ctx.height > pixels:  # a size read and refused (``prepare_decoder``)
                raise
            refused[leading] += 1
            if refused[leading] > allowed[leading]:
                at = f" (the last at time {packet.pts})" if packet is not None and packet.pts is not None else ""
                raise CorruptVideo(
                    f"more than {allowed[leading]} of the video's {frames} packets cannot be decoded"
                    f"{' before its first picture' if leading else ''}{at}"
                ) from None
            continue
        for frame in decoded:
            leading = False
            if packet is None:  # the decoder's last frames carry no time base of their own
                frame.time_base = stream.time_base
            yield frame
    if refused[True] or refused[False]:
        log.warning("decode: %d video packets before the first picture and %d after it of %d skipped as "
                    "damaged in %s", refused[True], refused[False], frames, container.name)


def _first_frame(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, info: VideoInfo, limit: int
) -> av.VideoFrame:
    try:
        for frame in decoded_frames(container, stream, info.frames, limit):
            return frame
    except av.error.DecoderNotFoundError:
        raise UnsupportedCodec(f"no decoder for codec {info.codec!r}") from None
    except av.error.PatchWelcomeError:
        raise UnsupportedCodec(f"codec {info.codec!r} is not supported") from None
    except av.error.FFmpegError as exc:
        if too_large_after_error(stream, limit):
            raise VideoTooLarge(
                f"the first frame exceeds the limit of {limit} pixels (its headers declare "
                f"{info.coded_width}x{info.coded_height})"
            ) from None
        raise CorruptVideo(f"the first video frame cannot be decoded ({exc.__class__.__name__})") from None
    raise CorruptVideo("the video stream holds no decodable frame")
