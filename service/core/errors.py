"""One error family for the service; each class carries the gRPC status code name it maps to."""

from __future__ import annotations


class ServiceError(Exception):
    """An error a client may see. ``code`` is a ``grpc.StatusCode`` name; the message names the
    field, the value and the limit. Only the servicer layer turns it into a gRPC status."""

    code: str = "UNKNOWN"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, field={self.field!r})"


class InvalidArgument(ServiceError):
    """The request is malformed or outside a limit."""

    code = "INVALID_ARGUMENT"


class NotFound(ServiceError):
    """No such model or version."""

    code = "NOT_FOUND"


class FailedPrecondition(ServiceError):
    """The request cannot work with this model as it is (e.g. streaming from a model that cannot stream)."""

    code = "FAILED_PRECONDITION"


class ResourceExhausted(ServiceError):
    """A queue or the stream cap is full; retry later."""

    code = "RESOURCE_EXHAUSTED"


class Unavailable(ServiceError):
    """The model is not loaded (yet), or the server is draining."""

    code = "UNAVAILABLE"


class DeadlineExceeded(ServiceError):
    """The request's deadline passed before its work ran or finished."""

    code = "DEADLINE_EXCEEDED"


class Cancelled(ServiceError):
    """The work was cancelled (client went away, or the model was unloaded)."""

    code = "CANCELLED"


class Unauthenticated(ServiceError):
    """Missing or wrong credentials."""

    code = "UNAUTHENTICATED"


class Internal(ServiceError):
    """A server fault; the message is generic, the traceback goes to the log."""

    code = "INTERNAL"
