"""Container health probe: exit 0 when the gRPC health service answers SERVING, 1 otherwise.

Health checking needs no bearer token. When the server speaks TLS, pass the CA that signed its
certificate (--tls-ca / SEQSERVE_TLS_CA); under mutual TLS also a client certificate and key
(--tls-cert, --tls-key / SEQSERVE_TLS_CLIENT_CERT, SEQSERVE_TLS_CLIENT_KEY). The certificate
usually names the service, not 127.0.0.1: --tls-server-name / SEQSERVE_TLS_SERVER_NAME says
which name to expect.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def channel(address: str, ca: str | None = None, cert: str | None = None, key: str | None = None,
            server_name: str | None = None) -> grpc.Channel:
    """A plaintext channel, or a TLS one when ``ca`` (or a client ``cert`` and ``key``) is given."""
    if not (ca or cert or key):
        return grpc.insecure_channel(address)
    if bool(cert) != bool(key):
        raise ValueError("--tls-cert and --tls-key go together")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes() if ca else None,
        private_key=Path(key).read_bytes() if key else None,
        certificate_chain=Path(cert).read_bytes() if cert else None,
    )
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(address, credentials, options=options)


def check(address: str, service: str = "", timeout_s: float = 2.0, **tls: str | None) -> bool:
    """True when ``grpc.health.v1.Health/Check`` at ``address`` reports ``service`` SERVING.

    ``tls`` takes ``ca``, ``cert``, ``key`` and ``server_name`` (see ``channel``).
    """
    with channel(address, **tls) as chan:
        try:
            reply = health_pb2_grpc.HealthStub(chan).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as err:
            print(f"health check of {address} failed: {err.code().name}", file=sys.stderr)
            return False
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    if not serving:
        print(f"{address} is {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}",
              file=sys.stderr)
    return serving


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default=f"127.0.0.1:{env.get('SEQSERVE_PORT', '50051')}")
    parser.add_argument("--service", default="", help="service name; '' is the whole server")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds")
    parser.add_argument("--tls-ca", default=env.get("SEQSERVE_TLS_CA") or None, help="PEM CA bundle (TLS)")
    parser.add_argument("--tls-cert", default=env.get("SEQSERVE_TLS_CLIENT_CERT") or None,
                        help="PEM client certificate (mutual TLS)")
    parser.add_argument("--tls-key", default=env.get("SEQSERVE_TLS_CLIENT_KEY") or None,
                        help="PEM key of --tls-cert")
    parser.add_argument("--tls-server-name", default=env.get("SEQSERVE_TLS_SERVER_NAME") or None,
                        help="name the server certificate carries, if not the address's host")
    args = parser.parse_args(argv)
    try:
        ok = check(args.address, args.service, args.timeout, ca=args.tls_ca, cert=args.tls_cert,
                   key=args.tls_key, server_name=args.tls_server_name)
    except (OSError, ValueError) as err:
        print(f"health check of {args.address} cannot start: {err}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
