"""A client for Backdrop's HTTP API, sync (``Backdrop``) and async (``AsyncBackdrop``), on httpx.

    from service.client import Backdrop

    with Backdrop("https://backdrop.example.com", api_key="...") as bd:
        job = bd.submit("in.mp4", background="beach.jpg", output_format="mp4")
        bd.wait(job["id"], progress=lambda j: print(j["progress"]["percent"]))
        bd.download(job["id"], "out.mp4")

An input (``video=``, ``background=``) is a local file (a path), an ``http(s)://`` URL (the
service's worker fetches it) or an :class:`Upload` from ``upload()``; a background may also be
``"#RRGGBB"``, ``"blur"`` or ``"blur:<strength>"``.  Every ``submit`` carries an ``Idempotency-Key`` of its own, kept
across its retries, so a retried submit never makes two jobs.  Requests are retried, a bounded
number of times, on connection errors and on 429/503 (honouring ``Retry-After``).  A refusal is
raised as :class:`ApiError` with the problem's ``code``, ``status``, ``title`` and ``detail``; a job
that ends failed or canceled, from ``wait``, as :class:`JobFailed`.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import httpx

Job = dict[str, Any]
ProgressCallback = Callable[[Job], Any]
_COLOR = re.compile(r"^#[0-9A-Fa-f]{6}$")
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_TERMINAL = frozenset({"succeeded", "failed", "canceled"})
CHUNK = 1024 * 1024


class ApiError(Exception):
    """A refusal from the API (RFC 9457 problem), or a transport failure after the retries
    (``code`` ``connection_error``, ``status`` 0)."""

    def __init__(self, code: str, status: int, title: str = "", detail: str = "", retry_after_s: float | None = None):
        super().__init__(f"{code} ({status}): {detail or title}")
        self.code, self.status, self.title, self.detail = code, status, title, detail
        self.retry_after_s = retry_after_s

    @classmethod
    def from_response(cls, r: httpx.Response) -> ApiError:
        body = _json_object(r) or {}
        return cls(
            str(body.get("code") or f"http_{r.status_code}"), r.status_code, str(body.get("title") or r.reason_phrase),
            str(body.get("detail") or r.text[:500]), _retry_after(r),
        )


class JobFailed(ApiError):
    """A job that ended ``failed`` (``code`` is its error code) or ``canceled``."""

    def __init__(self, job: Job):
        error = job.get("error") or {}
        code = str(error.get("code") or job["status"])
        super().__init__(code, 0, f"job {job['status']}", str(error.get("message") or ""))
        self.job = job


@dataclass(frozen=True)
class Upload:
    """A direct upload (``POST /uploads`` and its PUT) that ``submit`` can name by id."""

    id: str


def _json_object(r: httpx.Response) -> dict[str, Any] | None:
    """The JSON object an answer carries, or None where it carries none (not JSON, or an array)."""
    try:
        body = r.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _body(r: httpx.Response) -> dict[str, Any]:
    """The JSON object an answer carries; a server that is not Backdrop (a proxy's HTML page,
    another API) is ``unexpected_response``, not a JSONDecodeError or a KeyError."""
    body = _json_object(r)
    if body is None:
        raise ApiError("unexpected_response", r.status_code, "not a JSON object",
                       f"{r.request.url} answered {r.text[:200]!r}")
    return body


def _job(r: httpx.Response) -> Job:
    """``_body``, checked for what a job has (its id, status and progress)."""
    job = _body(r)
    if not (isinstance(job.get("id"), str) and isinstance(job.get("status"), str) and isinstance(job.get("progress"), dict)):
        raise ApiError("unexpected_response", r.status_code, "not a job", f"{r.request.url} answered {r.text[:200]!r}")
    return job


def _retry_after(r: httpx.Response) -> float | None:
    """The wait a ``Retry-After`` asks, in seconds: a number of them, or an HTTP date (RFC 9110
    10.2.3), as gateways and load balancers send it."""
    value = r.headers.get("retry-after", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _is_url(value: object) -> bool:
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


def _fields(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


def _plan(video: Any, background: Any, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Path]]:
    """(fields, files) of a submit: references become fields, paths become files."""
    fields = _fields(options)
    files: dict[str, Path] = {}
    for name, value in (("video", video), ("background", background)):
        if value is None:
            continue
        if isinstance(value, Upload):
            fields[f"{name}_upload_id"] = value.id
        elif _is_url(value):
            fields[f"{name}_url"] = value
        elif name == "background" and isinstance(value, str) and _COLOR.match(value):
            fields["background_color"] = value
        elif name == "background" and isinstance(value, str) and value.split(":", 1)[0] == "blur":
            fields["background_blur"] = True
            if ":" in value:  # blur:<strength>, checked by the API
                fields["background_blur_strength"] = value.split(":", 1)[1]
        else:
            files[name] = Path(value)
    return fields, files


def _form_value(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


class _Base:
    def __init__(self, base_url: str, api_key: str | None, max_retries: int, backoff_s: float, max_wait_s: float):
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.max_retries, self.backoff_s, self.max_wait_s = max_retries, backoff_s, max_wait_s

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        return min(self.max_wait_s, retry_after if retry_after is not None else self.backoff_s * 2**attempt)

    def _after_error(self, attempt: int, e: httpx.RequestError) -> float:
        """The pause before trying again after a failed connection or transfer; once the
        retries are spent, ``connection_error``.  Any other failure of the request (redirects
        without end) is ``unexpected_response`` at once."""
        if not isinstance(e, httpx.TransportError):
            raise ApiError("unexpected_response", 0, type(e).__name__, str(e)) from e
        if attempt == self.max_retries:
            raise ApiError("connection_error", 0, type(e).__name__, str(e)) from e
        return self._delay(attempt, None)

    def _after_answer(self, attempt: int, r: httpx.Response) -> float | None:
        """The pause before trying again after a busy or gateway answer (429/502/503/504,
        honouring Retry-After), or None when this answer is the one to act on."""
        if r.status_code in _RETRY_STATUSES and attempt < self.max_retries:
            return self._delay(attempt, _retry_after(r))
        return None

    @staticmethod
    def _check(r: httpx.Response) -> httpx.Response:
        if r.status_code >= 400:
            raise ApiError.from_response(r)
        return r


class Backdrop(_Base):
    """The synchronous client (see the module doc)."""

    def __init__(
        self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, *, timeout: float = 300.0,
        max_retries: int = 4, backoff_s: float = 0.5, max_wait_s: float = 30.0, http: httpx.Client | None = None,
    ):
        super().__init__(base_url, api_key, max_retries, backoff_s, max_wait_s)
        self.http = http or httpx.Client(timeout=timeout, trust_env=False)

    def __enter__(self) -> Backdrop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, *, build: Callable[[ExitStack], dict[str, Any]] | None = None,
                 bare: bool = False, **kw: Any) -> httpx.Response:
        """One API call with the retries; ``build`` makes the body afresh for each attempt (files
        reopened); ``bare``: without the API key (a presigned or token URL)."""
        url = path if _is_url(path) else self.base_url + path
        base_headers = {**({} if bare else self.headers), **kw.pop("headers", {})}
        for attempt in range(self.max_retries + 1):
            with ExitStack() as stack:
                extra = build(stack) if build else {}
                headers = {**base_headers, **extra.pop("headers", {})}
                try:
                    r = self.http.request(method, url, headers=headers, **kw, **extra)
                except httpx.RequestError as e:
                    time.sleep(self._after_error(attempt, e))
                    continue
            if (pause := self._after_answer(attempt, r)) is not None:
                time.sleep(pause)
                continue
            return self._check(r)
        raise AssertionError("unreachable")

    def submit(self, video: str | os.PathLike[str] | Upload, background: Any = None, *,
               idempotency_key: str | None = None, **options: Any) -> Job:
        """Queue a job (options: ``model``, ``output_format``, ``composite``, ``harmonize``,
        ``callback_url``); the job as the API answered it.  Retried safely (one Idempotency-Key)."""
        fields, files = _plan(video, background, options)
        key = idempotency_key or uuid.uuid4().hex
        build = partial(_submit_body, fields, files, key)
        return _job(self._request("POST", "/jobs", build=build))

    def upload(self, path: str | os.PathLike[str], content_type: str = "application/octet-stream", *,
               part_size: int | None = None) -> Upload:
        """Send a file straight to the service's store (``POST /uploads``, then its PUT or parts:
        on S3 a file over 100 MiB, or any with ``part_size``, goes in parts of at least that many
        bytes), read a chunk at a time as it is sent."""
        p = Path(path)
        request = _upload_request(p, content_type, part_size)
        size = request["size"]
        up = _body(self._request("POST", "/uploads", json=request))
        if up.get("multipart"):
            mp = up["multipart"]
            parts = []
            for part in mp["parts"]:
                body = partial(_file_body, p, *_part_range(part["number"], mp["part_size"], size))
                r = self._request("PUT", part["url"], build=body, bare=True)
                parts.append({"number": part["number"], "etag": r.headers["etag"]})
            self._request("POST", mp["complete_url"], json={"parts": parts})
        else:
            self._request("PUT", up["url"], headers=up["headers"], build=partial(_file_body, p, 0, size), bare=True)
        return Upload(up["id"])

    def get(self, job_id: str) -> Job:
        return _job(self._request("GET", f"/jobs/{job_id}"))

    def wait(self, job_id: str, *, progress: ProgressCallback | None = None, timeout: float | None = None,
             poll_s: float = 1.0, outage_s: float = 300.0) -> Job:
        """Poll until the job ends; ``progress(job)`` on each change.  The succeeded job, or
        ``JobFailed``; ``TimeoutError`` after ``timeout`` seconds.  The job goes on while the API
        is restarted or overloaded, so polls that fail for that (no connection, 429/502/503/504,
        each after its own retries) are polled through for up to ``outage_s`` seconds in a row."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: Any = None
        outage: float | None = None
        while True:
            try:
                job = self.get(job_id)
            except ApiError as e:
                outage = _outage_since(e, outage, outage_s, deadline)
                time.sleep(poll_s)
                continue
            outage = None
            seen = (job["status"], job["progress"].get("frames_done"), job["progress"].get("frames_total"))
            if progress is not None and seen != last:
                progress(job)
            last = seen
            if job["status"] in _TERMINAL:
                if job["status"] != "succeeded":
                    raise JobFailed(job)
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")
            time.sleep(poll_s)

    def download(self, job_id: str, path: str | os.PathLike[str]) -> Path:
        """Write the result to ``path`` (through a ``.part`` file, renamed when complete; removed
        if the download fails).  Retried like the other calls; a transfer cut off is taken up
        where it stopped (a Range request for the rest), here or on S3."""
        out = Path(path)
        url = self.base_url + f"/jobs/{job_id}/result"
        with _Partial(out) as f:
            for attempt in range(self.max_retries + 1):
                try:
                    with self.http.stream("GET", url, headers={**self.headers, **_rest(f)}, follow_redirects=True) as r:
                        if _whole_already(r, f):
                            break
                        if (pause := self._after_answer(attempt, r)) is not None:
                            time.sleep(pause)
                            continue
                        if r.status_code >= 400:
                            r.read()
                            raise ApiError.from_response(r)
                        _take_up(r, f)
                        for chunk in r.iter_bytes(CHUNK):
                            f.write(chunk)
                    break
                except httpx.RequestError as e:
                    time.sleep(self._after_error(attempt, e))
        return out

    def cancel(self, job_id: str) -> None:
        """Cancel a queued or running job (a finished one is deleted)."""
        self._request("DELETE", f"/jobs/{job_id}")

    def list_jobs(self, offset: int = 0, limit: int = 20) -> dict[str, Any]:
        return _body(self._request("GET", "/jobs", params={"offset": offset, "limit": limit}))


