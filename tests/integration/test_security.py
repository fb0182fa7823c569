"""TLS, mutual TLS and bearer tokens on a real server: channels, tokens, health, metrics, client, CLI.

The certificates are made here with the ``openssl`` command line (EC P-256, valid two days): a CA
that signs the server's certificate (for the name ``seqserve.test`` only, so clients must override
the target name) and a client certificate, plus an unrelated CA with a client certificate of its own.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from service.client import ClientError, SeqserveClient, cli
from service.core.config import ServeConfig
from service.front.metrics import Metrics
from service.front.security import MALFORMED_TOKEN, MISSING_TOKEN, WRONG_TOKEN
from service.front.server import create_server
from service.v1 import generate_pb2, generate_pb2_grpc, models_pb2, models_pb2_grpc
from service.v1 import open_inference_grpc_pb2 as oip_pb2
from service.v1 import open_inference_grpc_pb2_grpc as oip_grpc
from tests.integration.harness import TEST_CONFIG, rpc_error, serving

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command line"),
]

REPO = Path(__file__).resolve().parents[2]
SERVER_NAME = "seqserve.test"  # the only name in the server certificate
TOKEN = "s3cret-Token_for.tests~42"
NEXT_TOKEN = "next-token-during-rotation"
SERVING = health_pb2.HealthCheckResponse.SERVING
WITH_TOKEN = (("authorization", f"Bearer {TOKEN}"),)


# -- certificates --------------------------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path
    token_file: Path


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"openssl {' '.join(args)}: {proc.stderr}"


def _make_ca(directory: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )


def _make_leaf(directory: Path, name: str, ca: str, extensions: str) -> None:
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory,
    )
    (directory / f"{name}.ext").write_text(extensions)
    serial = "0x" + secrets.token_hex(8)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-set_serial", serial,
        "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext", cwd=directory,
    )


def make_pki(directory: Path) -> Pki:
    """A CA with a server and a client certificate, another CA with a client certificate, and a
    token file (a comment, the token, and the next token of a rotation)."""
    _make_ca(directory, "ca")
    _make_ca(directory, "other-ca")
    _make_leaf(directory, "server", "ca",
               f"subjectAltName=DNS:{SERVER_NAME}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
    client = "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"
    _make_leaf(directory, "client", "ca", client)
    _make_leaf(directory, "other-client", "other-ca", client)
    token_file = directory / "tokens"
    token_file.write_text(f"# accepted bearer tokens\n{TOKEN}\n\n{NEXT_TOKEN}\n")
    d = directory
    return Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key",
               d / "other-ca.pem", d / "other-client.pem", d / "other-client.key", token_file)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def secure_channel(port: int, ca: Path, cert: Path | None = None, key: Path | None = None,
                   server_name: str | None = SERVER_NAME) -> grpc.aio.Channel:
    """An aio TLS channel to 127.0.0.1:port trusting ``ca``, presenting ``cert``/``key`` if given."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=options)


async def health_check(channel: grpc.aio.Channel, service: str = "") -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return reply.status


# -- servers: TLS + token (engine running), mutual TLS (engine not started) ------------------------
# (The harness's own plaintext channel, ``served.channel``, cannot talk to these ports.)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tls_served(module_models, pki):
    metrics = Metrics(CollectorRegistry())
    async with serving(module_models, metrics=metrics, tls_cert=str(pki.server_cert), tls_key=str(pki.server_key),
                       auth_token_file=str(pki.token_file)) as s:
        yield s


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tls(tls_served, pki):
    """A TLS channel to ``tls_served`` that trusts its CA and sends no token by itself."""
    async with secure_channel(tls_served.port, pki.ca) as channel:
        yield channel


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mtls_served(module_models, pki):
    async with serving(module_models, start_engine=False, tls_cert=str(pki.server_cert),
                       tls_key=str(pki.server_key), tls_client_ca=str(pki.ca)) as s:
        yield s


