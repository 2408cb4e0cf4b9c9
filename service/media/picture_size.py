"""The picture size a VP8 or VP9 frame's own header writes, read from its packet without decoding.

A video's pictures need not keep one size: WebRTC encoders start a call small and grow with the
bandwidth (and shrink when it drops), and a browser's tab or window capture follows the window.
A recording of either (a ``MediaRecorder`` WebM, a media server's) declares in its header only the
size it started at.  The packet scan (``inspect.scan_packets``) reads each picture's size from these
headers, a few bytes each, so the output is written at the largest picture of the video rather than
its first, and the limits are checked against that.

VP8 writes a size in every key frame; VP9 in every key frame and intra-only frame, and in an inter
frame that is not the size of one of its references (libvpx's real-time resizing changes size on
inter frames).  A VP9 packet can be a superframe: several frames, listed in an index at its end.
Other codecs change size too (H.264 with a new SPS); their larger pictures are scaled to the output
size by the decoder (``decode.timed_frames``).
"""

from __future__ import annotations

from collections.abc import Callable

Size = tuple[int, int]
_VP9_SYNC = 0x498342
_VP9_RGB = 7


def sizes_in(codec: str) -> Callable[[bytes], list[Size]] | None:
    """The reader of the sizes in ``codec``'s packets (a whole packet in, the sizes its frames write
    out), or None where they are not read from packets.  ``codec`` is FFmpeg's decoder name."""
    return READERS.get(codec)


def vp8_sizes(packet: bytes) -> list[Size]:
    """A VP8 key frame's size (its 3-byte frame tag, the start code, two 14-bit sizes); none for an
    inter frame."""
    if len(packet) < 10 or packet[0] & 1 or packet[3:6] != b"\x9d\x01\x2a":
        return []
    width = int.from_bytes(packet[6:8], "little") & 0x3FFF
    height = int.from_bytes(packet[8:10], "little") & 0x3FFF
    return [(width, height)] if width and height else []


def vp9_sizes(packet: bytes) -> list[Size]:
    """The sizes written in a VP9 packet's frames (each frame of a superframe)."""
    sizes = []
    for frame in _vp9_frames(packet):
        size = _vp9_frame_size(frame)
        if size:
            sizes.append(size)
    return sizes


def _vp9_frames(packet: bytes) -> list[bytes]:
    """The frames of a VP9 packet: those its superframe index lists, else the packet itself."""
    if not packet:
        return []
    marker = packet[-1]
    if marker & 0xE0 == 0xC0:
        count, width = (marker & 7) + 1, ((marker >> 3) & 3) + 1
        index = 2 + width * count
        if len(packet) >= index and packet[-index] == marker:
            frames, at = [], 0
            for i in range(count):
                start = len(packet) - index + 1 + i * width
                length = int.from_bytes(packet[start : start + width], "little")
                frames.append(packet[at : at + length])
                at += length
            return frames
    return [packet]


class _Bits:
    """Big-endian bits of a header, MSB first; reading past the end raises ``IndexError``."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def __call__(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | (self.data[self.at >> 3] >> (7 - (self.at & 7))) & 1
            self.at += 1
        return value


def _vp9_frame_size(frame: bytes) -> Size | None:
    """The size a VP9 frame's uncompressed header writes (VP9 bitstream specification 6.2), or None
    where it writes none (a frame shown again, an inter frame the size of a reference) or the header
    is not VP9's."""
    bits = _Bits(frame)
    try:
        if bits(2) != 2:  # frame_marker
            return None
        low, high = bits(1), bits(1)
        profile = (high << 1) | low
        if profile == 3:
            bits(1)
        if bits(1):  # show_existing_frame
            return None
        key, show, error_resilient = bits(1) == 0, bits(1), bits(1)
        if key:
            if bits(24) != _VP9_SYNC:
                return None
            _vp9_colour_config(bits, profile)
            return _vp9_size(bits)
        intra_only = bits(1) if not show else 0
        if not error_resilient:
            bits(2)  # reset_frame_context
        if intra_only:
            if bits(24) != _VP9_SYNC:
                return None
            if profile > 0:
                _vp9_colour_config(bits, profile)
            bits(8)  # refresh_frame_flags
            return _vp9_size(bits)
        bits(8)  # refresh_frame_flags
        bits(3 * 4)  # ref_frame_idx and sign bias of the three references
        for _ in range(3):
            if bits(1):  # found_ref: the size of that reference
                return None
        return _vp9_size(bits)
    except IndexError:
        return None


def _vp9_colour_config(bits: _Bits, profile: int) -> None:
    if profile >= 2:
        bits(1)  # ten_or_twelve_bit
    if bits(3) != _VP9_RGB:
        bits(1)  # color_range
        if profile in (1, 3):
            bits(3)  # subsampling_x, subsampling_y, reserved
    elif profile in (1, 3):
        bits(1)


def _vp9_size(bits: _Bits) -> Size:
    return bits(16) + 1, bits(16) + 1


READERS: dict[str, Callable[[bytes], list[Size]]] = {
    "vp8": vp8_sizes, "libvpx": vp8_sizes, "vp9": vp9_sizes, "libvpx-vp9": vp9_sizes,
}
