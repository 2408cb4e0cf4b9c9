"""Cues made ready for a subtitle encoder (``service.media.cues``): overlapping cues as stretches
of the cues under way, within bounds."""

from __future__ import annotations

from service.media.cues import MAX_TOGETHER, Timeline


def _line(text: str) -> str:
    return f"0,0,Default,,0,0,0,,{text}"


def _texts(stretches: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    return [(a, b, text.split(",", 8)[-1]) for a, b, text in stretches]


def test_overlapping_cues_become_stretches_of_the_cues_under_way() -> None:
    timeline = Timeline()
    out = timeline.add(100, 330, [_line("first")])
    out += timeline.add(150, 550, [_line("third")])
    out += timeline.add(200, 450, [_line("second")])
    out += timeline.add(600, 700, [_line("last")])
    out += timeline.close(1000)
    assert _texts(out) == [
        (100, 150, "first"), (150, 200, "first\\Nthird"), (200, 330, "first\\Nthird\\Nsecond"),
        (330, 450, "third\\Nsecond"), (450, 550, "third"), (600, 700, "last")]


def test_a_cue_of_no_length_is_shown_until_the_next() -> None:
    timeline = Timeline()
    out = timeline.add(0, None, [_line("a")]) + timeline.add(40, None, [_line("b")]) + timeline.close(90)
    assert _texts(out) == [(0, 40, "a"), (40, 90, "b")]
    assert Timeline().close(10) == []


def test_thousands_of_cues_under_way_at_once_are_shown_a_few_at_a_time() -> None:
    """A hostile script: thousands of cues, each hours long, all under way together.  Each stretch
    shows at most ``MAX_TOGETHER`` (the latest begun): unbounded, the stretches held every cue
    begun so far, work and memory growing with the square of the cues."""
    timeline = Timeline()
    out = []
    for i in range(3_000):
        out += timeline.add(i, 10_000_000, [_line(f"cue {i}")])
    out += timeline.close(10_000_000)
    assert len(out) == 3_000 and max(text.count("\\N") + 1 for _, _, text in out) == MAX_TOGETHER
    assert _texts(out)[-1][2] == "\\N".join(f"cue {i}" for i in range(3_000 - MAX_TOGETHER, 3_000))