# -- TLS -----------------------------------------------------------------------------------------


async def test_tls_with_the_right_ca_succeeds(tls):
    assert await health_check(tls) == SERVING


async def test_tls_fails_with_a_wrong_ca_without_tls_or_with_the_wrong_name(tls_served, pki):
    attempts = {
        "wrong CA": secure_channel(tls_served.port, pki.other_ca),
        "name mismatch": secure_channel(tls_served.port, pki.ca, server_name=None),  # cert names seqserve.test
        "plaintext": grpc.aio.insecure_channel(tls_served.address),
    }
    for what, channel in attempts.items():
        async with channel:
            err = await rpc_error(health_check(channel))
            assert err.code() == grpc.StatusCode.UNAVAILABLE, what


# -- mutual TLS ----------------------------------------------------------------------------------


async def test_mtls_rejects_clients_without_a_certificate_or_with_a_foreign_one(mtls_served, pki):
    attempts = {
        "no client certificate": secure_channel(mtls_served.port, pki.ca),
        "certificate of another CA": secure_channel(mtls_served.port, pki.ca, pki.other_client_cert,
                                                    pki.other_client_key),
    }
    for what, channel in attempts.items():
        async with channel:
            err = await rpc_error(health_check(channel))
            assert err.code() == grpc.StatusCode.UNAVAILABLE, what


async def test_mtls_accepts_a_certificate_of_the_client_ca(mtls_served, pki):
    async with secure_channel(mtls_served.port, pki.ca, pki.client_cert, pki.client_key) as channel:
        await health_check(channel)  # NOT_SERVING (no engine), but the call went through
        reply = await models_pb2_grpc.ModelsStub(channel).ListModels(models_pb2.ListModelsRequest(), timeout=10)
        assert list(reply.models) == []  # no token configured on this server, nothing loaded


# -- bearer token --------------------------------------------------------------------------------

DENIED = [
    pytest.param(None, MISSING_TOKEN, id="missing"),
    pytest.param((("authorization", "Bearer not-the-token"),), WRONG_TOKEN, id="wrong"),
    pytest.param((("authorization", f"Bearer {TOKEN}x"),), WRONG_TOKEN, id="longer"),
    pytest.param((("authorization", TOKEN),), MALFORMED_TOKEN, id="no-scheme"),
    pytest.param((("authorization", f"Basic {TOKEN}"),), MALFORMED_TOKEN, id="basic"),
]


@pytest.mark.parametrize("metadata, message", DENIED)
async def test_unary_rpcs_without_the_right_token_are_unauthenticated(tls, metadata, message):
    calls = [
        models_pb2_grpc.ModelsStub(tls).ListModels(models_pb2.ListModelsRequest(), metadata=metadata),
        generate_pb2_grpc.GeneratorStub(tls).Generate(
            generate_pb2.GenerateRequest(prompt="All:", max_tokens=2), metadata=metadata),
        # the Open Inference Protocol on the same port asks for the same token
        oip_grpc.GRPCInferenceServiceStub(tls).ServerReady(oip_pb2.ServerReadyRequest(), metadata=metadata),
        oip_grpc.GRPCInferenceServiceStub(tls).ModelInfer(oip_pb2.ModelInferRequest(model_name="tiny-generate"),
                                                          metadata=metadata),
    ]
    for call in calls:
        err = await rpc_error(call)
        assert (err.code(), err.details()) == (grpc.StatusCode.UNAUTHENTICATED, message)


@pytest.mark.parametrize("metadata, message", DENIED)
async def test_streams_without_the_right_token_are_unauthenticated(tls, metadata, message):
    call = generate_pb2_grpc.GeneratorStub(tls).GenerateStream(
        generate_pb2.GenerateRequest(prompt="All:", max_tokens=4), metadata=metadata)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            raise AssertionError("a chunk arrived without a valid token")
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, message)


