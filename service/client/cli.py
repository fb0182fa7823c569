"""The ``seqserve`` command: serve, call a running server, or hand training commands to training.cli."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from .commands import CLIENT_COMMANDS, DEFAULT_CHUNK_MS
from .options import (  # noqa: F401 - part of this module's interface
    ADDRESS_ENV,
    DEFAULT_ADDRESS,
    EXIT_RPC_ERROR,
    EXIT_USAGE,
    LOG_LEVEL_ENV,
    TLS_CA_ENV,
    TLS_CERT_ENV,
    TLS_KEY_ENV,
    TLS_SERVER_NAME_ENV,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    TRAINING_COMMANDS,
)

log = logging.getLogger(__name__)
# Request fields the client commands fill from flags: errors about them name the flag.
FLAG_OF_FIELD = {
    "beam_size": "--beam", "max_length": "--max-length", "max_tokens": "--max-tokens", "temperature": "--temperature",
    "top_k": "--top-k", "top_p": "--top-p", "seed": "--seed", "stop": "--stop", "horizon": "--horizon",
    "quantiles": "--quantiles", "top_logprobs": "--logprobs", "config.max_alternatives": "--alternatives",
    "streaming_config.config.max_alternatives": "--alternatives",
}


# -- parser ------------------------------------------------------------------------------------


def _client_options(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection and output")
    group.add_argument(
        "--address",
        default=environ.get(ADDRESS_ENV, DEFAULT_ADDRESS),
        help=f"server host:port (default {DEFAULT_ADDRESS}; env {ADDRESS_ENV})",
    )
    group.add_argument("--timeout", type=float, default=None, help="deadline per call in seconds (default: none)")
    group.add_argument("--json", action="store_true", help="print the result as JSON instead of text")
    group = parent.add_argument_group(
        "security", "TLS is used when --tls or any --tls-* option is given; otherwise the connection is plaintext."
    )
    group.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's CAs")
    group.add_argument(
        "--tls-ca", default=environ.get(TLS_CA_ENV) or None, metavar="FILE",
        help=f"PEM CA bundle to verify the server with (implies TLS; env {TLS_CA_ENV})",
    )
    group.add_argument(
        "--tls-cert", default=environ.get(TLS_CERT_ENV) or None, metavar="FILE",
        help=f"PEM client certificate for mutual TLS, with --tls-key (env {TLS_CERT_ENV})",
    )
    group.add_argument(
        "--tls-key", default=environ.get(TLS_KEY_ENV) or None, metavar="FILE",
        help=f"PEM private key of --tls-cert (env {TLS_KEY_ENV})",
    )
    group.add_argument(
        "--tls-server-name", default=environ.get(TLS_SERVER_NAME_ENV) or None, metavar="NAME",
        help=f"name the server certificate must carry, if not the address's host (env {TLS_SERVER_NAME_ENV})",
    )
    group.add_argument(
        "--token-file", default=environ.get(TOKEN_FILE_ENV) or None, metavar="FILE",
        help=f"file whose first line is the bearer token to send (env {TOKEN_FILE_ENV}; "
        f"or put the token itself in env {TOKEN_ENV})",
    )
    # Refused rather than absent: argparse would take it as an abbreviation of --token-file.
    group.add_argument("--token", dest="token_flag", action=_RefuseToken, help=argparse.SUPPRESS)
    return parent


class _RefuseToken(argparse.Action):
    """``--token VALUE``: a usage error that does not repeat the value (command lines are public)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.error(f"{option_string} is not accepted (command lines are visible to other users); "
                     f"use --token-file or env {TOKEN_ENV}")


