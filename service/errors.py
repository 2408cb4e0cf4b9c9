"""One exception hierarchy.  Each error carries a stable machine-readable ``code`` and the HTTP
status the API answers with; the CLI prints ``code: message`` and the API maps it to RFC 9457
problem+json in one handler.  Codes are part of the public contract: never rename one.
"""

from __future__ import annotations

import errno


class BackdropError(Exception):
    code = "internal_error"
    status = 500
    title = "Internal error"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


# --- input media -------------------------------------------------------------------------------
class InputError(BackdropError):
    """Something wrong with what the caller sent."""

    code = "invalid_input"
    status = 422
    title = "Invalid input"


class EmptyFile(InputError):
    code = "empty_file"
    title = "Empty file"


class NotAVideo(InputError):
    code = "not_a_video"
    status = 415
    title = "Not a video"


class NoVideoStream(InputError):
    code = "no_video_stream"
    status = 415
    title = "No video stream"


class CorruptVideo(InputError):
    code = "corrupt_video"
    title = "Corrupt or truncated video"


class UnsupportedCodec(InputError):
    code = "unsupported_codec"
    status = 415
    title = "Unsupported codec"


class VideoTooLarge(InputError):
    """A limit on duration, resolution or frame count is broken."""

    code = "video_too_large"
    status = 413
    title = "Video exceeds limits"


class UploadTooLarge(InputError):
    code = "upload_too_large"
    status = 413
    title = "Upload too large"


class InvalidBackground(InputError):
    code = "invalid_background"
    title = "Invalid background"


class UnsupportedBackground(InvalidBackground):
    """Not an image or video type accepted as a background (SVG, text, TIFF, animated WebP, ...)."""

    code = "unsupported_background"
    status = 415
    title = "Unsupported background type"


class CorruptBackground(InvalidBackground):
    """A background image or video whose data is cut short or malformed."""

    code = "corrupt_background"
    title = "Corrupt or truncated background"


class BackgroundTooLarge(InvalidBackground):
    """A background past its limits: pixels of a still image, frame size or frames × pixels of an
    animated one, the video limits for a background video."""

    code = "background_too_large"
    status = 413
    title = "Background exceeds limits"


class InvalidFrame(InputError):
    """A preview frame that is not a single PNG or JPEG picture within the video limits."""

    code = "invalid_frame"
    title = "Invalid preview frame"


class InvalidColor(InputError):
    code = "invalid_color"
    title = "Invalid colour"


class InvalidParameter(InputError):
    code = "invalid_parameter"
    title = "Invalid parameter"


class UnknownModel(InputError):
    code = "unknown_model"
    title = "Unknown model"


class IncompatibleOptions(InputError):
    """Options that are valid one by one but not together (e.g. harmonize with webm output)."""

    code = "incompatible_options"
    title = "Incompatible options"


class NoPersonAtPoint(InputError):
    """A ``keep_points`` point of the first frame on which no person stands (or outside the frame)."""

    code = "no_person_at_point"
    title = "No person at point"


class NoPersonFound(InputError):
    """``people=largest`` on a first frame where no person was found."""

    code = "no_person_found"
    title = "No person found"


class IdempotencyKeyReused(InputError):
    """An ``Idempotency-Key`` sent again with a different request."""

    code = "idempotency_key_reused"
    title = "Idempotency key reused"


class InvalidRange(InputError):
    code = "invalid_range"
    status = 400
    title = "Invalid Range header"


class RangeNotSatisfiable(InputError):
    """A ``Range`` past the end of the file (answered with ``Content-Range: bytes */size``)."""

    code = "range_not_satisfiable"
    status = 416
    title = "Range not satisfiable"

    def __init__(self, message: str, *, size: int):
        super().__init__(message)
        self.size = size


# --- runtime -------------------------------------------------------------------------------------
class ModelNotFound(BackdropError):
    """Weights missing on this machine: a deployment problem, not the caller's."""

    code = "model_not_found"
    status = 503
    title = "Model not installed"


class Canceled(BackdropError):
    code = "canceled"
    status = 409
    title = "Canceled"


class JobNotFound(BackdropError):
    code = "job_not_found"
    status = 404
    title = "Job not found"


class PreviewNotFound(BackdropError):
    code = "preview_not_found"
    status = 404
    title = "Preview not found"


class ResultNotReady(BackdropError):
    code = "result_not_ready"
    status = 409
    title = "Result not ready"


class Unauthorized(BackdropError):
    code = "unauthorized"
    status = 401
    title = "Unauthorized"


