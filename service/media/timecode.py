"""SMPTE timecodes: the time of day a camera or an edit gave a video's start, which editors line
footage up by.  An MOV's or MP4's timecode track (``tmcd``), MXF's and Matroska's tag: FFmpeg reads
each as a ``timecode`` tag, and its MOV and MP4 muxers write one back as a timecode track.

The output's timeline is the input's from its start (``VideoInfo.origin``: a clip cut before a key
frame keeps the time of the frames that could not be decoded, as a gap), so the timecode carries
over as it is."""

from __future__ import annotations

import re
from fractions import Fraction

import av

__all__ = ["at_rate", "parse", "tagged"]

#: HH:MM:SS:FF, or drop-frame HH:MM:SS;FF (``.`` and ``,`` are drop-frame too, in some writers);
#: FFmpeg writes one digit of frames at 10 frames a second or fewer, three past 100
_FORM = re.compile(r"(\d{1,2}):(\d{2}):(\d{2})([:;.,])(\d{1,3})")

#: The most frames a second a timecode track counts: MOV's ``tmcd`` keeps it in a byte (FFmpeg's
#: muxer refused the whole file past it: "fps 1000 is too large")
MAX_RATE = 255


def parse(text: str | None) -> str | None:
    """``text`` where it is a timecode, else None: a tag is the uploader's text, and only a timecode
    is carried."""
    if not text:
        return None
    match = _FORM.fullmatch(text.strip())
    if match is None:
        return None
    hours, minutes, seconds = (int(match.group(i)) for i in (1, 2, 3))
    return match.group(0) if hours < 24 and minutes < 60 and seconds < 60 else None


def at_rate(timecode: str | None, fps: Fraction) -> str | None:
    """``timecode`` where a video of ``fps`` can carry it, else None: a timecode counts the rate's
    whole number of frames a second (29.97 counts 30), at most ``MAX_RATE``, and drop-frame
    timecode (``;``) is only for multiples of 29.97 (FFmpeg's muxers leave it out elsewhere)."""
    match = _FORM.fullmatch(timecode or "")
    rate = round(fps)
    if match is None or not 1 <= rate <= MAX_RATE:
        return None
    if match.group(4) != ":" and rate % 30:
        return None
    return timecode


def tagged(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> str | None:
    """The timecode of ``stream``'s start, where the file gives one: the video track's tag, its
    timecode track's (an MOV's ``tmcd``, a data stream to FFmpeg), or the file's (MXF)."""
    for tags in (stream.metadata, *(s.metadata for s in container.streams.data), container.metadata):
        for key, value in tags.items():
            stamp = parse(value) if key.lower() == "timecode" else None
            if stamp:
                return stamp
    return None