@pytest.mark.parametrize("token", [TOKEN, NEXT_TOKEN], ids=["token", "next-token"])
async def test_the_right_token_passes_unary_and_streaming(tls, token):
    metadata = (("authorization", f"bearer {token}"),)  # the scheme is case-insensitive
    generator = generate_pb2_grpc.GeneratorStub(tls)
    request = generate_pb2.GenerateRequest(prompt="All:", max_tokens=6, seed=3, temperature=0.8)
    reply = await generator.Generate(request, metadata=metadata, timeout=30)
    chunks = [c async for c in generator.GenerateStream(request, metadata=metadata, timeout=30)]
    assert reply.completion_tokens == chunks[-1].completion_tokens > 0
    assert "".join(c.text for c in chunks) == reply.text
    models = await models_pb2_grpc.ModelsStub(tls).ListModels(
        models_pb2.ListModelsRequest(), metadata=metadata, timeout=10)
    assert "tiny-generate" in {m.name for m in models.models}
    ready = await oip_grpc.GRPCInferenceServiceStub(tls).ServerReady(oip_pb2.ServerReadyRequest(), metadata=metadata)
    assert ready.ready


async def test_health_needs_no_token_but_reflection_does(tls):
    for service in ("", "seqserve.v1.Generator"):
        assert await health_check(tls, service) == SERVING
    watch = health_pb2_grpc.HealthStub(tls).Watch(health_pb2.HealthCheckRequest(), timeout=10)
    assert (await watch.read()).status == SERVING  # the server-streaming health RPC is open too
    watch.cancel()

    reflection = reflection_pb2_grpc.ServerReflectionStub(tls)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    denied = reflection.ServerReflectionInfo(iter([request]), timeout=10)  # a bidi stream
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in denied:
            pass
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    replies = [r async for r in reflection.ServerReflectionInfo(iter([request]), metadata=WITH_TOKEN, timeout=10)]
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"seqserve.v1.Generator", "grpc.health.v1.Health"} <= names


async def test_metrics_record_unauthenticated_calls(tls_served, tls):
    registry = tls_served.metrics.registry

    def handled(method: str, service: str, kind: str, code: str) -> float:
        labels = dict(grpc_code=code, grpc_method=method, grpc_service=service, grpc_type=kind)
        return registry.get_sample_value("grpc_server_handled_total", labels) or 0.0

    unary = ("Generate", "seqserve.v1.Generator", "unary")
    stream = ("GenerateStream", "seqserve.v1.Generator", "server_stream")
    before = [handled(*unary, "UNAUTHENTICATED"), handled(*stream, "UNAUTHENTICATED"), handled(*unary, "OK")]
    before_requests = registry.get_sample_value(
        "seqserve_request_duration_seconds_count",
        dict(method="Generate", model="", version="", code="UNAUTHENTICATED")) or 0.0
    generator = generate_pb2_grpc.GeneratorStub(tls)
    request = generate_pb2.GenerateRequest(prompt="All:", max_tokens=2)
    await rpc_error(generator.Generate(request))
    with pytest.raises(grpc.aio.AioRpcError):
        async for _ in generator.GenerateStream(request):
            pass
    await generator.Generate(request, metadata=WITH_TOKEN, timeout=30)
    after = [handled(*unary, "UNAUTHENTICATED"), handled(*stream, "UNAUTHENTICATED"), handled(*unary, "OK")]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]
    assert registry.get_sample_value(
        "seqserve_request_duration_seconds_count",
        dict(method="Generate", model="", version="", code="UNAUTHENTICATED")) == before_requests + 1


# -- the Python client, the command line and the container probe -----------------------------------


