"""The picture size a VP8, VP9, H.264, HEVC, AV1 or MPEG-1/2 stream's own headers write, read from its
packets without decoding.

A video's pictures need not keep one size: WebRTC encoders start a call small and grow with the
bandwidth (and shrink when it drops), and a browser's tab or window capture follows the window.
A recording of either (a ``MediaRecorder`` WebM, a media server's) declares in its header only the
size it started at.  The packet scan (``inspect.scan_packets``) reads each picture's size from these
headers, a few bytes each, so the output is written at the largest picture of the video rather than
its first, and the limits are checked against that.

VP8 writes a size in every key frame; VP9 in every key frame and intra-only frame, and in an inter
frame that is not the size of one of its references (libvpx's real-time resizing changes size on
inter frames).  A VP9 packet can be a superframe: several frames, listed in an index at its end.
H.264 and HEVC change size with a new sequence parameter set (SPS), sent in the stream before the
key frame that uses it: the NAL units before a packet's first slice are read, start-code delimited
(Annex B: raw streams, MPEG-TS) or length-prefixed (MP4 and Matroska, whose header says how:
``avcC``, ``hvcC``).  AV1 writes the largest frame it allows in a sequence header with each key
frame (``av1_sizes``, which an AVIF picture's check uses too).  Other codecs change size too (MPEG-4 Part 2, H.263); their
larger pictures are scaled to the output size by the decoder (``decode.timed_frames``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from service.media.bits import Bits

Size = tuple[int, int]
_VP9_SYNC = 0x498342
_VP9_RGB = 7


def sizes_in(codec: str, extradata: bytes | None = None) -> Callable[[bytes], list[Size]] | None:
    """The reader of the sizes in ``codec``'s packets (a whole packet in, the sizes its frames write
    out), or None where they are not read from packets.  ``codec`` is FFmpeg's decoder name,
    ``extradata`` the stream's codec header (an ``avcC`` or ``hvcC`` says how long its NAL lengths
    are)."""
    syntax = _NAL_SYNTAX.get(codec)
    if syntax is not None:
        # avcC / hvcC: length-prefixed NAL units, the length's size in the header's 5th / 22nd byte
        at = 4 if syntax is _H264 else 21
        if extradata and extradata[0] == 1 and len(extradata) > at:
            length = (extradata[at] & 3) + 1
            return lambda packet: syntax.sizes(_prefixed_nals(packet, length, syntax))
        return lambda packet: syntax.sizes(_annex_b_nals(packet, syntax))
    return READERS.get(codec)


def theora_picture_size(extradata: bytes | None) -> Size | None:
    """The picture a Theora stream shows, from its identification header (in the codec header FFmpeg
    keeps): without its decoder FFmpeg reports the coded frame, whole macroblocks around the picture
    (fate's ``offset_test``: a 512×512 picture in a 768×784 frame), and the decoder gives the picture.
    None where the header is missing or not Theora 3.2 or later (which wrote no picture size)."""
    if not extradata:
        return None
    at = extradata.find(b"\x80theora")
    header = extradata[at + 7:at + 7 + 15] if at >= 0 else b""
    if len(header) < 15 or header[0] != 3 or header[1] < 2:
        return None
    frame_w, frame_h = int.from_bytes(header[3:5], "big") * 16, int.from_bytes(header[5:7], "big") * 16
    width, height = int.from_bytes(header[7:10], "big"), int.from_bytes(header[10:13], "big")
    x, y = header[13], header[14]
    if not (0 < width and 0 < height and x + width <= frame_w and y + height <= frame_h):
        return None
    return width, height


def larger(size: Size, other: Size | None) -> Size:
    """``other`` where it has more pixels than ``size``, else ``size`` (a side of 0 or less counts
    as no pixels)."""
    if other is not None and other[0] * other[1] > max(0, size[0]) * max(0, size[1]):
        return other
    return size


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


def _vp9_frame_size(frame: bytes) -> Size | None:
    """The size a VP9 frame's uncompressed header writes (VP9 bitstream specification 6.2), or None
    where it writes none (a frame shown again, an inter frame the size of a reference) or the header
    is not VP9's."""
    bits = Bits(frame)
    try:
        if bits.read(2) != 2:  # frame_marker
            return None
        low, high = bits.read(1), bits.read(1)
        profile = (high << 1) | low
        if profile == 3:
            bits.read(1)
        if bits.read(1):  # show_existing_frame
            return None
        key, show, error_resilient = bits.read(1) == 0, bits.read(1), bits.read(1)
        if key:
            if bits.read(24) != _VP9_SYNC:
                return None
            _vp9_colour_config(bits, profile)
            return _vp9_size(bits)
        intra_only = bits.read(1) if not show else 0
        if not error_resilient:
            bits.read(2)  # reset_frame_context
        if intra_only:
            if bits.read(24) != _VP9_SYNC:
                return None
            if profile > 0:
                _vp9_colour_config(bits, profile)
            bits.read(8)  # refresh_frame_flags
            return _vp9_size(bits)
        bits.read(8)  # refresh_frame_flags
        bits.read(3 * 4)  # ref_frame_idx and sign bias of the three references
        for _ in range(3):
            if bits.read(1):  # found_ref: the size of that reference
                return None
        return _vp9_size(bits)
    except IndexError:
        return None


def _vp9_colour_config(bits: Bits, profile: int) -> None:
    if profile >= 2:
        bits.read(1)  # ten_or_twelve_bit
    if bits.read(3) != _VP9_RGB:
        bits.read(1)  # color_range
        if profile in (1, 3):
            bits.read(3)  # subsampling_x, subsampling_y, reserved
    elif profile in (1, 3):
        bits.read(1)


def _vp9_size(bits: Bits) -> Size:
    return bits.read(16) + 1, bits.read(16) + 1


def av1_sizes(data: bytes, obus: int | None = None) -> list[Size]:
    """The largest frame each AV1 sequence header in ``data`` (OBUs, AV1 5.3) allows:
    max_frame_width and max_frame_height (5.5), which a decoder allocates for.  ``obus``: read at
    most that many.  A malformed size field raises ``ValueError``, data cut short ``IndexError``."""
    sizes: list[Size] = []
    pos = n = 0
    while pos < len(data) and (obus is None or n < obus):
        n += 1
        header = data[pos]
        kind, extension, has_size = header >> 3 & 15, header >> 2 & 1, header >> 1 & 1
        pos += 1 + extension
        length, pos = _leb128(data, pos) if has_size else (len(data) - pos, pos)
        if kind == 1:  # OBU_SEQUENCE_HEADER
            sizes.append(_av1_sequence_size(data[pos : pos + length]))
        pos += length
    return sizes


def _av1_packet_sizes(packet: bytes) -> list[Size]:
    """The sizes an AV1 packet's sequence headers allow: encoders write one with each key frame,
    and a new one, larger, where the pictures grow past it (libaom and SVT-AV1 size it to the
    pictures).  At most ``_NALS_READ`` OBUs are read: the sequence header comes first, after the
    temporal delimiter."""
    try:
        return av1_sizes(packet, _NALS_READ)
    except (IndexError, ValueError):
        return []


def _leb128(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise ValueError("an AV1 size field is malformed")


def _av1_sequence_size(obu: bytes) -> Size:
    """max_frame_width and max_frame_height of an AV1 sequence header OBU's payload."""
    bits = Bits(obu)
    bits.read(3)  # seq_profile
    bits.read(1)  # still_picture
    if bits.read(1):  # reduced_still_picture_header
        bits.read(5)  # seq_level_idx[0]
    else:
        decoder_model = False
        buffer_delay_bits = 0
        if bits.read(1):  # timing_info_present_flag
            bits.read(32)
            bits.read(32)
            if bits.read(1):  # equal_picture_interval
                bits.ue()
            decoder_model = bool(bits.read(1))
            if decoder_model:
                buffer_delay_bits = bits.read(5) + 1
                bits.read(32)
                bits.read(10)  # buffer_removal_time_length_minus_1, frame_presentation_time_length_minus_1
        initial_display_delay = bits.read(1)
        for _ in range(bits.read(5) + 1):  # operating points
            bits.read(12)  # operating_point_idc
            if bits.read(5) > 7:  # seq_level_idx
                bits.read(1)  # seq_tier
            if decoder_model and bits.read(1):
                bits.read(2 * buffer_delay_bits + 1)
            if initial_display_delay and bits.read(1):
                bits.read(4)
    width_bits, height_bits = bits.read(4) + 1, bits.read(4) + 1
    return bits.read(width_bits) + 1, bits.read(height_bits) + 1


#: MPEG-1/2 video's sequence header, and the extension that follows it in MPEG-2
_SEQUENCE_HEADER, _EXTENSION = b"\x00\x00\x01\xb3", b"\x00\x00\x01\xb5"
#: where a packet's sequence header may start: a picture's packet begins with it (FFmpeg's parser
#: cuts the stream there), after a few bytes of stuffing at most; the rest of a packet, 100 kB of
#: picture at broadcast rates, is not searched
_HEAD_BYTES = 64


def mpeg12_sizes(packet: bytes) -> list[Size]:
    """The size an MPEG-1 or MPEG-2 video packet's sequence header writes: 12 bits across and 12
    down after the start code, two more bits each from MPEG-2's sequence extension where one
    follows (past its quantiser matrices, if any).  A DVD's still frame (a menu, a VOB of one
    picture) left FFmpeg no size when nothing is decoded while probing, and a broadcast switches
    between SD and HD with a new sequence header."""
    at = packet.find(_SEQUENCE_HEADER, 0, _HEAD_BYTES)
    if at < 0 or at + 7 > len(packet):
        return []
    head = packet[at + 4 : at + 7]
    width, height = head[0] << 4 | head[1] >> 4, (head[1] & 0x0F) << 8 | head[2]
    ext = packet.find(_EXTENSION, at + 12, at + 12 + 128 + 7)
    if ext >= 0 and ext + 7 <= len(packet) and packet[ext + 4] >> 4 == 1:  # a sequence extension
        width |= (packet[ext + 5] & 0x01) << 13 | (packet[ext + 6] >> 7) << 12
        height |= (packet[ext + 6] >> 5 & 0x03) << 12
    return [(width, height)] if width and height else []


#: DV's picture sizes by (DSF: 0 = 525 lines at 60 fields, 1 = 625 at 50; the video stype), as
#: SMPTE 314M and 370M define them (DV25, DVCPRO50, DVCPRO HD 1080i and 720p) and FFmpeg's
#: ``dv_profiles`` lists them.
_DV_SIZES: dict[tuple[int, int], Size] = {
    (0, 0x00): (720, 480), (1, 0x00): (720, 576), (1, 0x01): (720, 576),
    (0, 0x04): (720, 480), (1, 0x04): (720, 576),
    (0, 0x14): (1280, 1080), (1, 0x14): (1440, 1080),
    (0, 0x18): (960, 720), (1, 0x18): (960, 720),
}


def dv_sizes(packet: bytes) -> list[Size]:
    """The size of a DV frame (one packet): the DSF bit of its header block, and the video stype of
    its first VAUX block (byte 3 of the source pack at 80 * 5 + 48), as FFmpeg's decoder picks its
    profile.  A raw DV file (a camcorder's capture, as dvgrab writes it) records its size nowhere
    else, and FFmpeg gave none without its decoder: it was refused as ``unsupported_codec``."""
    if len(packet) < 80 * 5 + 48 + 4:
        return []
    size = _DV_SIZES.get((packet[3] >> 7, packet[80 * 5 + 48 + 3] & 0x1F))
    return [size] if size else []


READERS: dict[str, Callable[[bytes], list[Size]]] = {
    "vp8": vp8_sizes, "libvpx": vp8_sizes, "vp9": vp9_sizes, "libvpx-vp9": vp9_sizes,
    "av1": _av1_packet_sizes, "libdav1d": _av1_packet_sizes, "libaom-av1": _av1_packet_sizes,
    "mpeg2video": mpeg12_sizes, "mpeg1video": mpeg12_sizes, "dvvideo": dv_sizes,
}


#: Bytes of an SPS read: its size comes within a few dozen (a scaling matrix can make it ~100).
_SPS_BYTES = 256
#: Macroblocks across or down an SPS may declare and be read: 16,384 pixels, past any level's limit.
_MAX_MBS = 1024
#: H.264 profiles whose SPS carries the chroma format, bit depths and scaling matrices (7.3.2.1.1).
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


@dataclass(frozen=True)
class _NalSyntax:
    """How a codec's NAL units name their kind: H.264's in the header byte's low 5 bits, HEVC's in
    bits 1-6 of its first of two; its SPS kind, its slices' kinds, and the SPS's size reader."""

    kind: Callable[[int], int]
    sps: int
    slices: range
    size: Callable[[bytes], Size | None]

    def sizes(self, nals: list[bytes]) -> list[Size]:
        found = []
        for nal in nals:
            size = self.size(nal.replace(b"\x00\x00\x03", b"\x00\x00"))  # emulation prevention
            if size:
                found.append(size)
        return found


def _annex_b_nals(packet: bytes, syntax: _NalSyntax) -> list[bytes]:
    """The heads of the SPS NAL units of a start-code delimited packet (``_before_the_picture``)."""
    nals: list[bytes] = []
    at = packet.find(b"\x00\x00\x01")
    for _ in range(_NALS_READ):
        if at < 0 or at + 3 >= len(packet):
            break
        if not _before_the_picture(packet[at + 3 : at + 3 + _SPS_BYTES], nals, syntax):
            break
        at = packet.find(b"\x00\x00\x01", at + 3)
    return nals


def _prefixed_nals(packet: bytes, length: int, syntax: _NalSyntax) -> list[bytes]:
    """The heads of the SPS NAL units of a packet whose NAL units each follow their ``length``-byte
    size (``_before_the_picture``); where the sizes do not add up (a stream muxed Annex B into
    Matroska), read as Annex B."""
    nals: list[bytes] = []
    at = 0
    for _ in range(_NALS_READ):
        if at + length >= len(packet):
            break
        size = int.from_bytes(packet[at : at + length], "big")
        if size == 0 or at + length + size > len(packet):
            return _annex_b_nals(packet, syntax)
        if not _before_the_picture(packet[at + length : at + length + min(size, _SPS_BYTES)], nals, syntax):
            break
        at += length + size
    return nals


#: NAL units read at most from a packet: an access unit's parameter sets come before its first
#: slice, after at most a delimiter and a few SEI; a hostile packet of millions of tiny NAL units
#: would cost CPU at the door in proportion to its size.
_NALS_READ = 32


def _before_the_picture(nal: bytes, nals: list[bytes], syntax: _NalSyntax) -> bool:
    """Take the NAL unit ``nal`` (its head) into ``nals`` where it is an SPS; False at the first
    slice, after which no SPS of this access unit comes."""
    kind = syntax.kind(nal[0])
    if kind in syntax.slices:
        return False
    if kind == syntax.sps:
        nals.append(nal)
    return True


def _h264_sps_size(nal: bytes) -> Size | None:
    """The cropped picture size an H.264 SPS (its NAL unit, header byte first) writes (7.3.2.1.1),
    or None where it cannot be read."""
    bits = Bits(nal[1:])
    try:
        profile = bits.read(8)
        bits.read(16)  # constraint flags, level
        bits.ue()  # seq_parameter_set_id
        chroma, separate = 1, 0
        if profile in _HIGH_PROFILES:
            chroma = bits.ue()
            if chroma == 3:
                separate = bits.read(1)
            bits.ue(), bits.ue()  # bit depths
            bits.read(1)  # qpprime_y_zero_transform_bypass
            if bits.read(1):  # seq_scaling_matrix_present
                for i in range(8 if chroma != 3 else 12):
                    if bits.read(1):
                        _skip_scaling_list(bits, 16 if i < 6 else 64)
        bits.ue()  # log2_max_frame_num
        poc_type = bits.ue()
        if poc_type == 0:
            bits.ue()
        elif poc_type == 1:
            bits.read(1)
            bits.se(), bits.se()
            for _ in range(min(bits.ue(), 255)):
                bits.se()
        bits.ue()  # max_num_ref_frames
        bits.read(1)  # gaps_in_frame_num_allowed
        width_mbs, height_units = bits.ue() + 1, bits.ue() + 1
        frame_mbs_only = bits.read(1)
        if not frame_mbs_only:
            bits.read(1)  # mb_adaptive_frame_field
        bits.read(1)  # direct_8x8_inference
        crop = (bits.ue(), bits.ue(), bits.ue(), bits.ue()) if bits.read(1) else (0, 0, 0, 0)
    except IndexError:
        return None
    if chroma > 3 or width_mbs > _MAX_MBS or height_units > _MAX_MBS:
        return None  # no SPS: a damaged one, or bytes that only looked like it
    array_type = 0 if separate else chroma
    unit_x = 2 if array_type in (1, 2) else 1
    unit_y = (2 - frame_mbs_only) * (2 if array_type == 1 else 1)
    width = width_mbs * 16 - unit_x * (crop[0] + crop[1])
    height = (2 - frame_mbs_only) * height_units * 16 - unit_y * (crop[2] + crop[3])
    return (width, height) if width > 0 and height > 0 else None


def _skip_scaling_list(bits: Bits, size: int) -> None:
    last = following = 8
    for _ in range(size):
        if following:
            following = (last + bits.se() + 256) % 256
        last = following or last


def _hevc_sps_size(nal: bytes) -> Size | None:
    """The picture size an HEVC SPS (its NAL unit, two header bytes first) writes, less its
    conformance window (H.265 7.3.2.2), or None where it cannot be read or is not the base
    layer's (an MV-HEVC stereo video's second view has an SPS of its own syntax; FFmpeg decodes
    the base layer)."""
    if len(nal) < 3 or (nal[0] & 1) << 5 | nal[1] >> 3:  # nuh_layer_id
        return None
    bits = Bits(nal[2:])
    try:
        bits.read(4)  # sps_video_parameter_set_id
        sub_layers = bits.read(3)  # sps_max_sub_layers_minus1
        bits.read(1)  # sps_temporal_id_nesting_flag
        bits.read(96)  # the general profile, tier and level
        present = [(bits.read(1), bits.read(1)) for _ in range(sub_layers)]
        if sub_layers:
            bits.read(2 * (8 - sub_layers))
        for profile, level in present:
            bits.read(88 * profile + 8 * level)
        bits.ue()  # sps_seq_parameter_set_id
        chroma = bits.ue()
        separate = bits.read(1) if chroma == 3 else 0
        width, height = bits.ue(), bits.ue()
        window = (bits.ue(), bits.ue(), bits.ue(), bits.ue()) if bits.read(1) else (0, 0, 0, 0)
    except IndexError:
        return None
    if chroma > 3 or not 0 < width <= 16 * _MAX_MBS or not 0 < height <= 16 * _MAX_MBS:
        return None
    array_type = 0 if separate else chroma
    unit_x = 2 if array_type in (1, 2) else 1
    unit_y = 2 if array_type == 1 else 1
    width -= unit_x * (window[0] + window[1])
    height -= unit_y * (window[2] + window[3])
    return (width, height) if width > 0 and height > 0 else None


_H264 = _NalSyntax(kind=lambda header: header & 0x1F, sps=7, slices=range(1, 6), size=_h264_sps_size)
_HEVC = _NalSyntax(kind=lambda header: header >> 1 & 0x3F, sps=33, slices=range(0, 32), size=_hevc_sps_size)
#: The codecs whose SPSs are read, by FFmpeg's decoder name.
_NAL_SYNTAX = {"h264": _H264, "libopenh264": _H264, "hevc": _HEVC}