class AsyncBackdrop(_Base):
    """The asynchronous client: the same methods as :class:`Backdrop`, awaited."""

    def __init__(
        self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, *, timeout: float = 300.0,
        max_retries: int = 4, backoff_s: float = 0.5, max_wait_s: float = 30.0, http: httpx.AsyncClient | None = None,
    ):
        super().__init__(base_url, api_key, max_retries, backoff_s, max_wait_s)
        self.http = http or httpx.AsyncClient(timeout=timeout, trust_env=False)

    async def __aenter__(self) -> AsyncBackdrop:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _request(self, method: str, path: str, *, build: Callable[[ExitStack], dict[str, Any]] | None = None,
                       bare: bool = False, **kw: Any) -> httpx.Response:
        """See ``Backdrop._request``; ``bare``: without the API key (a presigned or token URL)."""
        url = path if _is_url(path) else self.base_url + path
        base_headers = {**({} if bare else self.headers), **kw.pop("headers", {})}
        for attempt in range(self.max_retries + 1):
            with ExitStack() as stack:
                extra = build(stack) if build else {}
                headers = {**base_headers, **extra.pop("headers", {})}
                try:
                    r = await self.http.request(method, url, headers=headers, **kw, **extra)
                except httpx.RequestError as e:
                    await asyncio.sleep(self._after_error(attempt, e))
                    continue
            if (pause := self._after_answer(attempt, r)) is not None:
                await asyncio.sleep(pause)
                continue
            return self._check(r)
        raise AssertionError("unreachable")

    async def submit(self, video: str | os.PathLike[str] | Upload, background: Any = None, *,
                     idempotency_key: str | None = None, **options: Any) -> Job:
        """See :meth:`Backdrop.submit`."""
        fields, files = _plan(video, background, options)
        key = idempotency_key or uuid.uuid4().hex
        # the files go as httpx reads a multipart body on either client: 64 KiB at a time as it is sent
        build = partial(_submit_body, fields, files, key)
        return _job(await self._request("POST", "/jobs", build=build))

    async def upload(self, path: str | os.PathLike[str], content_type: str = "application/octet-stream", *,
                     part_size: int | None = None) -> Upload:
        """See :meth:`Backdrop.upload`."""
        p = Path(path)
        request = _upload_request(p, content_type, part_size)
        size = request["size"]
        up = _body(await self._request("POST", "/uploads", json=request))
        if up.get("multipart"):
            mp = up["multipart"]
            parts = []
            for part in mp["parts"]:
                part_body = partial(_file_body, p, *_part_range(part["number"], mp["part_size"], size), is_async=True)
                r = await self._request("PUT", part["url"], build=part_body, bare=True)
                parts.append({"number": part["number"], "etag": r.headers["etag"]})
            await self._request("POST", mp["complete_url"], json={"parts": parts})
        else:
            whole = partial(_file_body, p, 0, size, is_async=True)
            await self._request("PUT", up["url"], headers=up["headers"], build=whole, bare=True)
        return Upload(up["id"])

    async def get(self, job_id: str) -> Job:
        return _job(await self._request("GET", f"/jobs/{job_id}"))

    async def wait(self, job_id: str, *, progress: Callable[[Job], Any | Awaitable[Any]] | None = None,
                   timeout: float | None = None, poll_s: float = 1.0, outage_s: float = 300.0) -> Job:
        """See :meth:`Backdrop.wait` (``progress`` may be a coroutine function)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: Any = None
        outage: float | None = None
        while True:
            try:
                job = await self.get(job_id)
            except ApiError as e:
                outage = _outage_since(e, outage, outage_s, deadline)
                await asyncio.sleep(poll_s)
                continue
            outage = None
            seen = (job["status"], job["progress"].get("frames_done"), job["progress"].get("frames_total"))
            if progress is not None and seen != last:
                result = progress(job)
                if asyncio.iscoroutine(result):
                    await result
            last = seen
            if job["status"] in _TERMINAL:
                if job["status"] != "succeeded":
                    raise JobFailed(job)
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")
            await asyncio.sleep(poll_s)

    async def download(self, job_id: str, path: str | os.PathLike[str]) -> Path:
        """See :meth:`Backdrop.download`."""
        out = Path(path)
        url = self.base_url + f"/jobs/{job_id}/result"
        with _Partial(out) as f:  # chunks of 1 MiB to a local file
            for attempt in range(self.max_retries + 1):
                try:
                    async with self.http.stream("GET", url, headers={**self.headers, **_rest(f)},
                                                follow_redirects=True) as r:
                        if _whole_already(r, f):
                            break
                        if (pause := self._after_answer(attempt, r)) is not None:
                            await asyncio.sleep(pause)
                            continue
                        if r.status_code >= 400:
                            await r.aread()
                            raise ApiError.from_response(r)
                        _take_up(r, f)
                        async for chunk in r.aiter_bytes(CHUNK):
                            f.write(chunk)
                    break
                except httpx.RequestError as e:
                    await asyncio.sleep(self._after_error(attempt, e))
        return out

    async def cancel(self, job_id: str) -> None:
        await self._request("DELETE", f"/jobs/{job_id}")

    async def list_jobs(self, offset: int = 0, limit: int = 20) -> dict[str, Any]:
        return _body(await self._request("GET", "/jobs", params={"offset": offset, "limit": limit}))


def _outage_since(error: ApiError, since: float | None, outage_s: float, deadline: float | None) -> float:
    """When ``wait``'s poll failed with ``error``: the time the outage began (``since``, or now),
    where polling goes on; ``error`` itself where it says something other than an outage, or the
    outage has lasted ``outage_s``, or the wait's deadline has passed."""
    now = time.monotonic()
    since = now if since is None else since
    outage = error.code == "connection_error" or error.status in _RETRY_STATUSES
    if not outage or now - since >= outage_s or (deadline is not None and now > deadline):
        raise error
    return since


