"""Dataset files: the data directory, the sha256 table of every file, download and verification."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DATA_ENV = "SEQSERVE_DATA_DIR"


class DataError(RuntimeError):
    """A dataset file that is missing, cannot be fetched, or does not match its sha256."""


@dataclass(frozen=True)
class DataFile:
    sha256: str
    url: str  # canonical copy (a pinned commit); gz=True when the URL serves a gzip of the file
    gz: bool = False


# The table in shared/data/README.md: path -> sha256 of the file as stored, and where it came from.
_GH = "https://raw.githubusercontent.com"
_M30K = f"{_GH}/multi30k/dataset/a3d2e0d26b56f3846f66a952536ffed4e401d05a/data/task1/raw"
_ETT = f"{_GH}/zhouhaoyi/ETDataset/1d16c8f4f943005d613b5bc962e9eeb06058cf07/ETT-small"
FILES: dict[str, DataFile] = {
    "ETDataset/ETTh1.csv": DataFile(
        "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066", f"{_ETT}/ETTh1.csv"
    ),
    "ETDataset/ETTm1.csv": DataFile(
        "6ce1759b1a18e3328421d5d75fadcb316c449fcd7cec32820c8dafda71986c9e",
        f"{_GH}/darfire/flax-lmu/0b0041ad61acaca39ad0a1fa6722212fb7cb4c80/data/ETTm1.csv.gz",
        gz=True,
    ),
    "tinyshakespeare/input.txt": DataFile(
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        f"{_GH}/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare/input.txt",
    ),
    "multi30k/train.en.gz": DataFile("d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f", f"{_M30K}/train.en.gz"),
    "multi30k/train.de.gz": DataFile("726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6", f"{_M30K}/train.de.gz"),
    "multi30k/val.en.gz": DataFile("14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28", f"{_M30K}/val.en.gz"),
    "multi30k/val.de.gz": DataFile("f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a", f"{_M30K}/val.de.gz"),
    "multi30k/test_2016_flickr.en.gz": DataFile(
        "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9", f"{_M30K}/test_2016_flickr.en.gz"
    ),
    "multi30k/test_2016_flickr.de.gz": DataFile(
        "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8", f"{_M30K}/test_2016_flickr.de.gz"
    ),
    "tatoeba-cmn-eng/cmn.txt": DataFile(
        "3a8ac6cb8cdaab6e235d3075ec3680084044d975882d6139c903bf7893097ff6",
        f"{_GH}/JimEverest/transformer-ready-go/7745df43beea3501a578e17090277ea2d755cb82/data/cmn.txt",
    ),
}
SPLITS = ("train", "val", "test")
_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, per process


def default_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else $SEQSERVE_DATA_DIR; raises DataError when neither is set."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get(DATA_ENV)
    if not env:
        raise DataError(f"no data directory: pass --data-dir or set {DATA_ENV}")
    return Path(env)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of the file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, dest: Path, sha256: str, *, gz: bool = False, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` (gunzipping when ``gz``) and check its sha256; raises DataError."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(gzip.GzipFile(fileobj=resp) if gz else resp, out)
        got = file_sha256(tmp)
        if got != sha256:
            raise DataError(f"download of {url} has sha256 {got}, expected {sha256}; not saved")
        tmp.replace(dest)
        return dest
    except (OSError, EOFError) as err:  # URLError, timeouts and bad gzip streams are OSErrors/EOFErrors
        raise DataError(f"could not download {url} to {dest}: {err}") from None
    finally:
        tmp.unlink(missing_ok=True)


def data_file(rel: str, data_dir: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """Path of the verified dataset file ``rel`` (a key of FILES) under the data directory.

    A missing file is downloaded from its canonical URL when ``download`` (no internet: DataError saying
    so); a file whose sha256 differs from the README's table raises DataError naming both hashes.
    """
    if rel not in FILES:
        raise DataError(f"unknown dataset file {rel!r}; known: {', '.join(sorted(FILES))}")
    spec = FILES[rel]
    path = default_data_dir(data_dir) / rel
    if not path.is_file():
        if not download:
            raise DataError(f"{path} does not exist (canonical copy: {spec.url})")
        fetch(spec.url, path, spec.sha256, gz=spec.gz)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    got = _verified.get(key) or file_sha256(path)
    if got != spec.sha256:
        raise DataError(f"{path} has sha256 {got}, expected {spec.sha256} (see shared/data/README.md)")
    _verified[key] = got
    return path


def data_hashes(rels: Sequence[str], data_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """{file: sha256} of the files ``rels``, each verified on disk first (DataError when missing or altered)."""
    for rel in rels:
        data_file(rel, data_dir, download=False)
    return {rel: FILES[rel].sha256 for rel in rels}


def check_split(split: str) -> str:
    """``split`` itself when it is one of SPLITS; ValueError otherwise."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    return split
