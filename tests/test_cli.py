"""`backdrop replace` as a user runs it: a real process, real files."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import data_path
from videoutil import alpha_channel, frames_rgb, read_back

BACKDROP = [sys.executable, "-m", "service.startup"]


def test_replace_writes_the_video(tmp_path: Path) -> None:
    src = data_path("videos", "asl", "yes.mkv")
    out = tmp_path / "out.mp4"
    bg = data_path("backgrounds", "bg_1.jpg")
    proc = subprocess.run([*BACKDROP, "replace", str(src), "-b", str(bg), "-o", str(out), "--model", "rvm"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert read_back(out).frames == read_back(src).frames
    assert "frames" in proc.stdout
    assert "100%" in proc.stderr and "frame/s" in proc.stderr, proc.stderr  # the progress bar, ended full


def test_errors_are_one_line_with_a_code(tmp_path: Path) -> None:
    bad = tmp_path / "clip.mp4"
    bad.write_text("not a video at all")
    out = tmp_path / "out.mp4"
    proc = subprocess.run([*BACKDROP, "replace", str(bad), "-b", "#ffffff", "-o", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "[not_a_video]" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_a_full_disk_is_one_line_with_its_code(tmp_path: Path) -> None:
    """The output's disk fills while the video is written (its partial file is ``/dev/full``, where
    every write fails with the kernel's ENOSPC): ``disk_full`` in one line, and nothing left behind."""
    out = tmp_path / "out.mp4"
    (tmp_path / ".out.mp4.partial").symlink_to("/dev/full")
    proc = subprocess.run([*BACKDROP, "replace", str(data_path("videos", "asl", "yes.mkv")), "-b", "#ffffff",
                           "-o", str(out), "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "[disk_full]: no space left on the disk" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_standard_input_and_output_carry_the_video(tmp_path: Path) -> None:
    """`backdrop replace - -o - < in > out`, as with other Unix video tools: the video comes back on
    standard output, the summary on standard error (a file named "-" was written to the current
    folder, and standard output stayed empty).  A reader that stops early (`| head`) ends it as
    SIGPIPE would, quietly; a terminal as the input or the output is refused."""
    import fcntl
    import os
    import pty

    clip = data_path("videos", "asl", "yes.mkv")
    with open(clip, "rb") as stdin:
        proc = subprocess.run([*BACKDROP, "replace", "-", "-b", "#336699", "-o", "-"], stdin=stdin,
                              capture_output=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out.mp4"
    out.write_bytes(proc.stdout)
    assert read_back(out).frames == read_back(clip).frames
    assert b"-: 65 frames" in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]

    early = subprocess.Popen([*BACKDROP, "replace", str(clip), "-b", "#336699", "-o", "-",
                              "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert early.stdout is not None and early.stderr is not None
    fcntl.fcntl(early.stdout.fileno(), fcntl.F_SETPIPE_SZ, 4096)  # a 128 kB video cannot fit in the pipe
    assert len(os.read(early.stdout.fileno(), 100)) == 100
    early.stdout.close()
    assert early.wait(300) == 141
    assert early.stderr.read() == b""

    terminal, other_end = pty.openpty()
    try:
        for args, stdin in (([str(clip), "-o", "-"], None), (["-", "-o", str(tmp_path / "o.mp4")], terminal)):
            proc = subprocess.run([*BACKDROP, "replace", *args, "-b", "#336699"], stdin=stdin,
                                  stdout=terminal if stdin is None else None, stderr=subprocess.PIPE, text=True,
                                  timeout=60)
            assert proc.returncode == 2 and "[invalid_parameter]" in proc.stderr and "terminal" in proc.stderr, proc.stderr
    finally:
        os.close(terminal)
        os.close(other_end)


def test_bad_colour_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*BACKDROP, "replace", str(data_path("videos", "asl", "yes.mkv")), "-b", "#zzzzzz", "-o",
         str(tmp_path / "o.mp4")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "[invalid_color]" in proc.stderr


def test_outputs_that_cannot_be_written_are_refused_before_any_work(tmp_path: Path) -> None:
    """A folder, a missing folder, the input itself or the background file as the output, and a folder
    as the input: one line with a code, at once (no frame is processed), and no input is touched."""
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(data_path("videos", "walking-sideways.mp4").read_bytes())
    bg = tmp_path / "bg.jpg"
    bg.write_bytes(data_path("backgrounds", "bg_1.jpg").read_bytes())
    before = {p: p.read_bytes() for p in (clip, bg)}
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo")  # as a device would be: run as root, -o /dev/null replaced the device with a file
    cases = [
        ([str(clip), "-b", "#00ff00", "-o", str(tmp_path / "fifo")], "invalid_parameter", "is not a file"),
        ([str(clip), "-b", "#00ff00", "-o", ""], "invalid_parameter", "empty name"),
        ([str(clip), "-b", "#00ff00", "-o", str(tmp_path / "folder")], "invalid_parameter", "is a folder"),
        ([str(clip), "-b", "#00ff00", "-o", str(tmp_path / "missing" / "out.mp4")], "invalid_parameter", "cannot be written"),
        ([str(clip), "-b", "#00ff00", "-o", str(clip)], "invalid_parameter", "would be overwritten"),
        ([str(clip), "-b", str(bg), "-o", str(bg)], "invalid_parameter", "would be overwritten"),
        ([str(tmp_path / "folder"), "-b", "#00ff00", "-o", str(tmp_path / "o.mp4")], "not_a_video", "not a file"),
    ]
    for args, code, says in cases:
        proc = subprocess.run([*BACKDROP, "replace", *args, "-q"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (args, proc.stderr)
        assert f"[{code}]" in proc.stderr and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert {p: p.read_bytes() for p in (clip, bg)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bg.jpg", "clip.mp4", "fifo", "folder"]  # no partial file left
    assert stat.S_ISFIFO((tmp_path / "fifo").lstat().st_mode)


def test_an_output_that_is_a_link_is_written_through(tmp_path: Path) -> None:
    """``-o link.mp4`` writes the file the link points to, as a shell's ``>`` would; the link stays."""
    (tmp_path / "target.mp4").write_bytes(b"old")
    (tmp_path / "link.mp4").symlink_to("target.mp4")
    proc = subprocess.run([*BACKDROP, "replace", str(data_path("videos", "asl", "yes.mkv")), "-b", "#00ff00", "-o",
                           str(tmp_path / "link.mp4"), "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "link.mp4").is_symlink() and read_back(tmp_path / "target.mp4").frames > 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_run_leaves_nothing_behind(tmp_path: Path, signum: int) -> None:
    """``kill`` (or ``timeout``) and Ctrl-C stop a run the same way: the partial output of each
    part and the copy of standard input are removed, and the exit status says which signal.  SIGTERM
    ended the process where it stood, leaving them behind."""
    spool = tmp_path / "spool"
    clip = data_path("videos", "desk.mp4")  # long enough to run in parts on this machine
    with open(clip, "rb") as stdin:
        # as from a terminal: a shell without job control starts its background commands (and so
        # these tests, when run with &) with SIGINT ignored, and Python keeps ignoring it then
        proc = subprocess.Popen([*BACKDROP, "replace", "-", "-b", "#00ff00", "-o", str(tmp_path / "out.mp4"), "-q"],
                                stdin=stdin, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "BACKDROP_SPOOL_DIR": str(spool)},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("*out.mp4.partial*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # frames being written
        assert proc.poll() is None and list(tmp_path.glob("*out.mp4.partial*")), proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and "terminate called" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spool"] and list(spool.iterdir()) == [], err


def test_a_killed_run_s_copy_of_standard_input_is_swept_by_the_next_run(tmp_path: Path) -> None:
    """A run killed outright (SIGKILL, the OOM killer) cannot clean up: its copy of standard input
    stayed in the spool for good.  Its folder is held by a lock the kernel drops (service.spool), so
    the next run that uses the spool removes it."""
    spool = tmp_path / "spool"
    env = {**os.environ, "BACKDROP_SPOOL_DIR": str(spool)}
    with open(data_path("videos", "desk.mp4"), "rb") as stdin:
        proc = subprocess.Popen([*BACKDROP, "replace", "-", "-b", "#00ff00", "-o", str(tmp_path / "a.mp4"), "-q"],
                                stdin=stdin, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("*a.mp4.partial*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.kill()
        proc.wait(timeout=30)
    left = [p.name for p in spool.iterdir()]
    assert len(left) == 1 and left[0].startswith("backdrop-") and (spool / left[0] / "input").exists(), left
    with open(data_path("videos", "asl", "yes.mkv"), "rb") as stdin:
        done = subprocess.run([*BACKDROP, "replace", "-", "-b", "#00ff00", "-o", str(tmp_path / "b.mp4"), "-q"],
                              stdin=stdin, stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert list(spool.iterdir()) == []


def test_the_output_suffix_picks_the_format(tmp_path: Path) -> None:
    """`-o person.webm` writes WebM with alpha (no background needed) as a user expects from the name;
    a background given anyway is not used, and the user is told so; a suffix naming another
    container than --format is refused before any work."""
    import av
    import numpy as np

    src = str(data_path("videos", "asl", "yes.mkv"))
    out = tmp_path / "person.webm"
    proc = subprocess.run([*BACKDROP, "replace", src, "-o", str(out), "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout == "", proc.stderr  # -q: no bar, no summary
    with av.open(str(out)) as c:
        assert c.format.name.startswith("matroska") and c.streams.video[0].codec_context.name == "vp9"
    with_bg = tmp_path / "person-bg.webm"
    proc = subprocess.run([*BACKDROP, "replace", src, "-b", str(data_path("videos", "asl", "bird.mkv")), "-o",
                           str(with_bg), "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "webm output shows no background, so -b is not used" in proc.stderr, proc.stderr
    assert np.array_equal(alpha_channel(with_bg), alpha_channel(out))
    assert all(np.array_equal(a, b) for a, b in zip(frames_rgb(with_bg).values(), frames_rgb(out).values(), strict=True))
    proc = subprocess.run([*BACKDROP, "replace", src, "--format", "webm", "-o", str(tmp_path / "p.mp4"), "-q"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "[invalid_parameter]" in proc.stderr and "p.webm" in proc.stderr, proc.stderr
    assert not (tmp_path / "p.mp4").exists()
    # a container this service does not write: refused, not MP4 under a name that says otherwise
    for name, fix in (("p.mkv", "p.mp4"), ("p.AVI", "p.mp4")):
        proc = subprocess.run([*BACKDROP, "replace", src, "-b", "#000000", "-o", str(tmp_path / name), "-q"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "[invalid_parameter]" in proc.stderr and fix in proc.stderr, proc.stderr
        assert not (tmp_path / name).exists()


def test_submit_refuses_an_output_it_cannot_write_before_uploading(tmp_path: Path) -> None:
    """``backdrop submit`` checks its output as ``replace`` does, before anything is sent (no server
    answers here): it overwrote the source video named as the output, and a folder or a missing
    folder failed only once the whole job had run, leaving the download's .part behind."""
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(data_path("videos", "asl", "yes.mkv").read_bytes())
    before = clip.read_bytes()
    (tmp_path / "folder").mkdir()
    for output, says in ((clip, "would be overwritten"), (tmp_path / "folder", "is a folder"),
                         (tmp_path / "missing" / "o.mp4", "folder does not exist")):
        proc = subprocess.run([*BACKDROP, "submit", str(clip), "-b", "#00ff00", "-o", str(output), "--api",
                               "http://127.0.0.1:9"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert clip.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "folder"]
