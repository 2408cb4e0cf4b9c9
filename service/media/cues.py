"""Text subtitle cues as FFmpeg decodes them (ASS dialogue lines), made ready for an encoder that
writes another format: MP4's ``mov_text`` or WebVTT (``encode.SubtitleRoute``).

FFmpeg's encoders take a decoded cue as it is, and three things came out wrong:

- ASS's hard space ``\\h`` (FFmpeg's caption decoder writes one before each CEA-608 line) was
  written as the two characters: players showed "\\hThere are days".  It becomes U+00A0.
- A cue whose style the script does not define (``Default `` with a trailing space, a style
  named by a script's author and never written) became, in ``mov_text``, text of size 0 in a
  transparent colour: nothing shown.  It takes the script's default style, as ASS renderers do.
- ``mov_text`` shows one sample at a time, and cues that overlap (two speakers at once, a sign
  over dialogue) came out late in MP4: FFmpeg's muxer pushed each one past the last's end, half a
  second and more.  ``Timeline`` cuts the cues into stretches, each showing every cue under way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["MAX_TOGETHER", "Timeline", "fixed_line", "joined", "styles_of"]

#: The most cues shown at once (a screen holds a few lines): past it, the earliest begun gives
#: way.  Without a bound, a script of thousands of cues hours long each, all under way together,
#: made each stretch thousands of lines: work and memory growing with the square of the cues.
MAX_TOGETHER = 8

#: the fields of a decoded ASS dialogue line before its text: ReadOrder, Layer, Style, Name,
#: MarginL, MarginR, MarginV, Effect
_FIELDS = 8
_STYLE = 2


def styles_of(header: bytes | None) -> list[str]:
    """The style names an ASS script header defines, in order."""
    text = (header or b"").decode("utf-8", "replace")
    return [line.split(":", 1)[1].split(",", 1)[0].strip()
            for line in text.splitlines() if line.startswith("Style:")]


def fixed_line(line: str, styles: list[str]) -> str:
    """``line`` (a decoded ASS dialogue line) with its hard spaces made no-break spaces, and its
    style one of ``styles`` (the script's: the same name without stray spaces, else ``Default``,
    else the first)."""
    fields = line.split(",", _FIELDS)
    if len(fields) <= _FIELDS:
        return line
    style = fields[_STYLE]
    if styles and style not in styles:
        trimmed = style.strip()
        fields[_STYLE] = trimmed if trimmed in styles else "Default" if "Default" in styles else styles[0]
    fields[_FIELDS] = fields[_FIELDS].replace("\\h", "\u00a0")
    return ",".join(fields)


def joined(lines: list[str]) -> str:
    """Cues shown together as one: the first's fields, every one's text, a line each."""
    if len(lines) == 1:
        return lines[0]
    fields = lines[0].split(",", _FIELDS)
    texts = [line.split(",", _FIELDS)[-1] for line in lines]
    return ",".join([*fields[:_FIELDS], "\\N".join(texts)]) if len(fields) > _FIELDS else "\\N".join(texts)


@dataclass
class Timeline:
    """Overlapping cues as consecutive stretches, each showing the cues under way then (times in
    any one tick).  Cues come in order of their start; ``add`` and ``close`` give the stretches
    that are complete, as (start, end, text).  A cue of no length is shown until the next starts;
    at most ``MAX_TOGETHER`` are shown at once."""

    _cursor: int | None = None
    _under_way: list[tuple[int | None, str]] = field(default_factory=list)  # (end, line)

    def add(self, start: int, end: int | None, lines: list[str]) -> list[tuple[int, int, str]]:
        done = self._until(start) if self._cursor is not None else []
        self._cursor = max(start, self._cursor or start)
        self._under_way += [(end, line) for line in lines]
        del self._under_way[:-MAX_TOGETHER]
        return done

    def close(self, last: int) -> list[tuple[int, int, str]]:
        """The stretches left; a cue of no length ends at ``last`` (the pictures' end)."""
        if self._cursor is None:
            return []
        self._under_way = [(last if end is None else end, line) for end, line in self._under_way]
        return self._until(None)

    def _until(self, until: int | None) -> list[tuple[int, int, str]]:
        """The stretches from the cursor to ``until`` (None: to the last cue's end)."""
        out = []
        assert self._cursor is not None
        while self._under_way:
            closing = min((end for end, _ in self._under_way if end is not None), default=None)
            stop = until if closing is None or (until is not None and until < closing) else closing
            assert stop is not None  # ``close`` gave every cue an end
            if stop > self._cursor:
                out.append((self._cursor, stop, joined([line for _, line in self._under_way])))
                self._cursor = stop
            reached = until is not None and stop >= until
            # a cue of no length ends where the next begins
            self._under_way = [(end, line) for end, line in self._under_way
                               if (end > stop if end is not None else not reached)]
            if reached:
                break
        return out