def _model_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--model", default="", help="model name (default: the server's default model for the task)")
    parent.add_argument("--version", default="", help="model version, digits (default: the model's default version)")
    return parent


def _quantile_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--quantiles {text!r} must be comma-separated numbers, e.g. 0.1,0.9") from None


def _positive_ms(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of milliseconds (e.g. 100)")
    return value


def build_parser(environ: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    """The full ``seqserve`` argument parser (defaults read from ``environ``)."""
    from service.core import config as serve_config
    from service.loadgen import bench

    parser = argparse.ArgumentParser(
        prog="seqserve",
        description="Serve recurrent sequence models over gRPC, call a running server, or train models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    client, model = _client_options(environ), _model_options()

    p = sub.add_parser(
        "serve",
        help="run the gRPC server",
        description="Serve every model bundle under --models over gRPC (plus /metrics for Prometheus) "
        "until SIGTERM/SIGINT, then drain. Each flag can also be set as SEQSERVE_<FLAG> "
        "(e.g. SEQSERVE_PORT=50052); flags win over the environment.",
    )
    serve_config.add_arguments(p)
    p.add_argument(
        "--log-level",
        default=environ.get(LOG_LEVEL_ENV, "INFO"),
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help=f"log verbosity (default INFO; env {LOG_LEVEL_ENV})",
    )
    p.add_argument("--no-reflection", action="store_true", help="do not offer gRPC server reflection")

    p = sub.add_parser(
        "translate",
        parents=[client, model],
        help="translate sentences",
        description="Translate each TEXT with a translation model; prints one translation per line.",
    )
    p.add_argument("texts", nargs="*", metavar="TEXT",
                   help="a sentence to translate (quote it); - reads sentences from standard input, one per line")
    p.add_argument("--file", metavar="PATH", help="also translate every non-empty line of PATH (UTF-8)")
    p.add_argument("--beam", type=int, default=1, help="beam width; 1 = greedy (default 1)")
    p.add_argument("--max-length", type=int, default=0, help="longest output in tokens; 0 = the model's choice")
    p.add_argument("--attention", action="store_true", help="also print each translation's attention matrix")

    p = sub.add_parser(
        "forecast",
        parents=[client, model],
        help="forecast a time series from a CSV file",
        description="Forecast the steps after the history in a CSV file (one row per time step); prints one row "
        "per predicted step, with timestamps continued from the file's time column when it has one.",
    )
    p.add_argument("--csv", required=True, metavar="FILE",
                   help="CSV file ('-' = stdin): any delimiter, header optional, UTF-8 or Latin-1")
    p.add_argument(
        "--column", action="append", default=[], metavar="NAME",
        help="value column; repeat for several channels (default: the numeric columns other than a time or index "
             "column, the last ones when the model takes fewer)",
    )
    p.add_argument("--horizon", type=int, default=0, help="steps to predict (default 0: the model's horizon)")
    p.add_argument(
        "--quantiles", type=_quantile_list, default=[], metavar="Q1,Q2",
        help="quantile levels to print, e.g. 0.1,0.9 (default: the model's levels)",
    )
    p.add_argument("--frequency", default="", metavar="ALIAS",
                   help="the series' frequency, a pandas-style alias: h, 30min, D, B, W, M, Q, Y (default: from the "
                        "file's time column, sent to models that take a season; a model trained on one frequency "
                        "rejects another)")
    p.add_argument("--season-length", type=int, default=0, metavar="STEPS",
                   help="steps per season, for models that take a season (default 0: from the frequency)")

    p = sub.add_parser(
        "generate",
        parents=[client, model],
        help="continue a prompt with a language model",
        description="Generate a continuation of PROMPT. Prints the text; the finish reason and token "
        "counts go to stderr.",
    )
    p.add_argument("prompt", metavar="PROMPT", help="the text to continue (may be '')")
    p.add_argument("--max-tokens", type=int, default=None, help="most tokens to generate (default: the server's)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature; 0 = greedy (default 1.0)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens (default: off)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1] (default: off)")
    p.add_argument("--seed", type=int, default=None, help="random seed for reproducible text (default: random)")
    p.add_argument("--stop", action="append", default=[], metavar="S", help="stop before this text; repeatable")
    p.add_argument("--stream", action="store_true", help="print the text as it is generated")
    p.add_argument("--logprobs", type=int, default=None, metavar="N",
                   help="after the text, list each token's log-probability and its N most probable alternatives "
                        "(0 = none; at most the server's max_top_logprobs, 20 by default)")

    p = sub.add_parser(
        "score",
        parents=[client, model],
        help="how probable continuations of a prompt are",
        description="Print log P(CONTINUATION | PROMPT) for each CONTINUATION under a language model, its "
        "probability and each token's log-probability; the most probable continuation is marked *.",
    )
    p.add_argument("prompt", metavar="PROMPT", help="the context (may be '')")
    p.add_argument("continuations", nargs="+", metavar="CONTINUATION", help="a text to score after PROMPT")

    p = sub.add_parser(
        "recognize",
        parents=[client, model],
        help="transcribe a WAV file with a speech model",
        description="Transcribe FILE (a mono WAV file) with a recognition model and print the transcript. Sent whole "
        "(Recognize) unless --stream is given; with --stream the file's samples go out as 16-bit PCM chunks "
        "(StreamingRecognize), interim results show on stderr and the final transcript on stdout. The model, "
        "version and seconds of audio go to stderr. --json prints the response as JSON (with --stream: one object "
        "per line, interim and final results).",
    )
    p.add_argument("file", metavar="FILE",
                   help="mono WAV file (PCM 8/16/24/32-bit or float 32/64, 8000..48000 Hz); - reads it from standard "
                        "input")
    p.add_argument("--stream", action="store_true",
                   help="stream the audio in chunks and show interim results as they come; the model must stream "
                        "(ModelInfo.speech.streaming; without --model: the server's default among those that do)")
    p.add_argument("--chunk-ms", type=_positive_ms, default=None, metavar="MS",
                   help=f"with --stream: milliseconds of audio per message (default {DEFAULT_CHUNK_MS:g})")
    p.add_argument("--realtime", action="store_true",
                   help="with --stream: send each chunk once its time has passed, as a microphone would")
    p.add_argument("--single-utterance", action="store_true",
                   help="with --stream: the server ends the stream once the speaker stops (a silence after speech) "
                        "and transcribes the audio until then; the rest of the file is not sent")
    p.add_argument("--end-silence-ms", type=int, default=0, metavar="MS",
                   help="with --single-utterance: the silence that ends the utterance, 100..10000 ms (default: the "
                        "server's end_silence_ms, 1000)")
    p.add_argument("--alternatives", type=int, default=None, metavar="N",
                   help="also list up to N transcripts, most probable first, with their confidences (at most the "
                        "server's max_alternatives, 10 by default)")
    p.add_argument("--words", action="store_true",
                   help="also list each word of the best transcript with its start and end (seconds) and confidence")

    p = sub.add_parser(
        "models",
        parents=[client],
        help="list the server's models",
        description="List every model version the server knows, or describe one with NAME [VERSION].",
    )
    p.add_argument("name", nargs="?", default="", metavar="NAME", help="describe only this model")
    p.add_argument("version", nargs="?", default="", metavar="VERSION", help="version of NAME (default: its default)")
    p.add_argument("--task", default="", choices=("", "translate", "forecast", "generate", "recognize"),
                   help="only this task")

    p = sub.add_parser(
        "health",
        parents=[client],
        help="check the server's health",
        description="Print the grpc.health.v1 status of a service; exits 0 only when SERVING.",
    )
    p.add_argument(
        "--service", default="",
        help="service name: Translator, Forecaster, Generator, Models (short for seqserve.v1.*) or a full "
             "name such as grpc.health.v1.Health (default '': the whole server)",
    )

    bench.add_parser(sub)
    for name, text in TRAINING_COMMANDS.items():
        sub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}. See `seqserve {name} --help`.",
                       add_help=False)
    return parser


# -- commands ----------------------------------------------------------------------------------


def _run_serve(args: argparse.Namespace, environ: Mapping[str, str], argv: list[str]) -> int:
    from service.core import config as serve_config
    from service.front.workers import Supervisor, resolved_workers, worker_slot

    try:
        config = serve_config.config_from_args(args, environ)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    slot = worker_slot(environ)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s " + (f"worker {slot.index} " if slot else "") + "%(name)s: %(message)s",
    )
    from service.front.server import StartupError, event_loop_factory, run_on_loop, serve

    try:
        factory = event_loop_factory(config.event_loop)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if not config.models.is_dir():
        print(f"error: --models {config.models} (SEQSERVE_MODELS): no such directory; the model repository "
              "holds <name>/<version>/ bundle folders", file=sys.stderr)
        return EXIT_USAGE
    if not any(config.models.glob("*/*/manifest.json")):
        log.warning("--models %s holds no bundles (<name>/<version>/manifest.json): nothing to serve until one "
                    "is copied in%s", config.models,
                    f" (looked for every {config.poll_interval_s:g} s)" if config.poll_interval_s > 0 else
                    " (and --poll-interval-s 0 never looks again)")
    workers = resolved_workers(config)
    if slot is None and workers > 1:
        return Supervisor(config, argv, workers, environ).run()
    try:
        run_on_loop(serve(config, reflection_enabled=not args.no_reflection), factory)
    except StartupError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_RPC_ERROR
    return 0


def client_from_args(args: argparse.Namespace, environ: Mapping[str, str] = os.environ):
    """A SeqserveClient for the connection options of a client subcommand: address, timeout, TLS
    and the token (--token-file, else env SEQSERVE_TOKEN). Raises ValueError for an unreadable
    file or a certificate without its key."""
    from service.client.client import SeqserveClient, read_token_file

    token = read_token_file(args.token_file) if args.token_file else (environ.get(TOKEN_ENV) or "").strip() or None
    return SeqserveClient(
        args.address, timeout=args.timeout, tls=args.tls, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
        tls_key=args.tls_key, tls_server_name=args.tls_server_name, token=token,
    )


def _run_training(argv: list[str]) -> int:
    import importlib

    try:
        training_cli = importlib.import_module("training.cli")
        return int(training_cli.main(argv) or 0)
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] in ("torch", "onnx", "onnxscript"):
            print(
                f"error: `seqserve {argv[0]}` needs the training extras ({err.name} is missing): "
                "pip install 'seqserve[train]'",
                file=sys.stderr,
            )
            return EXIT_USAGE
        raise


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the ``seqserve`` command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    for i, arg in enumerate(argv, start=1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:  # bytes the terminal's locale could not decode (surrogate escapes)
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            print(f"error: argument {i} ({shown!r}) is not valid UTF-8; seqserve reads UTF-8 text", file=sys.stderr)
            return EXIT_USAGE
    try:
        code = _main(argv, environ)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except BrokenPipeError:
        # The reader went away (`seqserve models --json | head`): nothing more to say, and nowhere to
        # say it. Point stdout at /dev/null so that Python's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _main(argv: list[str], environ: Mapping[str, str]) -> int:
    if argv and argv[0] in TRAINING_COMMANDS:
        return _run_training(argv)
    args = build_parser(environ).parse_args(argv)
    if args.command == "serve":
        return _run_serve(args, environ, argv)
    if args.command == "bench":
        return args.func(args)

    from service.client.client import ClientError

    out = sys.stdout
    try:
        client = client_from_args(args, environ)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with client:
            return CLIENT_COMMANDS[args.command](client, args, out)
    except ValueError as err:  # bad input found on this side (a file, standard input)
        _error(args, "INVALID_ARGUMENT", str(err))
        return EXIT_USAGE
    except ClientError as err:
        hint = ""
        if err.code == "UNAVAILABLE" and "connect" in err.message.lower():
            hint = (f"is `seqserve serve` running at {client.address}? Point --address (or "
                    f"{ADDRESS_ENV}) at it.")
        message = err.message
        flag = FLAG_OF_FIELD.get(err.field or "")
        if flag:
            # The user typed flags, not request fields: "--beam 99 must be within 0..8".
            message = re.sub(rf"(?<![\w.\[]){re.escape(err.field)}\b", flag, message, count=1)
        _error(args, err.code, message, err.field, hint)
        return EXIT_RPC_ERROR


def _error(args: argparse.Namespace, code: str, message: str, field: str | None = None, hint: str = "") -> None:
    """An error on stderr: "error: CODE: message" (and a hint line), or one JSON object under --json."""
    if getattr(args, "json", False):
        payload = {"error": {"code": code, "message": message, **({"field": field} if field else {}),
                             **({"hint": hint} if hint else {})}}
        print(json.dumps(payload, ensure_ascii=False), file=sys.stderr)
    else:
        print(f"error: {code}: {message}" + (f"\nhint: {hint}" if hint else ""), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
