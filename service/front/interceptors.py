"""The gRPC interceptor that records every registered RPC into ``Metrics``: go-grpc-prometheus
series, requests in flight, and each request's duration, code, model and reason."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc

from service.core.observe import begin_request

from .metrics import Metrics, RpcSeries

_MAX_WRAPPED = 256  # methods whose wrapped handler is kept (only registered methods get here)


def split_method(full_method: str | bytes) -> tuple[str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method')."""
    if isinstance(full_method, bytes):
        full_method = full_method.decode()
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service or "unknown", method or "unknown"


def final_code(context: Any, error: BaseException | None) -> grpc.StatusCode:
    """The status an aio handler ends with, given how it ended (``error`` None = returned).

    A handler that returned sends the code it set (OK if none); one that raised sends the code
    set by ``context.abort``/``set_code``, else UNKNOWN; a cancelled one was cut off by the
    client (CANCELLED) or by its deadline (DEADLINE_EXCEEDED, no time remaining).
    """
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
    code = context.code()
    if error is None:
        return grpc.StatusCode.OK if code is None else code
    return grpc.StatusCode.UNKNOWN if code in (None, grpc.StatusCode.OK) else code


class _Rpc:
    """Bookkeeping of one intercepted RPC."""

    def __init__(self, metrics: Metrics, series: RpcSeries, method: str):
        self.m = metrics
        self.series = series
        self.method = method
        self.labels = begin_request()
        self.start = time.perf_counter()
        series.started.inc()
        series.in_flight.inc()

    def received(self) -> None:
        self.series.received.inc()

    def sent(self) -> None:
        self.series.sent.inc()

    def finish(self, context: Any, error: BaseException | None) -> None:
        seconds = time.perf_counter() - self.start
        code = final_code(context, error).name
        series = self.series
        series.handled(code).inc()
        series.handling.observe(seconds)
        series.in_flight.dec()
        lb = self.labels
        self.m.observe_request(self.method, lb.model, lb.version, code, seconds, lb.reason, lb.for_model)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Records go-grpc-prometheus metrics and request metrics for every registered RPC.

    Put it first in ``grpc.aio.server(interceptors=[...])`` so it wraps the error-mapping layer
    and sees the final status code. Unknown methods (handler None) are not recorded, so clients
    cannot invent label values.
    """

    def __init__(self, metrics: Metrics):
        self._m = metrics
        # The wrapped handler of each method, made once: the next layer hands back the same
        # handler object for a method every time (a new one, e.g. a refusal, is wrapped anew).
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        known = self._wrapped.get(handler_call_details.method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(handler_call_details.method, handler)
        if len(self._wrapped) < _MAX_WRAPPED:
            self._wrapped[handler_call_details.method] = (handler, wrapped)
        return wrapped

    def _wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        service, method = split_method(full_method)
        codec = dict(request_deserializer=handler.request_deserializer,
                     response_serializer=handler.response_serializer)
        m = self._m
        if handler.unary_unary is not None:
            fn = _wrap_unary(m, ("unary", service, method), handler.unary_unary, False)
            return grpc.unary_unary_rpc_method_handler(fn, **codec)
        if handler.unary_stream is not None:
            fn = _wrap_streaming(m, ("server_stream", service, method), handler.unary_stream, False)
            return grpc.unary_stream_rpc_method_handler(fn, **codec)
        if handler.stream_unary is not None:
            fn = _wrap_unary(m, ("client_stream", service, method), handler.stream_unary, True)
            return grpc.stream_unary_rpc_method_handler(fn, **codec)
        fn = _wrap_streaming(m, ("bidi_stream", service, method), handler.stream_stream, True)
        return grpc.stream_stream_rpc_method_handler(fn, **codec)


def _count_requests(rpc: _Rpc, requests: Any) -> Any:
    """Wrap a request iterator (async or sync) so each message read counts as received."""
    if hasattr(requests, "__aiter__"):
        async def agen() -> AsyncIterator[Any]:
            async for item in requests:
                rpc.received()
                yield item
        return agen()

    def gen() -> Iterator[Any]:
        for item in requests:
            rpc.received()
            yield item
    return gen()


def _start(m: Metrics, key: tuple[str, str, str], request: Any, streaming_in: bool) -> tuple[_Rpc, Any]:
    rpc = _Rpc(m, m.rpc_series(key), key[2])
    if streaming_in:
        return rpc, _count_requests(rpc, request)
    rpc.received()
    return rpc, request


def _wrap_unary(m: Metrics, key: tuple[str, str, str], inner: Callable, streaming_in: bool) -> Callable:
    """Wrap a handler with one response (unary or client-streaming), keeping it async or sync."""
    if inspect.iscoroutinefunction(inner):
        async def behavior(request: Any, context: Any) -> Any:
            rpc, request = _start(m, key, request, streaming_in)
            try:
                response = await inner(request, context)
            except BaseException as error:
                rpc.finish(context, error)
                raise
            rpc.sent()
            rpc.finish(context, None)
            return response
        return behavior

    def sync_behavior(request: Any, context: Any) -> Any:
        rpc, request = _start(m, key, request, streaming_in)
        try:
            response = inner(request, context)
        except BaseException as error:
            rpc.finish(context, error)
            raise
        rpc.sent()
        rpc.finish(context, None)
        return response
    return sync_behavior


def _wrap_streaming(m: Metrics, key: tuple[str, str, str], inner: Callable, streaming_in: bool) -> Callable:
    """Wrap a handler with a response stream, keeping its kind (async generator, coroutine
    writing with ``context.write`` -- whose messages are not counted -- or sync generator)."""
    if inspect.isasyncgenfunction(inner):
        async def agen_behavior(request: Any, context: Any) -> AsyncIterator[Any]:
            rpc, request = _start(m, key, request, streaming_in)
            try:
                async for response in inner(request, context):
                    rpc.sent()
                    yield response
            except BaseException as error:
                rpc.finish(context, error)
                raise
            rpc.finish(context, None)
        return agen_behavior

    if inspect.iscoroutinefunction(inner):
        async def writer_behavior(request: Any, context: Any) -> None:
            rpc, request = _start(m, key, request, streaming_in)
            try:
                await inner(request, context)
            except BaseException as error:
                rpc.finish(context, error)
                raise
            rpc.finish(context, None)
        return writer_behavior

    def gen_behavior(request: Any, context: Any) -> Iterator[Any]:
        rpc, request = _start(m, key, request, streaming_in)
        try:
            for response in inner(request, context):
                rpc.sent()
                yield response
        except BaseException as error:
            rpc.finish(context, error)
            raise
        rpc.finish(context, None)
    return gen_behavior