class _Partial:
    """The ``.part`` file a download writes beside ``out``, open for writing: renamed to ``out``
    when the download is complete, removed if it fails, or if the rename does (``out`` a folder)."""

    def __init__(self, out: Path):
        self.out, self.path = out, out.with_name(out.name + ".part")

    def __enter__(self) -> BinaryIO:
        self.file = open(self.path, "wb")  # noqa: SIM115 - closed in __exit__
        return self.file

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.file.close()
        try:
            if exc_type is None:
                os.replace(self.path, self.out)
        finally:
            self.path.unlink(missing_ok=True)


def _rest(f: BinaryIO) -> dict[str, str]:
    """The Range header that asks for what ``f`` does not hold yet (none for a fresh download)."""
    return {"Range": f"bytes={f.tell()}-"} if f.tell() else {}


def _whole_already(r: httpx.Response, f: BinaryIO) -> bool:
    """Whether the Range asked only for bytes past the end: the cut came after the last byte."""
    return r.status_code == 416 and f.tell() > 0 and r.headers.get("content-range") == f"bytes */{f.tell()}"


def _take_up(r: httpx.Response, f: BinaryIO) -> None:
    """Where ``r``'s body goes in ``f``: after what it holds where ``r`` is the rest of it (a 206
    from that byte), from the start where it is the whole file (not a 206: a server may ignore a
    Range).  A part from anywhere else would write bytes where they do not belong: refused."""
    if r.status_code != 206:
        f.seek(0)
        f.truncate()
    elif not r.headers.get("content-range", "").startswith(f"bytes {f.tell()}-"):
        raise ApiError("unexpected_range", r.status_code, "Unexpected range",
                       f"asked for the result from byte {f.tell()}, the server sent {r.headers.get('content-range')!r}")