def _client_session(address: str, pki: Pki) -> dict:
    tls = dict(tls_ca=pki.ca, tls_server_name=SERVER_NAME)
    with SeqserveClient(address, timeout=30, token=TOKEN, **tls) as client:
        out = {
            "health": client.health(),
            "models": client.list_models(),
            "generate": client.generate("All:", max_tokens=5, seed=2),
            "stream": list(client.generate_stream("All:", max_tokens=5, seed=2)),
        }
    with SeqserveClient(address, timeout=30, **tls) as anonymous:
        out["anonymous health"] = anonymous.health()
        for what, call in {"anonymous models": anonymous.list_models,
                           "anonymous stream": lambda: list(anonymous.generate_stream("All:", max_tokens=2))}.items():
            try:
                call()
            except ClientError as err:
                out[what] = err
    return out


async def test_client_talks_to_a_tls_and_token_server(tls_served, pki):
    r = await asyncio.to_thread(_client_session, tls_served.address, pki)
    assert r["health"] == r["anonymous health"] == "SERVING"
    assert "tiny-generate" in {m["name"] for m in r["models"]}
    assert r["generate"].completion_tokens == r["stream"][-1].completion_tokens > 0
    assert "".join(c.text for c in r["stream"]) == r["generate"].text
    for what in ("anonymous models", "anonymous stream"):
        assert (r[what].code, r[what].message) == ("UNAUTHENTICATED", MISSING_TOKEN), what


def _mtls_client(address: str, pki: Pki) -> str:
    with SeqserveClient(address, timeout=10, tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key,
                        tls_server_name=SERVER_NAME) as client:
        return client.health()


async def test_client_presents_its_certificate_for_mutual_tls(mtls_served, pki):
    assert await asyncio.to_thread(_mtls_client, mtls_served.address, pki) == "NOT_SERVING"  # engine not started


async def test_client_refuses_a_certificate_without_its_key(pki):
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        SeqserveClient("127.0.0.1:1", tls_ca=pki.ca, tls_cert=pki.client_cert)
    with pytest.raises(ValueError, match="TLS CA '/nonexistent/ca.pem' cannot be read"):
        SeqserveClient("127.0.0.1:1", tls_ca="/nonexistent/ca.pem")


