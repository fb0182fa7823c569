"""The one place a ServiceError becomes a gRPC status: codes, clipped messages, rich details
(``google.rpc.BadRequest``), a generic INTERNAL for anything else, throttled warnings."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from service.core.errors import InvalidArgument, ServiceError
from service.core.observe import label_request

log = logging.getLogger(__name__)


class ThrottledLog:
    """One WARNING per (method, code) per ``every_s`` seconds, saying how many were suppressed
    since: a flood of refused or invalid requests (overload, a misbehaving client) must not turn
    into a flood of log lines that costs the server the CPU it is short of. Metrics count them all."""

    def __init__(self, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.every_s = every_s
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def warning(self, method: str, code: str, message: str) -> None:
        key, now = (method, code), self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        more = f" (and {suppressed} more in the last {now - last:.0f} s)" if suppressed and last is not None else ""
        log.warning("%s -> %s: %s%s", method, code, message, more)


_client_errors = ThrottledLog()

INTERNAL_MESSAGE = "internal error; the server log has the details"
# Status messages travel in the trailers, twice (grpc-message, percent-encoded, and the rich
# status, base64): past ~8 KiB of metadata clients drop the call as RESOURCE_EXHAUSTED "Stream
# removed" instead of seeing the real status, so a client-supplied value echoed in an error (a
# 1 MB model name) is cut to keep every message within this many UTF-8 bytes.
MAX_MESSAGE_BYTES = 512
_Handler = TypeVar("_Handler", bound=Callable[..., Awaitable[Any]])


# --- errors: the one place a ServiceError becomes a gRPC status -------------------------------


def clip(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """``message`` cut in the middle to at most ``limit`` UTF-8 bytes: the start (the field) and
    the end (the rule or limit) stay."""
    data = message.encode("utf-8")
    if len(data) <= limit:
        return message
    keep = (limit - 48) // 2
    head = data[:keep].decode("utf-8", "ignore")
    tail = data[len(data) - keep :].decode("utf-8", "ignore")
    return f"{head}...[{len(message) - len(head) - len(tail)} characters cut]...{tail}"


def status_for(err: ServiceError) -> tuple[grpc.StatusCode, str, status_pb2.Status]:
    """The gRPC code, details and rich ``google.rpc.Status`` for ``err``.

    INVALID_ARGUMENT with a field carries a ``google.rpc.BadRequest`` naming it. The message is
    clipped to MAX_MESSAGE_BYTES.
    """
    try:
        code = grpc.StatusCode[err.code]
    except KeyError:
        log.error("ServiceError %s has unknown code %r; sending INTERNAL", type(err).__name__, err.code)
        code = grpc.StatusCode.INTERNAL
    message = clip(err.message)
    rich = status_pb2.Status(code=code.value[0], message=message)
    field = err.field
    if code is grpc.StatusCode.INVALID_ARGUMENT and field:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[error_details_pb2.BadRequest.FieldViolation(field=field, description=message)]
            )
        )
        rich.details.append(detail)
    return code, message, rich


class UndecodableRequest:
    """Stands in for a request whose bytes do not parse as its message type (see add_servicers);
    handle_errors answers it with INVALID_ARGUMENT."""

    def __init__(self, type_name: str, reason: str) -> None:
        self.message = f"request is not a valid {type_name} message: {reason}"


def request_decoder(message_type: Any) -> Callable[[bytes], Any]:
    """A request deserializer that returns an UndecodableRequest instead of raising: grpc.aio would
    answer a DecodeError with UNKNOWN "Unexpected <class '...DecodeError'>: ...", before any
    interceptor (so metrics never saw the call)."""
    type_name = message_type.DESCRIPTOR.full_name
    prefix = f"Error parsing message with type '{type_name}': "

    def decode(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError as err:
            return UndecodableRequest(type_name, str(err).removeprefix(prefix) or "it does not parse")

    return decode


async def abort_with(context: grpc.aio.ServicerContext, err: ServiceError, method: str) -> None:
    """End the RPC with ``err``'s status (client errors logged at WARNING, throttled). Raises AbortError."""
    code, message, rich = status_for(err)
    _client_errors.warning(method, code.name, message)
    await context.abort_with_status(rpc_status.to_status(rich))


def handle_errors(method: _Handler) -> _Handler:
    """Decorate a servicer method: ServiceError -> its status; anything else -> generic INTERNAL.

    Cancellation (asyncio.CancelledError) and aborts pass through untouched. A request that did not
    parse (UndecodableRequest) is INVALID_ARGUMENT.
    """

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        # Metrics label the RPC with what it named until the engine resolves the version that answers.
        named = getattr(request, "model", getattr(request, "name", None))
        label_request(model=named or "", version=getattr(request, "version", "") or "", for_model=named is not None)
        try:
            if isinstance(request, UndecodableRequest):
                raise InvalidArgument(request.message)
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except ServiceError as err:
            await abort_with(context, err, method.__qualname__)
        except Exception:
            log.exception("%s failed", method.__qualname__)
            rich = status_pb2.Status(code=code_pb2.INTERNAL, message=INTERNAL_MESSAGE)
            await context.abort_with_status(rpc_status.to_status(rich))

    return wrapper  # type: ignore[return-value]
