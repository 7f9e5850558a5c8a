"""Client-visible failures, one exception type per status, mapped to both servers in one table.

A pipeline raises these for one request; the server adapters turn them into that request's response
(TorchServe: an HTTP status; Triton: a TritonError code) without touching the other requests of the batch.
Any other exception is a server fault and is reported as ``InternalError`` with a generic message, so
internals never leak to clients.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base of every error a client may see. ``http_status`` and ``triton_code`` are the one mapping."""

    http_status = 500
    triton_code = "INTERNAL"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict:
        return {"code": self.http_status, "type": type(self).__name__, "message": self.message}


class InvalidInput(ServingError):
    """The request is malformed or a value in it is out of the model's domain."""

    http_status = 400
    triton_code = "INVALID_ARG"


class PayloadTooLarge(ServingError):
    """The request holds more rows, pixels or bytes than the model accepts."""

    http_status = 413
    # Triton has no "too large" code; INVALID_ARG is still a 400-class answer.
    triton_code = "INVALID_ARG"


class Overloaded(ServingError):
    """The model has more work queued than it can start in time: try again after ``retry_after_s`` seconds."""

    http_status = 429
    triton_code = "UNAVAILABLE"  # Triton has no "too many requests"; the message names the wait
    code = "overloaded"  # the OpenAI error body's code

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InternalError(ServingError):
    """The server failed on a valid request (a bug or a resource fault); the message stays generic."""

    http_status = 500
    triton_code = "INTERNAL"


def as_serving_error(exc: BaseException) -> ServingError:
    """Return ``exc`` if it is client-visible already, else a generic ``InternalError``."""
    if isinstance(exc, ServingError):
        return exc
    return InternalError(f"internal error while serving the request ({type(exc).__name__})")
