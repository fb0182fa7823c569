"""Security settings without a server: validation, token parsing, the interceptor, and that a
token never reaches repr(), help texts, error messages or the log."""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import subprocess
from collections import namedtuple

import grpc
import pytest

from service.core.config import ServeConfig, add_arguments, config_from_args
from service.front.security import (
    MALFORMED_TOKEN,
    MISSING_TOKEN,
    WRONG_TOKEN,
    BearerTokenInterceptor,
    auth_interceptor,
    describe,
    server_credentials,
)

TOKEN = "unit-S3cret.token~xyz"
# Not parseable certificates: enough for the checks that run before the TLS library parses them.
FAKE_CERT = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
FAKE_KEY = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
Details = namedtuple("Details", "method invocation_metadata")


def _parse(argv: list[str], environ: dict[str, str]) -> ServeConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(argv), environ=environ)


@pytest.fixture
def pem(tmp_path) -> dict[str, str]:
    """Files that look like PEM but do not parse."""
    (tmp_path / "cert.pem").write_text(FAKE_CERT)
    (tmp_path / "key.pem").write_text(FAKE_KEY)
    return {"cert": str(tmp_path / "cert.pem"), "key": str(tmp_path / "key.pem")}


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory) -> dict[str, str]:
    """A real self-signed certificate and its key, made with the openssl command line."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command line")
    out = tmp_path_factory.mktemp("self-signed")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", "key.pem", "-out", "cert.pem", "-days", "2", "-subj", "/CN=localhost"],
        cwd=out, check=True, capture_output=True, timeout=60,
    )
    return {"cert": str(out / "cert.pem"), "key": str(out / "key.pem")}


# -- configuration -------------------------------------------------------------------------------


def test_security_is_off_by_default():
    config = ServeConfig().validate()
    assert config.auth_tokens() == () and server_credentials(config) is None and auth_interceptor(config) is None
    assert describe(config) == "plaintext, no auth"


def test_settings_come_from_flags_and_env_but_the_token_only_from_env(self_signed, tmp_path):
    (tmp_path / "tokens").write_text(TOKEN + "\n")
    cert, key = self_signed["cert"], self_signed["key"]
    cfg = _parse(["--auth-token-file", str(tmp_path / "tokens"), "--tls-key", key],
                 {"SEQSERVE_TLS_CERT": cert, "SEQSERVE_TLS_KEY": "/flag/wins"})
    assert (cfg.tls_cert, cfg.tls_key, cfg.auth_tokens()) == (cert, key, (TOKEN,))
    assert describe(cfg) == "TLS, bearer-token auth (1 accepted token)"
    assert isinstance(server_credentials(cfg), grpc.ServerCredentials)
    assert _parse([], {"SEQSERVE_AUTH_TOKEN": f"  {TOKEN}\n"}).auth_tokens() == (TOKEN,)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    help_text = parser.format_help()
    assert "--tls-client-ca" in help_text and "SEQSERVE_TLS_CLIENT_CA" in help_text and "default unset" in help_text
    assert "SEQSERVE_AUTH_TOKEN" in help_text and "--auth-token " not in help_text  # a flag would show in `ps`



def test_a_token_flag_is_refused_without_echoing_it(capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for argv in (["--auth-token", TOKEN], [f"--auth-token={TOKEN}"]):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "--auth-token is not accepted" in err and "--auth-token-file or env SEQSERVE_AUTH_TOKEN" in err
        assert TOKEN not in err
    assert _parse([], {}).auth_token == ""  # the refusing flag leaves nothing behind


def test_a_token_file_holds_tokens_one_per_line_with_comments(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"# current\n{TOKEN}\n\n  next-token  \n# retired: old-token\n")
    assert ServeConfig(auth_token_file=str(path)).validate().auth_tokens() == (TOKEN, "next-token")


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"tls_cert": "{cert}"},
         "tls_cert and tls_key must be set together: tls_cert '{cert}' is set but tls_key is not"),
        ({"tls_key": "{key}"},
         "tls_cert and tls_key must be set together: tls_key '{key}' is set but tls_cert is not"),
        ({"tls_client_ca": "{cert}"}, "tls_client_ca '{cert}' needs tls_cert and tls_key"),
        ({"tls_cert": "{dir}/missing.pem", "tls_key": "{key}"},
         "tls_cert '{dir}/missing.pem' cannot be read: No such file or directory"),
        ({"tls_cert": "{cert}", "tls_key": "{dir}"}, "tls_key '{dir}' cannot be read"),
        ({"tls_cert": "{key}", "tls_key": "{key}"}, "tls_cert '{key}' holds no PEM certificate"),
        ({"tls_cert": "{cert}", "tls_key": "{cert}"}, "tls_key '{cert}' holds no PEM private key"),
        ({"tls_cert": "{cert}", "tls_key": "{key}"}, "tls_cert '{cert}' holds a malformed certificate"),
        ({"auth_token_file": "{dir}/nope"}, "auth_token_file '{dir}/nope' cannot be read"),
        ({"auth_token_file": "{cert}", "auth_token": TOKEN}, "set either auth_token (SEQSERVE_AUTH_TOKEN) or"),
    ],
)
def test_bad_settings_are_named_clearly(pem, tmp_path, settings, message):
    names = {"cert": pem["cert"], "key": pem["key"], "dir": str(tmp_path)}
    config = ServeConfig(**{k: v.format(**names) for k, v in settings.items()})
    with pytest.raises(ValueError) as info:
        config.validate()
    assert message.format(**names) in str(info.value)
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize("content", ["", "# only a comment\n\n", "   \n"])
def test_a_token_file_without_a_token_is_refused(tmp_path, content):
    (tmp_path / "tokens").write_text(content)
    with pytest.raises(ValueError, match=r"auth_token_file '.*tokens' holds no token"):
        ServeConfig(auth_token_file=str(tmp_path / "tokens")).validate()


@pytest.mark.parametrize("bad", ["two words", "ümlaut", "tab\tinside"])
def test_malformed_tokens_are_refused_without_quoting_them(tmp_path, bad):
    (tmp_path / "tokens").write_text(f"good-token\n{bad}\n")
    for config in (ServeConfig(auth_token_file=str(tmp_path / "tokens")), ServeConfig(auth_token=bad)):
        with pytest.raises(ValueError, match="must be printable ASCII without spaces") as info:
            config.validate()
        assert bad not in str(info.value) and "good-token" not in str(info.value)


def test_the_token_never_shows_in_repr_help_or_the_log(caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    config = ServeConfig(auth_token=TOKEN).validate()
    assert TOKEN not in repr(config) and TOKEN not in str(config) and "auth_token=" not in repr(config)
    interceptor = auth_interceptor(config)
    assert interceptor is not None and TOKEN not in repr(interceptor)
    assert describe(config) == "plaintext, bearer-token auth (1 accepted token)"
    denied = [None, (("authorization", "Bearer guess-1234"),), (("authorization", TOKEN),)]
    for metadata in [*denied, (("authorization", f"Bearer {TOKEN}"),)]:
        asyncio.run(interceptor.intercept_service(_continuation(), Details("/seqserve.v1.Models/ListModels", metadata)))
    assert caplog.text.count("denied /seqserve.v1.Models/ListModels") == len(denied)
    assert TOKEN not in caplog.text and "guess-1234" not in caplog.text


# -- the interceptor -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata, problem",
    [
        (None, MISSING_TOKEN),
        ((), MISSING_TOKEN),
        ((("x-other", TOKEN),), MISSING_TOKEN),
        ((("authorization", ""),), MALFORMED_TOKEN),
        ((("authorization", "Bearer"),), MALFORMED_TOKEN),
        ((("authorization", "Bearer   "),), MALFORMED_TOKEN),
        ((("authorization", f"Basic {TOKEN}"),), MALFORMED_TOKEN),
        ((("authorization", f"Bearer {TOKEN[:-1]}"),), WRONG_TOKEN),
        ((("authorization", f"Bearer {TOKEN}0"),), WRONG_TOKEN),
        ((("authorization", f"Bearer {TOKEN.upper()}"),), WRONG_TOKEN),  # tokens are case-sensitive
        ((("authorization", f"Bearer {TOKEN}"),), None),
        ((("authorization", f"BEARER  {TOKEN} "),), None),  # the scheme is not
        ((("authorization", f"Bearer {TOKEN}".encode()),), None),
        ((("authorization", "Bearer other-token"),), None),
        ((("user-agent", "x"), ("authorization", f"Bearer {TOKEN}")), None),
    ],
)
def test_check(metadata, problem):
    assert BearerTokenInterceptor([TOKEN, "other-token"]).check(metadata) == problem


def test_an_interceptor_needs_a_token():
    with pytest.raises(ValueError, match="at least one token"):
        BearerTokenInterceptor([])


async def _unary(request, context):
    return b"reply"


def _continuation(handler: grpc.RpcMethodHandler | None = None):
    handler = handler or grpc.unary_unary_rpc_method_handler(_unary)

    async def continuation(details):
        return handler

    return continuation


class _Context:
    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort_with_status(self, status: grpc.Status) -> None:
        self.aborted = (status.code, status.details)
        raise grpc.aio.AbortError()


async def _gen(request, context):
    yield b"chunk"


def _deserialize(b: bytes) -> bytes:
    return b


HANDLERS = {
    "unary_unary": grpc.unary_unary_rpc_method_handler(_unary, request_deserializer=_deserialize),
    "unary_stream": grpc.unary_stream_rpc_method_handler(_gen, request_deserializer=_deserialize),
    "stream_unary": grpc.stream_unary_rpc_method_handler(_unary, request_deserializer=_deserialize),
    "stream_stream": grpc.stream_stream_rpc_method_handler(_gen, request_deserializer=_deserialize),
}


@pytest.mark.parametrize("kind", HANDLERS)
async def test_a_denied_call_gets_an_aborting_handler_of_the_same_kind(kind):
    interceptor = BearerTokenInterceptor([TOKEN])
    handler = await interceptor.intercept_service(_continuation(HANDLERS[kind]), Details("/a.B/C", None))
    assert handler is not HANDLERS[kind] and handler.request_deserializer is _deserialize
    assert [k for k in HANDLERS if getattr(handler, k) is not None] == [kind]
    context = _Context()
    with pytest.raises(grpc.aio.AbortError):
        await getattr(handler, kind)(b"request", context)
    assert context.aborted == (grpc.StatusCode.UNAUTHENTICATED, MISSING_TOKEN)


async def test_health_and_unknown_methods_pass_through_untouched():
    interceptor = BearerTokenInterceptor([TOKEN])
    handler = HANDLERS["unary_unary"]
    for method in ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"):
        assert await interceptor.intercept_service(_continuation(handler), Details(method, None)) is handler
    reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    assert await interceptor.intercept_service(_continuation(handler), Details(reflection, None)) is not handler

    async def unknown(details):
        return None

    assert await interceptor.intercept_service(unknown, Details("/a.B/Nope", None)) is None  # -> UNIMPLEMENTED
    accepted = Details("/a.B/C", (("authorization", f"Bearer {TOKEN}"),))
    assert await interceptor.intercept_service(_continuation(handler), accepted) is handler


def test_server_credentials_validate_first(pem, self_signed):
    # The server builds credentials from a config nobody validated (tests, embedding code).
    with pytest.raises(ValueError, match="tls_cert and tls_key must be set together"):
        server_credentials(ServeConfig(tls_cert=self_signed["cert"]))
    with pytest.raises(ValueError, match="holds a malformed certificate"):
        server_credentials(ServeConfig(tls_cert=pem["cert"], tls_key=self_signed["key"]))
    with pytest.raises(ValueError, match="is not the unencrypted private key"):
        server_credentials(ServeConfig(tls_cert=self_signed["cert"], tls_key=pem["key"]))
    mutual = ServeConfig(tls_cert=self_signed["cert"], tls_key=self_signed["key"], tls_client_ca=self_signed["cert"])
    assert isinstance(server_credentials(mutual), grpc.ServerCredentials)
    assert describe(mutual) == "mutual TLS, no auth"



# -- the client command line ----------------------------------------------------------------------


def test_client_flags_default_to_their_environment_variables(self_signed):
    from service.client import cli

    env = {"SEQSERVE_TLS_CA": "/ca.pem", "SEQSERVE_TLS_CLIENT_CERT": "/c.pem", "SEQSERVE_TLS_CLIENT_KEY": "/c.key",
           "SEQSERVE_TLS_SERVER_NAME": "seqserve.test", "SEQSERVE_TOKEN_FILE": "/token",
           "SEQSERVE_TLS_CERT": "/server.pem", "SEQSERVE_TLS_KEY": "/server.key"}  # the server's: ignored
    args = cli.build_parser(env).parse_args(["health"])
    assert (args.tls, args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name, args.token_file) == (
        False, "/ca.pem", "/c.pem", "/c.key", "seqserve.test", "/token")
    args = cli.build_parser({}).parse_args(["models", "--tls-ca", self_signed["cert"]])
    assert (args.tls_ca, args.tls_cert, args.token_file) == (self_signed["cert"], None, None)


def test_client_token_comes_from_the_file_before_the_environment(tmp_path):
    from service.client import cli

    (tmp_path / "token").write_text(f"# comment\n{TOKEN}\nnext-token\n")
    args = cli.build_parser({}).parse_args(["models", "--token-file", str(tmp_path / "token")])
    with cli.client_from_args(args, {"SEQSERVE_TOKEN": "from-env"}) as client:
        assert client._metadata == (("authorization", f"Bearer {TOKEN}"),)
    args = cli.build_parser({}).parse_args(["models"])
    with cli.client_from_args(args, {"SEQSERVE_TOKEN": " from-env\n"}) as client:
        assert client._metadata == (("authorization", "Bearer from-env"),)
    with cli.client_from_args(args, {}) as client:
        assert client._metadata is None


def test_client_cli_refuses_a_token_flag_and_unreadable_files(tmp_path, capsys):
    from service.client import cli

    with pytest.raises(SystemExit) as info:
        cli.main(["models", "--token", TOKEN], {})
    assert info.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "--token is not accepted" in err and TOKEN not in err
    assert cli.main(["health", "--tls-ca", str(tmp_path / "none.pem")], {}) == cli.EXIT_USAGE
    assert f"TLS CA '{tmp_path / 'none.pem'}' cannot be read" in capsys.readouterr().err
    (tmp_path / "empty").write_text("# nothing yet\n")
    assert cli.main(["models", "--token-file", str(tmp_path / "empty")], {}) == cli.EXIT_USAGE
    assert "holds no token" in capsys.readouterr().err
    assert cli.main(["models", "--tls-cert", str(tmp_path / "c.pem")], {}) == cli.EXIT_USAGE
    assert "give both tls_cert and tls_key" in capsys.readouterr().err
