"""seqserve-train: train, build, export, evaluate, quantize, compare, speakers and gradient-flow subcommands."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from service.contract import TASKS

PRESET_DIR = Path(__file__).resolve().parent / "presets"
log = logging.getLogger(__name__)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, except that lines never break at a hyphen (preset names stay whole)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent,
                             break_on_hyphens=False)

    def _split_lines(self, text: str, width: int) -> list[str]:
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def presets() -> list[str]:
    """Names of the bundled presets (training/presets/*.yaml)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SystemExit(f"config file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise SystemExit(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise SystemExit(f"config file {path} must hold a mapping with sections task, data, model, train")
    return data


def apply_override(config: dict[str, Any], item: str) -> None:
    """Set ``section.key=value`` (value parsed as YAML: 30, 1e-3 -> float, true, [0.1, 0.5, 0.9]) in place."""
    import yaml

    key, sep, raw = item.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or parts[0] not in ("data", "model", "train"):
        raise SystemExit(f"--set {item!r} must look like SECTION.KEY=VALUE with SECTION one of data, model, train")
    value = yaml.safe_load(raw)
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
        try:
            value = float(value)
        except ValueError:
            pass
    config.setdefault(parts[0], {})[parts[1]] = value


def _resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    if args.config and args.preset:
        raise SystemExit("give --config or --preset, not both")
    if args.config:
        config = load_yaml(Path(args.config))
    else:
        name = args.preset or f"tiny-{args.task}"
        if name not in presets():
            raise SystemExit(f"preset {name!r} is not one of {', '.join(presets())}")
        config = load_yaml(PRESET_DIR / f"{name}.yaml")
    config.setdefault("task", args.task)
    for item in args.set or []:
        apply_override(config, item)
    train = config.setdefault("train", {})
    if args.out:
        train["out_dir"] = args.out
    if args.seed is not None:
        train["seed"] = args.seed
    return config


def cmd_train(args: argparse.Namespace) -> int:
    from training.loop import world
    from training.train import RunConfig, run_task

    try:
        run = RunConfig.from_dict(_resolve_config(args), args.task)
    except ValueError as err:
        raise SystemExit(f"bad config: {err}") from None
    model, result = run_task(run, data_dir=args.data_dir, resume=args.resume)
    if world()[0] == 0:
        print(
            f"{run.task}: {result.steps} steps in {result.seconds:.1f} s, best val loss {result.best_val:.4f} "
            f"at step {result.best_step}{' (early stop)' if result.stopped_early else ''}"
        )
        print(f"best checkpoint: {result.best_path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from training.export import export_checkpoint

    manifest = export_checkpoint(args.checkpoint, args.models, args.name, args.version, args.description)
    if args.default:
        from dataclasses import replace

        from service.contract import write_manifest

        write_manifest(Path(args.models) / args.name / args.version, replace(manifest, default=True))
    print(f"exported {manifest.task} bundle to {Path(args.models) / args.name / args.version}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training import evaluate as E

    if args.write_manifest and not args.bundle:
        raise SystemExit("--write-manifest needs --bundle")
    if args.bundle:
        figures = E.evaluate_bundle(args.bundle, args.split, args.data_dir, args.max_items, args.threads, args.beam)
    else:
        if args.beam:
            raise SystemExit("--beam needs --bundle (it decodes the bundle's graphs with the server's decoding)")
        figures = E.evaluate_checkpoint(args.checkpoint, args.split, args.data_dir, args.max_items)
    if args.write_manifest:
        E.write_evaluation(args.bundle, figures)
    print(E.to_json(figures) if args.json else E.format_table(figures))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from training.quantize import HIGHER_IS_BETTER, LOWER_IS_BETTER, QuantizeError, quantize_bundle

    try:
        report = quantize_bundle(args.bundle, args.data_dir, args.tolerance, args.threads, args.int8_matmul)
    except QuantizeError as err:
        raise SystemExit(str(err)) from None
    print(f"{args.bundle}: {report.converted} weight tensors stored as int8, graphs "
          f"{report.bytes_before / 1e6:.2f} MB -> {report.bytes_after / 1e6:.2f} MB")
    for key, before in report.before.items():
        after = report.after[key]
        shown = [n for n in (*HIGHER_IS_BETTER, *LOWER_IS_BETTER) if n in before]
        print(f"  {key}: " + ", ".join(f"{n} {before[n]:.4f} -> {after[n]:.4f}" for n in shown))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from training.compare import compare_cells

    config = _resolve_config(argparse.Namespace(**{**vars(args), "out": None}))
    try:
        rows = compare_cells(config, [c.strip() for c in args.cells.split(",") if c.strip()], args.out,
                             data_dir=args.data_dir, split=args.split, max_eval_items=args.max_items)
    except ValueError as err:
        raise SystemExit(f"bad config: {err}") from None
    print((Path(args.out) / "cells.md").read_text(encoding="utf-8"))
    print(f"wrote {args.out}/cells.csv, cells.md, val_loss.png, gradient_flow.csv, gradient_flow.png "
          f"({len(rows)} cells)")
    return 0


def cmd_speakers(args: argparse.Namespace) -> int:
    from training.speakers import cross_speaker

    config = _resolve_config(argparse.Namespace(**{**vars(args), "task": "recognize", "out": None}))
    speakers = [s.strip() for s in args.speakers.split(",") if s.strip()] if args.speakers else None
    try:
        cross_speaker(config, args.out, speakers, data_dir=args.data_dir, max_items=args.max_items)
    except ValueError as err:
        raise SystemExit(f"bad config: {err}") from None
    print((Path(args.out) / "speakers.md").read_text(encoding="utf-8"))
    print(f"wrote {args.out}/speakers.csv, speakers.md and one run directory per speaker")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from training.build import build, summary

    preset = args.preset or (None if args.config else f"files-{args.task}")
    config = _resolve_config(argparse.Namespace(**{**vars(args), "preset": preset, "out": None, "seed": None}))
    result = build(args.task, args.data, args.name, args.models, config=config, out_dir=args.out,
                   int8=not args.float32, threads=args.threads, description=args.description)
    print(summary(result))
    return 0


def cmd_zero_shot(args: argparse.Namespace) -> int:
    from training import zeroshot as Z

    kinds = {"ets": "AutoETS", "theta": "AutoTheta", "arima": "AutoARIMA"}
    wanted = [b.strip() for b in args.baselines.split(",") if b.strip()]
    unknown = [b for b in wanted if b not in kinds]
    if unknown:
        raise SystemExit(f"--baselines {', '.join(unknown)}: not one of {', '.join(kinds)}")
    if args.write_manifest and (args.datasets.strip() or args.max_series):
        raise SystemExit("--write-manifest stores figures of the whole benchmark; drop --datasets and --max-series")
    forecasters: dict[str, Any] = {}
    bundles: dict[str, str] = {}
    for bundle in args.bundle or []:
        name, run = Z.bundle_model(bundle, args.threads)
        if name in forecasters:  # two bundles that call themselves the same: tell them apart by folder
            name = f"{name} ({bundle})"
        forecasters[name], bundles[name] = run, bundle
    forecasters.update({kinds[b]: Z.statsforecast_model(kinds[b]) for b in wanted})
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    report = Z.run_benchmark(forecasters, datasets, args.max_series)
    paths = Z.write(report, args.out)
    if args.write_manifest:
        from training.evaluate import write_evaluation

        paths += [write_evaluation(path, Z.figures(report, name)) for name, path in bundles.items()]
    print(Z.markdown(report))
    print("wrote " + ", ".join(map(str, paths)))
    return 0


# Arguments several subcommands take, defined once: name -> (flags, add_argument keywords).
SHARED_ARGUMENTS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "task": (("task",), {"choices": TASKS}),
    "config": (("--config",), {"metavar": "FILE.yaml", "help": "YAML with sections task, data, model, train"}),
    "preset": (("--preset",), {"metavar": "NAME", "help": "a bundled preset (see the list below)"}),
    "seed": (("--seed",), {"type": int, "help": "overrides train.seed"}),
    "data_dir": (("--data-dir",), {"metavar": "DIR", "help": "dataset directory (default: $SEQSERVE_DATA_DIR)"}),
    "set": (("--set",), {"action": "append", "metavar": "SECTION.KEY=VALUE",
                         "help": "override one config value (repeatable)"}),
}


def add_shared(parser: argparse.ArgumentParser, *names: str, **helps: str) -> None:
    """Add the shared arguments ``names`` (keys of SHARED_ARGUMENTS) in order; ``helps`` overrides help texts."""
    for name in names:
        flags, kwargs = SHARED_ARGUMENTS[name]
        parser.add_argument(*flags, **{**kwargs, **({"help": helps[name]} if name in helps else {})})


def build_parser() -> argparse.ArgumentParser:
    preset_list = f"presets: {', '.join(presets())}"
    p = argparse.ArgumentParser(
        prog="seqserve-train", formatter_class=HelpFormatter,
        description="Train recurrent models, export them as seqserve bundles, and evaluate checkpoints or bundles.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "train", help="train a model from a preset or a YAML config",
        description="Train a model. Without --config or --preset, the tiny-TASK preset (synthetic data, "
        "seconds on a CPU) is used. Under torchrun the run is data-parallel (gloo); rank 0 writes "
        "OUT/last.pt, OUT/best.pt, metrics.jsonl, metrics.csv and loss.png.",
        epilog=preset_list,
    )
    add_shared(t, "task", "config", "preset")
    t.add_argument("--out", metavar="DIR", help="output directory (overrides train.out_dir)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt exactly where it stopped")
    add_shared(t, "seed", "data_dir", "set",
               set="override one config value, e.g. --set train.max_steps=100 (repeatable)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("export", help="export a checkpoint as a model bundle",
                       description="Write MODELS/NAME/VERSION/ with the ONNX graphs, tokenizers and manifest.json, "
                       "after checking every graph against PyTorch.")
    e.add_argument("--checkpoint", required=True, metavar="CKPT", help="a .pt file written by train (best.pt)")
    e.add_argument("--models", required=True, metavar="DIR", help="model repository directory")
    e.add_argument("--name", required=True, help="model name (letters, digits, . _ -)")
    e.add_argument("--version", required=True, help="version (digits)")
    e.add_argument("--description", default="", help="free text stored in the manifest")
    e.add_argument("--default", action="store_true",
                   help="mark the model as its task's default (answers requests that name no model)")
    e.set_defaults(func=cmd_export)

    v = sub.add_parser("evaluate", help="evaluate a bundle (onnxruntime) or a checkpoint (PyTorch)",
                       description="Forecast: MSE/MAE on train-standardised values and 10-90% coverage; "
                       "generate: nats per character; translate: greedy decoding (or the server's beam search with "
                       "--beam N) scored with sacreBLEU (BLEU, chrF, lowercased BLEU).")
    src = v.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", metavar="DIR", help="bundle directory (MODELS/NAME/VERSION)")
    src.add_argument("--checkpoint", metavar="CKPT", help="a .pt file written by train")
    add_shared(v, "data_dir")
    v.add_argument("--split", default="test", choices=("train", "val", "test"))
    v.add_argument("--max-items", type=int, default=0, metavar="N",
                   help="only the first N sentences / characters / windows (0 = all)")
    v.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    v.add_argument("--beam", type=int, default=0, metavar="N",
                   help="translation bundles: decode with the server's beam search of width N (default: greedy)")
    v.add_argument("--json", action="store_true", help="print JSON instead of a table")
    v.add_argument("--write-manifest", action="store_true", help="store the figures in the bundle's manifest")
    v.set_defaults(func=cmd_evaluate)

    q = sub.add_parser(
        "quantize", help="store a bundle's weights as int8 if its figures hold",
        description="Rewrite the bundle's graphs with int8 weights (one scale per row; the service folds them "
        "back to float32 when it loads, so calls run as fast as before) and re-evaluate every split its "
        "manifest has figures for. The int8 graphs replace the float32 ones only if each figure holds within "
        "--tolerance; the manifest then keeps the float32 figures under quantization.evaluation_float32.")
    q.add_argument("--bundle", required=True, metavar="DIR", help="bundle directory (MODELS/NAME/VERSION), evaluated")
    add_shared(q, "data_dir")
    q.add_argument("--tolerance", type=float, default=0.01, help="largest relative loss per figure (default 0.01)")
    q.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads for the evaluation")
    q.add_argument("--int8-matmul", action="store_true",
                   help="also compute MatMul and Gemm in int8 (onnxruntime dynamic quantisation): faster where "
                   "they dominate, e.g. a translation decoder's output layer, but a row's result then depends on "
                   "the rows batched with it; checked like the rest")
    q.set_defaults(func=cmd_quantize)

    c = sub.add_parser(
        "compare", help="train one task once per cell with the same budget and compare",
        description="Train the same configuration once per cell (same data, seed, sizes, steps), evaluate each "
        "best checkpoint, measure each cell's gradient flow, and write OUT/cells.csv, cells.md, val_loss.png, "
        "gradient_flow.csv and gradient_flow.png. Fix the budget with --set train.max_steps=N.",
        epilog=preset_list,
    )
    add_shared(c, "task", "config", "preset")
    c.add_argument("--cells", default="rnn,lstm,gru,peephole", help="comma-separated cells (default %(default)s)")
    c.add_argument("--out", required=True, metavar="DIR", help="output directory (one run directory per cell inside)")
    add_shared(c, "seed", "data_dir")
    c.add_argument("--split", default="test", choices=("val", "test"), help="split the figures are computed on")
    c.add_argument("--max-items", type=int, default=0, metavar="N", help="evaluate on the first N items only")
    add_shared(c, "set")
    c.set_defaults(func=cmd_compare)

    s = sub.add_parser(
        "speakers", help="speech: leave-one-speaker-out, one training per held-out FSDD speaker",
        description="Train a recognize config on FSDD once per held-out speaker (data.holdout), the other five "
        "speakers' takes 10-49 for training and 5-9 for early stopping, and score each fold on every take of its "
        "speaker: single-recording accuracy and connected-digit error rate (offline, and streaming for "
        "unidirectional models). Writes OUT/SPEAKER/ per fold, OUT/speakers.csv and OUT/speakers.md with the mean "
        "and the worst fold. Folds already scored are skipped; an interrupted fold resumes.",
        epilog=preset_list,
    )
    add_shared(s, "config", "preset")
    s.add_argument("--out", required=True, metavar="DIR", help="output directory")
    s.add_argument("--speakers", default="", help="comma-separated speakers (default: all six)")
    s.add_argument("--max-items", type=int, default=0, metavar="N", help="score each fold on its first N items only")
    add_shared(s, "seed", "data_dir", "set")
    s.set_defaults(func=cmd_speakers)

    b = sub.add_parser(
        "build", help="your own data -> a served bundle: check, train, export, evaluate, int8, next version",
        description="Read and check your files (every problem named with its file, line or row, column and value, "
        "before training starts), split them, train (progress bar), export with the parity check, evaluate the "
        "held-out test part against the task's baselines into the manifest, store int8 weights where every figure "
        "holds within 1%, and move the bundle into MODELS/NAME/ as its next version, where a running server "
        "loads it. A failed or interrupted build leaves nothing in MODELS. Data: forecast: CSV/TSV/Parquet tables, "
        "long (unique_id/ds/y, item_id/timestamp/target, or --set data.id_column=... time_column value_column) or "
        "wide (a time column, one column per series); translate: two line-aligned text files (source, target) or "
        "one table with the two columns; generate: text files; recognize: a folder of WAV files and a CSV of file and "
        "transcript (a character-level model). Settings: --set data.KEY=VALUE, see the preset.",
        epilog=f"default preset: files-TASK; {preset_list}",
    )
    b.add_argument("--task", required=True, choices=("forecast", "translate", "generate", "recognize"))
    b.add_argument("--data", required=True, action="append", metavar="PATH",
                   help="a data file, or for recognize the recordings' folder (repeatable)")
    b.add_argument("--name", required=True, help="model name (letters, digits, . _ -)")
    b.add_argument("--models", default="models", metavar="DIR", help="model repository (default %(default)s)")
    add_shared(b, "config", "preset", "set")
    b.add_argument("--out", metavar="DIR", help="training run directory (default runs/build-NAME-VERSION)")
    b.add_argument("--threads", type=int, default=2, help="onnxruntime threads for the evaluation (default 2)")
    b.add_argument("--float32", action="store_true", help="keep float32 weights (skip the int8 step)")
    b.add_argument("--description", default="", help="free text stored in the manifest")
    b.set_defaults(func=cmd_build)

    z = sub.add_parser(
        "zero-shot", help="forecasters on series they never saw, scored as Chronos's Benchmark II",
        description="Forecast the last horizons of real series from fpp2/fpp3/forecast (hourly, daily, weekly, "
        "monthly, quarterly, yearly; held out of every training corpus) with each --bundle, seasonal naive and "
        "statsforecast's AutoETS, AutoTheta and AutoARIMA; score MASE of the median and WQL over quantiles "
        "0.1-0.9, each divided by seasonal naive's, geometric mean over datasets, overall and per frequency "
        "group. Writes OUT/zeroshot.md, zeroshot.csv and zeroshot.png.",
    )
    z.add_argument("--bundle", action="append", metavar="DIR", help="a forecast bundle (repeatable)")
    z.add_argument("--baselines", default="ets,theta,arima",
                   help="statsforecast models among ets, theta, arima (default %(default)s; '' for none)")
    z.add_argument("--datasets", default="", help="comma-separated benchmark datasets (default: all)")
    z.add_argument("--max-series", type=int, default=0, metavar="N", help="the first N series of each dataset only")
    z.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default 1)")
    z.add_argument("--write-manifest", action="store_true",
                   help="store each bundle's relative MASE and WQL (overall, per group) in its manifest, "
                        "evaluation.zero_shot")
    z.add_argument("--out", required=True, metavar="DIR", help="output directory")
    z.set_defaults(func=cmd_zero_shot)

    sub.add_parser("gradient-flow", help="gradient-flow report per cell (see gradient-flow --help)", add_help=False)
    for parser in sub.choices.values():
        parser.formatter_class = HelpFormatter
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "gradient-flow":
        from training.diagnostics import main as gradient_flow_main

        return gradient_flow_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from training.data import DataError

    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, DataError) as err:  # BundleError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        if type(err).__name__ != "ExportError":
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
