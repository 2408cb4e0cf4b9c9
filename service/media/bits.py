"""Big-endian bits, most significant first: the few codec headers read without a decoder (an AV1
sequence header in an AVIF picture, an H.264 SPS and a VP9 frame header in a video's packets)."""

from __future__ import annotations


class Bits:
    """Reads ``data`` bit by bit; reading past its end raises ``IndexError`` (a header cut short)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self.data[self.pos >> 3]
            value = value << 1 | (byte >> (7 - (self.pos & 7)) & 1)
            self.pos += 1
        return value

    def ue(self) -> int:
        """An Exp-Golomb number: H.264's ue(v), AV1's uvlc (the same code).  Past 31 leading zeros
        it is 2**32 - 1, as AV1 has it (no H.264 field is that large)."""
        zeros = 0
        while not self.read(1):
            zeros += 1
            if zeros >= 32:
                return (1 << 32) - 1
        return self.read(zeros) + (1 << zeros) - 1

    def se(self) -> int:
        """A signed Exp-Golomb number (H.264's se(v)): 1, -1, 2, -2, ... for 1, 2, 3, 4, ..."""
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)
