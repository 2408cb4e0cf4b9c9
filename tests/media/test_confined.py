"""The first reading of an untrusted file runs in a child process with a CPU, memory and time limit
(``service.media.confined``): a file built to be slow or greedy to open is refused as too large,
a reader that crashes on it makes it unreadable, and everything else comes back as if read here."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import bombs
import pytest
from conftest import data_path

from service.config import Settings
from service.errors import BackdropError, CorruptVideo, VideoTooLarge
from service.media import confined as confinement
from service.media.confined import confined, inspect_background_confined, inspect_video_confined
from service.media.inspect import inspect_background, inspect_video
from service.media.metadata_bombs import metadata_bomb


def code_of(fn, *args, **kwargs) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(BackdropError) as err:
        fn(*args, **kwargs)
    assert err.value.message
    return err.value.code


# What the child runs in the tests of the limits themselves: functions of this module, as the
# child process imports them by name.
def allocate(size: int) -> int:
    return len(bytearray(size))


def crash() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def fail() -> None:
    raise ValueError("a fault of ours")


def stall(seconds: float) -> None:
    time.sleep(seconds)


@pytest.fixture(scope="module")
def tag_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bombs.nut_tag_bomb(tmp_path_factory.mktemp("bomb") / "tags.nut")


def test_a_file_that_takes_longer_to_open_than_allowed_is_refused(tag_bomb: Path) -> None:
    """No count of ours catches NUT's tags: the child's CPU limit does."""
    assert metadata_bomb(tag_bomb) is None
    settings = Settings(inspect_cpu_seconds=1)
    assert code_of(inspect_video_confined, tag_bomb, settings) == "video_too_large"


def test_what_the_child_reads_comes_back_as_read_here(tmp_path: Path) -> None:
    settings = Settings(inspect_cpu_seconds=1)
    clip = data_path("videos", "talking-head.mp4")
    assert inspect_video_confined(clip, settings) == inspect_video(clip, settings)
    background = data_path("backgrounds", "bg_1.jpg")
    assert inspect_background_confined(background, settings) == inspect_background(background, settings)
    text = tmp_path / "notes.txt"
    text.write_text("not a video\n" * 50)
    assert code_of(inspect_video_confined, text, settings) == "not_a_video"
    assert code_of(inspect_background_confined, text, settings) == "unsupported_background"
    assert code_of(inspect_video_confined, background, settings) == "not_a_video"


def test_memory_past_the_limit_is_refused() -> None:
    settings = Settings(inspect_memory_bytes=64 * 2**20)
    kinds = {"too_costly": VideoTooLarge, "unreadable": CorruptVideo}
    assert confined(allocate, 2**20, settings=settings, **kinds) == 2**20
    assert code_of(confined, allocate, 256 * 2**20, settings=settings, **kinds) == "video_too_large"


def test_a_reader_that_crashes_makes_the_file_unreadable_and_a_fault_of_ours_is_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings()
    kinds = {"too_costly": VideoTooLarge, "unreadable": CorruptVideo}
    assert code_of(confined, crash, settings=settings, **kinds) == "corrupt_video"
    with pytest.raises(RuntimeError, match="a fault of ours"):
        confined(fail, settings=settings, **kinds)
    assert 'raise ValueError("a fault of ours")' in caplog.text  # the child's traceback, logged here


def test_a_child_that_stalls_is_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    """Waiting spends no CPU: the wall-clock limit (twice the CPU limit and some slack) ends it."""
    monkeypatch.setattr(confinement, "_WALL_SLACK_S", 0.5)
    settings = Settings(inspect_cpu_seconds=1)
    kinds = {"too_costly": VideoTooLarge, "unreadable": CorruptVideo}
    assert code_of(confined, stall, 60, settings=settings, **kinds) == "video_too_large"


def test_many_threads_read_at_once() -> None:
    """The API reads uploads from its thread pool: children started side by side each answer their
    own caller."""
    from concurrent.futures import ThreadPoolExecutor

    settings = Settings()
    clips = [data_path("videos", "talking-head.mp4"), data_path("videos", "asl", "bird.mkv")] * 4
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda clip: inspect_video_confined(clip, settings).frames, clips))
    assert got == [inspect_video(clip, settings).frames for clip in clips]
    assert got[0] != got[1]
