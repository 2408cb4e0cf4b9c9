"""One exception hierarchy.  Each error carries a stable machine-readable ``code`` and the HTTP
status the API answers with; the CLI prints ``code: message`` and the API maps it to RFC 9457
problem+json in one handler.  Codes are part of the public contract: never rename one.
"""

from __future__ import annotations


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


class InvalidColor(InputError):
    code = "invalid_color"
    title = "Invalid colour"


class InvalidParameter(InputError):
    code = "invalid_parameter"
    title = "Invalid parameter"


class UnknownModel(InputError):
    code = "unknown_model"
    title = "Unknown model"


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


class QueueFull(BackdropError):
    code = "queue_full"
    status = 503
    title = "Queue full"


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