def _submit_body(fields: dict[str, Any], files: dict[str, Path], key: str, stack: ExitStack) -> dict[str, Any]:
    """A ``POST /jobs`` body, made afresh for each attempt: JSON for references alone, else
    multipart with the files opened in ``stack`` (httpx reads them as it sends)."""
    if not files:
        return {"json": fields, "headers": {"Idempotency-Key": key}}
    opened = {n: (p.name, stack.enter_context(open(p, "rb"))) for n, p in files.items()}  # noqa: SIM115
    data = {k: _form_value(v) for k, v in fields.items()}
    return {"files": opened, "data": data, "headers": {"Idempotency-Key": key}}


def _upload_request(path: Path, content_type: str, part_size: int | None) -> dict[str, Any]:
    body = {"filename": path.name, "content_type": content_type, "size": path.stat().st_size}
    return body if part_size is None else {**body, "part_size": part_size}


def _part_range(number: int, part_size: int, size: int) -> tuple[int, int]:
    """(start, length) of part ``number`` (from 1) of a ``size``-byte file."""
    start = (number - 1) * part_size
    return start, min(part_size, size - start)


def _file_body(path: Path, start: int, length: int, stack: ExitStack, *, is_async: bool = False) -> dict[str, Any]:
    """A PUT body of ``length`` bytes of ``path`` from ``start``, read a chunk at a time as it is sent
    (a 2 GiB video is never in memory; the async client held it there, three times over), with
    its Content-Length (an upload URL takes exactly the declared size, and a presigned S3 PUT
    refuses a chunked body).  Opened for each attempt, closed with the attempt's ``stack``."""
    f = stack.enter_context(open(path, "rb"))  # noqa: SIM115
    f.seek(start)
    chunks = _chunks(f, length)
    return {"content": _in_thread(chunks) if is_async else chunks, "headers": {"Content-Length": str(length)}}


def _chunks(f: BinaryIO, length: int) -> Iterator[bytes]:
    while length > 0:
        chunk = f.read(min(CHUNK, length))
        if not chunk:
            raise OSError(f"{f.name} ended {length} bytes short of the size declared for its upload")
        length -= len(chunk)
        yield chunk


async def _in_thread(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """``chunks`` for the async client, each read off the event loop."""
    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
        yield chunk
