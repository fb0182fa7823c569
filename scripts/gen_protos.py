"""Regenerate the Python gRPC stubs in service/v1/ from protos/seqserve/v1/*.proto and
protos/inference/*.proto (the Open Inference Protocol).

Usage: python scripts/gen_protos.py [--out DIR]   (DIR defaults to service/v1 of this repository)
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO / "protos"
PROTO_PACKAGES = ("seqserve/v1", "inference")  # folders under PROTO_ROOT, = the proto packages
PY_PACKAGE = "service.v1"  # where the generated modules live
DEFAULT_OUT = REPO / "service" / "v1"
INIT_TEXT = ('"""Generated gRPC stubs for the seqserve.v1 API and the Open Inference Protocol (package inference)\n'
             '(scripts/gen_protos.py; do not edit)."""\n')

# protoc writes `from seqserve.v1 import x_pb2 as ...` / `from inference import ...`; our modules live in service.v1.
_IMPORT_RE = re.compile(r"^from (seqserve\.v1|inference) import ", re.MULTILINE)


def proto_files() -> list[Path]:
    """The .proto files of the APIs, sorted."""
    return sorted(p for package in PROTO_PACKAGES for p in (PROTO_ROOT / package).glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Write *_pb2.py, *_pb2.pyi, *_pb2_grpc.py and __init__.py into ``out_dir``; returns them.

    Raises RuntimeError when protoc fails.
    """
    from grpc_tools import protoc  # dev dependency; imported here so the module imports without it
    import grpc_tools

    include = Path(grpc_tools.__file__).resolve().parent / "_proto"  # google/protobuf/*.proto
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        written = []
        for src in sorted(f for package in PROTO_PACKAGES for f in (Path(tmp) / package).iterdir()):
            if src.suffix not in (".py", ".pyi"):
                continue
            text = _IMPORT_RE.sub(f"from {PY_PACKAGE} import ", src.read_text(encoding="utf-8"))
            dst = out_dir / src.name
            dst.write_text(text, encoding="utf-8")
            written.append(dst)
    init = out_dir / "__init__.py"
    init.write_text(INIT_TEXT, encoding="utf-8")
    return [init, *written]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output package folder (default: service/v1)")
    args = parser.parse_args(argv)
    if args.out.resolve() == DEFAULT_OUT.resolve():
        # Start clean so stubs of deleted protos do not linger.
        for old in DEFAULT_OUT.glob("*_pb2*.py*"):
            old.unlink()
        shutil.rmtree(DEFAULT_OUT / "__pycache__", ignore_errors=True)
    for path in generate(args.out):
        print(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
