"""Transport security and authentication for the gRPC port: TLS / mutual TLS credentials and a
bearer-token interceptor.

How to wire it (``create_server`` does this)::

    creds = server_credentials(config)            # None = plaintext
    auth = auth_interceptor(config)               # None = no token configured
    server = grpc.aio.server(interceptors=[MetricsInterceptor(metrics), auth, ...])  # metrics FIRST,
    server.add_secure_port(address, creds)        # so it records UNAUTHENTICATED too

What stays open without a token: ``grpc.health.v1.Health`` (Check and Watch), for load balancers,
container probes and kubelets. Everything else needs ``authorization: Bearer <token>`` metadata,
server reflection included: it discloses the whole API surface and no probe needs it
(``grpcurl -H 'authorization: Bearer ...'`` passes the header). Unknown methods stay UNIMPLEMENTED.

Tokens are compared as SHA-256 digests with ``hmac.compare_digest`` against every accepted token,
so neither a token's content nor its length, nor which of several tokens matched, shows in the
timing; the interceptor keeps only the digests. Tokens are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import grpc

from service.core.config import ServeConfig, read_config_file
from service.core.errors import Unauthenticated
from service.front.interceptors import split_method
from service.front.status import abort_with

log = logging.getLogger(__name__)

AUTHORIZATION = "authorization"  # gRPC metadata keys are lower case
BEARER = "bearer"  # the scheme, compared case-insensitively (RFC 7235)
# Services callable without a token: health checking stays open for probes and load balancers.
OPEN_SERVICES = ("grpc.health.v1.Health",)
MISSING_TOKEN = "missing bearer token: send metadata 'authorization: Bearer <token>'"
MALFORMED_TOKEN = "malformed authorization metadata: expected 'Bearer <token>'"
WRONG_TOKEN = "invalid bearer token"


def server_credentials(config: ServeConfig) -> grpc.ServerCredentials | None:
    """TLS credentials for the gRPC port, or None when ``config.tls_cert`` is empty (plaintext).

    With ``config.tls_client_ca`` the server requires and verifies client certificates (mutual
    TLS). Raises ValueError naming the field and path of a file that is missing, unreadable, not
    PEM or not parseable, of a key that does not match the certificate, or when only one of
    tls_cert / tls_key is set.
    """
    config.validate_security()
    if not config.tls_cert:
        return None
    chain = read_config_file("tls_cert", config.tls_cert)
    key = read_config_file("tls_key", config.tls_key)
    client_ca = read_config_file("tls_client_ca", config.tls_client_ca) if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def auth_interceptor(config: ServeConfig) -> BearerTokenInterceptor | None:
    """The bearer-token interceptor for ``config``'s tokens, or None when none is configured.

    Raises ValueError (naming the file, never a token) when the token source is unusable.
    """
    tokens = config.auth_tokens()
    return BearerTokenInterceptor(tokens) if tokens else None


def describe(config: ServeConfig) -> str:
    """One log-safe line about the port's security, e.g. "mutual TLS, bearer-token auth"."""
    transport = "plaintext" if not config.tls_cert else "mutual TLS" if config.tls_client_ca else "TLS"
    tokens = config.auth_tokens()
    auth = f"bearer-token auth ({len(tokens)} accepted token{'s' if len(tokens) != 1 else ''})" if tokens else "no auth"
    return f"{transport}, {auth}"


def _digest(token: str | bytes) -> bytes:
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).digest()


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Ends every RPC without a valid ``authorization: Bearer <token>`` with UNAUTHENTICATED.

    Services in ``open_services`` (default: grpc.health.v1.Health) pass without a token. A denied
    call never reaches its servicer: the interceptor returns a handler of the same kind (unary or
    streaming, same codecs) that aborts, so interceptors before it -- metrics -- record the status.
    """

    def __init__(self, tokens: Iterable[str], *, open_services: Sequence[str] = OPEN_SERVICES) -> None:
        self._digests = tuple(_digest(t) for t in tokens)
        if not self._digests:
            raise ValueError("BearerTokenInterceptor needs at least one token")
        self._open = frozenset(open_services)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self._digests)} tokens, open_services={sorted(self._open)})"

    def check(self, metadata: Iterable[Any] | None) -> str | None:
        """None when ``metadata`` carries an accepted token, else the UNAUTHENTICATED message."""
        value = next((v for k, v in metadata or () if k == AUTHORIZATION), None)
        if value is None:
            return MISSING_TOKEN
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != BEARER or not token:
            return MALFORMED_TOKEN
        given = _digest(token)
        accepted = False
        for digest in self._digests:  # no early exit: which token matched does not show in the timing
            accepted |= hmac.compare_digest(given, digest)
        return None if accepted else WRONG_TOKEN

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or split_method(method)[0] in self._open:
            return handler
        problem = self.check(handler_call_details.invocation_metadata)
        if problem is None:
            return handler
        log.debug("denied %s: %s", method, problem)
        return _denying(handler, problem)


def _denying(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler shaped like ``handler`` (same arity and codecs) that aborts with UNAUTHENTICATED."""

    async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
        await abort_with(context, Unauthenticated(message), "authentication")

    codec = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(deny, **codec)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(deny, **codec)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(deny, **codec)
    return grpc.stream_stream_rpc_method_handler(deny, **codec)
