"""A container's packets, read on past a demuxer's "nothing now, call again".

FFmpeg's ``av_read_frame`` may answer ``EAGAIN`` without a packet, and its command line then simply
asks again; PyAV's ``demux()`` raises ``BlockingIOError`` and its generator ends.  The SGI movie
demuxer answers so whenever one of its streams has run out before another (at the end of every
movie with sound), so the intake took such a movie for a corrupt one.  Every reading of packets
goes through ``read_packets``, which asks again as FFmpeg's command line does.
"""

from __future__ import annotations

from collections.abc import Iterator

import av

#: Answers of "call again" in a row, without a packet between them, after which the reading is
#: given up (the error raised as it came): a file's demuxer that keeps saying so is stuck, not slow.
MAX_AGAIN = 64


def read_packets(container: av.container.InputContainer, *streams: av.stream.Stream) -> Iterator[av.Packet]:
    """``container.demux(*streams)``, going on where the demuxer asks to be called again."""
    again = 0
    while True:
        try:
            for packet in container.demux(*streams):
                again = 0
                yield packet
            return
        except av.error.BlockingIOError:
            again += 1
            if again > MAX_AGAIN:
                raise