class OpenModeRefused(BackdropError):
    """Open mode (no API keys) serves loopback clients only."""

    code = "open_mode_loopback_only"
    status = 403
    title = "Forbidden"


class RetryLater(BackdropError):
    """Refused for now, not for good: the answer carries ``Retry-After`` (seconds)."""

    status = 503

    def __init__(self, message: str, *, retry_after_s: int = 5, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class QueueFull(RetryLater):
    code = "queue_full"
    status = 503
    title = "Queue full"


class QuotaExceeded(RetryLater):
    """The caller's tenant already has ``tenant_max_queued`` jobs waiting."""

    code = "quota_exceeded"
    status = 429
    title = "Quota exceeded"


class Busy(RetryLater):
    """This API process already takes ``max_concurrent_uploads`` uploads."""

    code = "busy"
    status = 503
    title = "Busy"


class DependencyUnavailable(RetryLater):
    """Redis, the broker or the object store cannot be reached: nothing the caller did."""

    code = "dependency_unavailable"
    status = 503
    title = "Dependency unavailable"


class NotReady(BackdropError):
    code = "not_ready"
    status = 503
    title = "Service not ready"


class StorageError(BackdropError):
    """Object storage failed; transient ones are retried by the worker."""

    code = "storage_error"
    status = 503
    title = "Storage unavailable"


class CallbackRefused(InputError):
    code = "callback_refused"
    title = "Callback URL refused"


class RequestInvalid(InputError):
    """The request itself is malformed (missing field, wrong type, bad multipart body)."""

    code = "validation_error"
    title = "Request validation failed"


class MalformedRequest(BackdropError):
    """Bytes that are not an HTTP/1.1 request (its request line, a header or its framing, such as a
    ``Content-Length`` that is not a number): the server answers before the app sees anything."""

    code = "malformed_request"
    status = 400
    title = "Malformed request"


class RouteNotFound(BackdropError):
    code = "not_found"
    status = 404
    title = "Not found"


class MethodNotAllowed(BackdropError):
    code = "method_not_allowed"
    status = 405
    title = "Method not allowed"


class IllegalTransition(BackdropError):
    """A job was asked to move to a state it cannot reach from its current one."""

    code = "illegal_transition"
    status = 409
    title = "Illegal job state transition"


class TransientStorageError(StorageError):
    """A storage failure worth retrying (timeouts, throttling, 5xx)."""

    code = "storage_unavailable"


class DiskFull(TransientStorageError):
    """A disk this service writes to is full or over its quota: a job is retried with the other
    transient storage failures (space comes back as results expire and other jobs end), then fails
    with this code; ``backdrop replace`` stops with it."""

    code = "disk_full"
    title = "Out of disk space"


def disk_full(exc: BaseException, where: str) -> DiskFull | None:
    """``exc`` as ``DiskFull`` where it is, or was raised while handling or because of, a write to a
    full disk (ENOSPC, EDQUOT: PyAV's errors and the stores' wrapped ones too), else None."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return DiskFull(f"no space left on the disk {where}")
        seen = seen.__cause__ or seen.__context__
    return None


# --- inputs by URL and direct uploads (issue 17) -------------------------------------------------
class FetchRefused(InputError):
    """A ``video_url``/``background_url`` that may not be fetched: not http(s), credentials in it,
    or a host (or a redirect) on a private, loopback, link-local or metadata address."""

    code = "fetch_refused"
    title = "Input URL refused"


class FetchFailed(InputError):
    """The input URL's server answered with an error status (``upstream_status``) or the transfer broke."""

    code = "fetch_failed"
    status = 502
    title = "Input URL could not be fetched"

    def __init__(self, message: str, *, upstream_status: int | None = None):
        super().__init__(message)
        self.upstream_status = upstream_status


class FetchTooLarge(InputError):
    code = "fetch_too_large"
    status = 413
    title = "Input URL too large"


class FetchTimeout(InputError):
    """Connecting or reading timed out, or the whole transfer passed ``fetch_deadline_s``."""

    code = "fetch_timeout"
    status = 504
    title = "Input URL timed out"


class UploadNotFound(InputError):
    """An upload id that is not the caller's, unknown, expired or already used by a job."""

    code = "upload_not_found"
    title = "Upload not found"


class UploadIncomplete(InputError):
    """An upload whose bytes have not been put yet (or whose multipart upload was not completed)."""

    code = "upload_incomplete"
    status = 409
    title = "Upload incomplete"