async def run_cli(capsys, *argv: str, environ: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``seqserve ARGV`` in a thread (the server shares this event loop)."""
    capsys.readouterr()
    rc = await asyncio.to_thread(cli.main, list(argv), environ or {})
    out, err = capsys.readouterr()
    return rc, out, err


async def test_cli_health_and_models_over_tls_with_a_token(tls_served, pki, capsys):
    tls = ["--address", tls_served.address, "--tls-ca", str(pki.ca), "--tls-server-name", SERVER_NAME]
    rc, out, _ = await run_cli(capsys, "health", *tls)
    assert (rc, out) == (0, "SERVING\n")  # no token needed
    rc, out, _ = await run_cli(capsys, "models", *tls, "--token-file", str(pki.token_file))
    assert rc == 0 and "tiny-generate" in out
    rc, out, _ = await run_cli(capsys, "models", *tls, environ={"SEQSERVE_TOKEN": NEXT_TOKEN})
    assert rc == 0 and "tiny-generate" in out
    rc, out, _ = await run_cli(capsys, "models", "--address", tls_served.address, "--json", environ={
        "SEQSERVE_TLS_CA": str(pki.ca), "SEQSERVE_TLS_SERVER_NAME": SERVER_NAME,
        "SEQSERVE_TOKEN_FILE": str(pki.token_file)})
    assert rc == 0 and '"tiny-generate"' in out


async def test_cli_reports_authentication_and_tls_failures(tls_served, pki, tmp_path, capsys):
    tls = ["--address", tls_served.address, "--tls-ca", str(pki.ca), "--tls-server-name", SERVER_NAME]
    rc, _, err = await run_cli(capsys, "models", *tls)
    assert (rc, err) == (cli.EXIT_RPC_ERROR, f"error: UNAUTHENTICATED: {MISSING_TOKEN}\n")
    (tmp_path / "wrong").write_text("wrong-token\n")
    rc, _, err = await run_cli(capsys, "models", *tls, "--token-file", str(tmp_path / "wrong"))
    assert (rc, err) == (cli.EXIT_RPC_ERROR, f"error: UNAUTHENTICATED: {WRONG_TOKEN}\n")
    rc, _, err = await run_cli(capsys, "health", "--address", tls_served.address, "--timeout", "5",
                               "--tls-ca", str(pki.other_ca), "--tls-server-name", SERVER_NAME)
    assert rc == cli.EXIT_RPC_ERROR and err.startswith("error: UNAVAILABLE"), err
    rc, _, err = await run_cli(capsys, "models", *tls, "--token-file", str(tmp_path / "missing"))
    assert rc == cli.EXIT_USAGE and "token file" in err and "missing" in err and "cannot be read" in err


async def _probe(*args: str) -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "deploy" / "healthcheck.py"), *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    return await asyncio.wait_for(proc.wait(), 60)


async def test_container_probe_speaks_tls_and_mutual_tls(tls_served, mtls_served, pki):
    name = ["--tls-server-name", SERVER_NAME, "--timeout", "5"]
    assert await _probe("--address", tls_served.address, "--tls-ca", str(pki.ca), *name) == 0
    assert await _probe("--address", tls_served.address, "--timeout", "5") == 1  # plaintext to a TLS port
    assert await _probe("--address", mtls_served.address, "--tls-ca", str(pki.ca), *name,
                        "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key),
                        "--service", "no.such.Service") == 1  # NOT_FOUND: the handshake worked
    assert await _probe("--address", mtls_served.address, "--tls-ca", str(pki.ca), *name) == 1  # no certificate


# -- plaintext with a token, and start-up errors ---------------------------------------------------


async def test_a_token_over_plaintext_works_and_warns_and_is_never_logged(models_dir, caplog):
    caplog.set_level(logging.DEBUG)
    async with serving(models_dir, start_engine=False, auth_token=TOKEN) as s:
        models = models_pb2_grpc.ModelsStub(s.channel)
        await models.ListModels(models_pb2.ListModelsRequest(), metadata=WITH_TOKEN, timeout=10)
        for metadata in (None, (("authorization", "Bearer guess-7781"),)):
            err = await rpc_error(models.ListModels(models_pb2.ListModelsRequest(), metadata=metadata))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert await health_check(s.channel) is not None
    assert "bearer tokens travel in plaintext" in caplog.text
    assert "plaintext, bearer-token auth (1 accepted token)" in caplog.text
    assert "denied /seqserve.v1.Models/ListModels" in caplog.text
    assert TOKEN not in caplog.text and "guess-7781" not in caplog.text


async def test_bad_security_settings_fail_at_start_up(pki, tmp_path):
    cases = {
        "tls_cert and tls_key must be set together": dict(tls_cert=str(pki.server_cert)),
        f"tls_key '{pki.client_key}' is not the unencrypted private key of tls_cert": dict(
            tls_cert=str(pki.server_cert), tls_key=str(pki.client_key)),
        f"tls_client_ca '{tmp_path / 'nope.pem'}' cannot be read": dict(
            tls_cert=str(pki.server_cert), tls_key=str(pki.server_key), tls_client_ca=str(tmp_path / "nope.pem")),
        f"auth_token_file '{tmp_path / 'nope'}' cannot be read": dict(auth_token_file=str(tmp_path / "nope")),
    }
    for message, overrides in cases.items():
        config = ServeConfig(models=tmp_path, **{**TEST_CONFIG, **overrides})
        with pytest.raises(ValueError) as info:
            await create_server(config)
        assert message in str(info.value)


async def test_serve_command_exits_with_a_usage_error_on_bad_tls_settings(pki, models_dir, capsys):
    rc = cli.main(["serve", "--models", str(models_dir), "--port", "0", "--tls-key", str(pki.server_key)], {})
    assert rc == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "tls_cert and tls_key must be set together" in err and str(pki.server_key) in err
