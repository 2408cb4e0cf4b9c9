"""``service.media.colour_space``: SDR pictures placed in HDR as ITU-R BT.2408 places them, and back."""

from __future__ import annotations

import numpy as np
import pytest

from service.media.colour_space import HLG, PQ, SRGB, ColourSpace, converter, in_space

BT2020_HLG, BT2020_PQ = ColourSpace(9, HLG), ColourSpace(9, PQ)


def _one(rgb: tuple[int, int, int], src: ColourSpace, dst: ColourSpace) -> list[int]:
    return in_space(np.array([[rgb]], np.uint8), src, dst)[0, 0].tolist()  # type: ignore[no-any-return]


def test_sdr_white_is_the_hdr_reference_white() -> None:
    """BT.2408: SDR's 100 % is HDR's reference white, 203 nits: 75 % of HLG's signal, 58 % of PQ's."""
    assert _one((255, 255, 255), SRGB, BT2020_HLG) == [191] * 3  # 0.75 x 255
    assert _one((255, 255, 255), SRGB, BT2020_PQ) == [148] * 3  # PQ(203 / 10000) = 0.5807
    assert _one((0, 0, 0), SRGB, BT2020_HLG) == [0] * 3
    # a grey stays grey; BT.709's pure red is well inside BT.2020 (its primaries: 0.627, 0.069, 0.016)
    grey = _one((128, 128, 128), SRGB, BT2020_PQ)
    assert grey[0] == grey[1] == grey[2] and 90 < grey[0] < 148
    red = _one((255, 0, 0), SRGB, BT2020_HLG)
    assert red[0] > 150 and 40 < red[1] < 100 and red[2] < red[1]


def test_there_and_back_again() -> None:
    """SDR to HDR and back: greys within two levels; colours on average within two, and in light
    within 3.5 % of white.  The output is 8-bit, and SDR's range takes 191 of HLG's levels and
    148 of PQ's: a step of 8-bit PQ near reference white is about 3 % in light, and a channel near
    0 beside a bright one (a saturated colour) shows those steps most."""
    greys = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, 1)[None]
    colours = np.random.default_rng(3).integers(0, 256, (1, 4096, 3), dtype=np.uint8)
    for hdr in (BT2020_HLG, BT2020_PQ, ColourSpace(12, HLG)):
        grey_back = in_space(in_space(greys, SRGB, hdr), hdr, SRGB)
        assert np.abs(grey_back.astype(int) - greys).max() <= 2, hdr
        back = in_space(in_space(colours, SRGB, hdr), hdr, SRGB)
        assert np.abs(back.astype(int) - colours).mean() < 2.0, hdr
        light = np.abs((back / 255.0) ** 2.4 - (colours / 255.0) ** 2.4)
        assert light.max() < 0.035, hdr


@pytest.mark.parametrize("src,dst", [
    (SRGB, ColourSpace(1, 1)), (ColourSpace(6, 6), ColourSpace(2, 2)), (ColourSpace(5, 4), SRGB),
    (BT2020_HLG, ColourSpace(9, HLG)), (ColourSpace(9, 14), ColourSpace(9, 1)),
])
def test_spaces_that_read_alike_need_no_conversion(src: ColourSpace, dst: ColourSpace) -> None:
    """SDR transfers read alike, and so do BT.709's, BT.601's and unspecified primaries: SDR video
    keeps its background's code values exactly, as it always did."""
    assert converter(src, dst) is None


def test_hdr_highlights_clip_at_sdr_white() -> None:
    """An HDR picture in SDR: reference white is SDR's white; what is brighter clips there."""
    assert _one((191, 191, 191), BT2020_HLG, SRGB) == [254] * 3  # 191 is 74.9 %
    assert _one((250, 250, 250), BT2020_HLG, SRGB) == [255] * 3
    assert _one((148, 148, 148), BT2020_PQ, SRGB) in ([254] * 3, [255] * 3)
    assert _one((200, 200, 200), BT2020_PQ, SRGB) == [255] * 3
