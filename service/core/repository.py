"""Model repository: discovers ``<models>/<name>/<version>/`` bundles, loads and warms versions,
swaps them atomically, keeps the latest N, and records versions that fail to load."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from service.contract import MANIFEST_FILE, BundleError, Manifest, check_name, graph_spec, read_manifest

from .config import ServeConfig
from .errors import InvalidArgument, NotFound, Unavailable
from .observe import NULL_SINK, Sink
from .runtime import GraphRuntime, RuntimeOptions
from .tokenizing import TextCodec
from .types import FAILED, LOADING, READY, UNLOADING

DECLARED = "declared_as"  # manifest.extra key: the name/version the manifest gave, where the directory differs

log = logging.getLogger(__name__)


@dataclass
class Bundle:
    """A bundle read from disk: its manifest, one runtime per graph role, one codec per tokenizer role."""

    manifest: Manifest
    path: Path
    graphs: dict[str, GraphRuntime]
    codecs: dict[str, TextCodec]


class TaskModel(Protocol):
    """What a task (forecast, translate, generate) builds from a bundle."""

    def start(self) -> None: ...

    async def warmup(self) -> None: ...

    async def close(self) -> None: ...

    def limits(self) -> dict[str, int]: ...


@dataclass
class ModelVersion:
    """One version directory and what became of it."""

    name: str
    version: str
    path: Path
    state: str  # LOADING | READY | FAILED | UNLOADING
    fingerprint: tuple  # the directory's files (name, size, mtime); a FAILED version retries when it changes
    manifest: Manifest | None = None
    model: Any = None  # the TaskModel while READY / UNLOADING
    error: str = ""
    loaded_at: float = 0.0  # time.time()
    inflight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def __post_init__(self) -> None:
        self._idle.set()

    @property
    def number(self) -> int:
        return int(self.version)

    @property
    def task(self) -> str:
        return self.manifest.task if self.manifest else ""

    @contextmanager
    def lease(self) -> Iterator[Any]:
        """Hold the version while a request uses its model; unloading waits for leases to end."""
        self.inflight += 1
        self._idle.clear()
        try:
            yield self.model
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        if self._idle.is_set():
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout)
            return True
        except asyncio.TimeoutError:
            return False


def fingerprint(path: Path) -> tuple:
    """(name, size, mtime_ns) of every entry in a version directory, sorted."""
    try:
        entries = []
        with os.scandir(path) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                entries.append((e.name, st.st_size, st.st_mtime_ns))
        return tuple(sorted(entries))
    except OSError:
        return ()


def _read_regular(directory: Path, file: str) -> bytes:
    """Bytes of ``directory/file``; refuses symlinks, non-regular files and escapes."""
    path = directory / file
    if path.parent != directory or path.resolve().parent != directory.resolve():
        raise BundleError(f"{directory}: {file!r} is not a file of this bundle")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise BundleError(f"{directory}: cannot open {file!r} (symlink or unreadable): {err.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise BundleError(f"{directory}: {file!r} is not a regular file")
        return f.read()


def open_bundle(path: Path, name: str, version: str, options: RuntimeOptions, executor: Executor) -> Bundle:
    """Read, validate and load one bundle directory (blocking). Raises BundleError for anything
    wrong with the bundle; onnxruntime and tokenizer errors propagate as they are."""
    if path.is_symlink() or (path / MANIFEST_FILE).is_symlink():
        raise BundleError(f"{path}: symlinked bundles and manifests are refused")
    manifest = read_manifest(path)
    if (manifest.name, manifest.version) != (name, version):
        # The directory names the model and version, as in TF Serving and Triton: copying a bundle
        # into <name>/<version+1>/ is all a new version takes. What the manifest says is reported.
        log.info("%s: the manifest says %r version %r; serving it as %r version %r (the directory names them)",
                 path, manifest.name, manifest.version, name, version)
        manifest = replace(manifest, name=name, version=version, extra={
            **manifest.extra, DECLARED: {"name": manifest.name, "version": manifest.version}})
    graphs = {}
    options = replace(options, int8_weights=manifest.weights == "int8")
    for role, file in manifest.graphs.items():
        data = _read_regular(path, file)
        try:
            graph = GraphRuntime(f"{name}/{version}/{file}", data, options, executor)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise BundleError(f"{path}: graph {file!r} does not load: {str(err)[:300]}") from None
        seasonal = manifest.forecast is not None and manifest.forecast.season_input
        graph.check(graph_spec(role, manifest.cell, seasonal))  # BundleError naming the graph and what differs
        graphs[role] = graph
    codecs = {}
    for role, file in manifest.tokenizers.items():
        data = _read_regular(path, file)
        try:
            codec = TextCodec.from_json(data.decode("utf-8"))
        except Exception as err:  # noqa: BLE001 - tokenizers raises plain Exception
            raise BundleError(f"{path}: tokenizer {file!r} does not load: {err}") from None
        declared = manifest.vocab_size.get(role)
        if isinstance(declared, int) and codec.vocab_size > declared:
            raise BundleError(
                f"{path}: tokenizer {file!r} has {codec.vocab_size} tokens, manifest vocab_size.{role} is {declared}"
            )
        codecs[role] = codec
    return Bundle(manifest, path, graphs, codecs)


class ModelRepository:
    """Owns every version's state. ``refresh`` scans the directory; a poll task calls it every
    ``poll_interval_s``. A version serves only once loaded and warmed up; one that fails is
    FAILED and never replaces a good one; retired versions finish in-flight work first."""

    def __init__(
        self,
        config: ServeConfig,
        build: Callable[[Bundle], TaskModel],
        run_executor: Executor,
        on_change: Callable[[], None] = lambda: None,
        sink: Sink = NULL_SINK,
    ) -> None:
        self.root = Path(config.models)
        self._sink = sink
        self._config = config
        self._build = build
        self._run_executor = run_executor
        self._defaults: dict[str, str | None] = {}  # default_name per task, until a version changes state

        def changed() -> None:
            self._defaults.clear()
            on_change()

        self._on_change = changed
        self._options = RuntimeOptions(
            intra_op_threads=config.intra_op_threads, inter_op_threads=config.inter_op_threads,
            graph_optimization=config.graph_optimization, inline_ms=config.inline_graph_ms,
            inline_idle_ms=config.inline_idle_graph_ms,
        )
        self._models: dict[str, dict[str, ModelVersion]] = {}
        self._lock = asyncio.Lock()
        self._poll: asyncio.Task | None = None
        self._retiring: set[asyncio.Task] = set()
        self._load_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seqserve-load")
        self._missing_logged = False

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load what is there now, then poll."""
        await self.refresh()
        if self._config.poll_interval_s > 0 and self._poll is None:
            self._poll = asyncio.get_running_loop().create_task(self._poll_loop(), name="repository poll")

    async def stop(self, grace_s: float = 0.0) -> None:
        """Stop polling and unload every version (in-flight work gets ``grace_s``)."""
        if self._poll is not None:
            self._poll.cancel()
            try:
                await self._poll
            except asyncio.CancelledError:
                pass
            self._poll = None
        async with self._lock:
            for entries in self._models.values():
                for entry in entries.values():
                    if entry.state == READY:
                        self._retire(entry, grace_s)
            if self._retiring:
                await asyncio.gather(*self._retiring, return_exceptions=True)
        self._load_executor.shutdown(wait=False)

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self._config.poll_interval_s)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - polling must survive anything
                log.exception("repository scan of %s failed", self.root)

    # ------------------------------------------------------------ scanning

    def _discover(self) -> dict[str, dict[str, Path]]:
        found: dict[str, dict[str, Path]] = {}
        try:
            name_dirs = sorted(self.root.iterdir())
        except OSError as err:
            if not self._missing_logged:
                log.warning("model repository %s is not readable: %s", self.root, err)
                self._missing_logged = True
            return found
        self._missing_logged = False
        for name_dir in name_dirs:
            if not _valid("name", name_dir.name) or name_dir.is_symlink() or not name_dir.is_dir():
                continue
            try:
                version_dirs = list(name_dir.iterdir())
            except OSError:
                continue
            for vdir in version_dirs:
                if not _valid("version", vdir.name) or vdir.is_symlink() or not vdir.is_dir():
                    continue
                found.setdefault(name_dir.name, {})[vdir.name] = vdir
        return found

    async def refresh(self) -> None:
        """Scan the repository once: load new versions (newest first) until ``keep_versions`` are
        READY per model, retry FAILED ones whose files changed, retire the rest."""
        async with self._lock:
            on_disk = await asyncio.get_running_loop().run_in_executor(self._load_executor, self._discover)
            for name in sorted(set(on_disk) | set(self._models)):
                await self._refresh_model(name, on_disk.get(name, {}))

    async def _refresh_model(self, name: str, disk: dict[str, Path]) -> None:
        entries = self._models.setdefault(name, {})
        for version in [v for v, e in entries.items() if v not in disk and e.state == FAILED]:
            del entries[version]  # its directory is gone: forget the failure
        chosen: list[str] = []
        for version in sorted(disk, key=int, reverse=True):
            if len(chosen) >= self._config.keep_versions:
                break
            entry = entries.get(version)
            if entry is not None and entry.state == READY:
                chosen.append(version)
                continue
            if entry is not None and entry.state in (LOADING, UNLOADING):
                continue
            fp = fingerprint(disk[version])
            if entry is not None and entry.state == FAILED and entry.fingerprint == fp:
                continue
            if await self._load(name, version, disk[version], fp):
                chosen.append(version)
        for version, entry in list(entries.items()):
            if entry.state == READY and version not in chosen:
                self._retire(entry, self._config.grace_s)
        if not entries:
            del self._models[name]

    async def _load(self, name: str, version: str, path: Path, fp: tuple) -> bool:
        entry = ModelVersion(name, version, path, LOADING, fp)
        self._models[name][version] = entry
        self._on_change()
        loop = asyncio.get_running_loop()
        model = None
        start = time.perf_counter()
        stage = "bundle"  # what failed, for seqserve_model_load_failures_total{reason}
        try:
            bundle = await loop.run_in_executor(
                self._load_executor, open_bundle, path, name, version, self._options, self._run_executor
            )
            entry.manifest = bundle.manifest
            stage = "build"
            model = self._build(bundle)
            model.start()
            stage = "warmup"
            await model.warmup()
        except asyncio.CancelledError:  # shutting down mid-load: leave nothing running
            entry.state, entry.error, entry.fingerprint = FAILED, "loading was cancelled", ()
            if model is not None:
                await model.close()
            raise
        except Exception as err:  # noqa: BLE001 - any failure leaves the version FAILED
            entry.state = FAILED
            entry.error = str(err) if isinstance(err, BundleError) else f"{type(err).__name__}: {err}"
            if isinstance(err, BundleError):
                log.warning("model %s version %s is not loadable: %s", name, version, entry.error)
            else:
                log.error("model %s version %s failed to load", name, version, exc_info=err)
            if model is not None:
                await model.close()
            self._sink.model_load_failed(name, version, stage, time.perf_counter() - start)
            self._on_change()
            return False
        entry.model = model
        entry.state = READY
        entry.loaded_at = time.time()
        seconds = time.perf_counter() - start
        self._sink.model_loaded(name, version, entry.task, bundle.manifest.cell, seconds)
        log.info("model %s version %s (%s) ready in %.2f s", name, version, entry.task, seconds)
        self._on_change()
        return True

    def _retire(self, entry: ModelVersion, grace_s: float) -> None:
        entry.state = UNLOADING
        self._on_change()
        task = asyncio.get_running_loop().create_task(self._unload(entry, grace_s), name=f"unload {entry.name}/{entry.version}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _unload(self, entry: ModelVersion, grace_s: float) -> None:
        if not await entry.wait_idle(grace_s):
            log.warning("model %s version %s unloads with %d requests still running", entry.name, entry.version, entry.inflight)
        try:
            await entry.model.close()
        except Exception:  # noqa: BLE001
            log.exception("closing model %s version %s failed", entry.name, entry.version)
        entries = self._models.get(entry.name, {})
        if entries.get(entry.version) is entry:
            del entries[entry.version]
            if not entries:
                self._models.pop(entry.name, None)
        self._sink.model_unloaded(entry.name, entry.version)
        log.info("model %s version %s unloaded", entry.name, entry.version)
        self._on_change()

    # ------------------------------------------------------------ lookups (never touch the disk)

    def versions(self) -> list[ModelVersion]:
        """Every known version, by name then version number."""
        return [e for name in sorted(self._models) for e in sorted(self._models[name].values(), key=lambda e: e.number)]

    def ready(self, task: str | None = None) -> list[ModelVersion]:
        return [e for e in self.versions() if e.state == READY and (task is None or e.task == task)]

    def default_name(self, task: str) -> str | None:
        """The model that answers requests with an empty name: the one whose newest version's
        manifest has ``"default": true`` (``Manifest.default``; alphabetically first if several), else the first name.
        Remembered until a version becomes or stops being READY (every such change calls ``_on_change``)."""
        if task in self._defaults:
            return self._defaults[task]
        self._defaults[task] = name = self._default_name(task)
        return name

    def _default_name(self, task: str) -> str | None:
        newest: dict[str, ModelVersion] = {}
        for e in self.ready(task):
            newest[e.name] = e  # versions() is sorted, so the last one wins
        if not newest:
            return None
        marked = [n for n, e in newest.items() if e.manifest is not None and e.manifest.default]
        return sorted(marked or newest)[0]

    def find(self, name: str, version: str = "") -> ModelVersion:
        """The entry for name/version in any state ("" = newest READY, else newest of any state).
        Raises NotFound naming what is missing."""
        entries = self._models.get(name) if isinstance(name, str) else None
        if not entries:
            known = sorted(self._models)
            listed = ", ".join(known[:20]) + (f" and {len(known) - 20} more" if len(known) > 20 else "")
            raise NotFound(f"model {name!r} not found; the models are: {listed or 'none'}", field="model")
        if version:
            entry = entries.get(version)
            if entry is None:
                versions = ", ".join(sorted(entries, key=int))
                raise NotFound(f"model {name!r} has no version {version!r}; its versions are: {versions}",
                               field="version")
            return entry
        ready = [e for e in entries.values() if e.state == READY]
        return max(ready or entries.values(), key=lambda e: e.number)

    def find_ready(self, name: str, version: str = "") -> ModelVersion:
        """The READY entry for name/version ("" = the newest READY). Raises NotFound (unknown
        name/version) or Unavailable (loading, failed or unloading)."""
        entry = self.find(name, version)
        if entry.state != READY:
            if version:
                raise Unavailable(f"model {name!r} version {version} is {entry.state}", field="version")
            raise Unavailable(f"model {name!r} has no loaded version (newest, {entry.version}, is {entry.state})", field="model")
        return entry

    def resolve(self, task: str, name: str, version: str) -> ModelVersion:
        """The READY version that serves a request. Raises NotFound (unknown name/version),
        Unavailable (nothing loaded) or InvalidArgument (a model of another task)."""
        if not name:
            default = self.default_name(task)
            if default is None:
                raise Unavailable(f"no {task} model is loaded")
            name = default
        entry = self.find_ready(name, version)
        if entry.task != task:
            raise InvalidArgument(f"model {name!r} is a {entry.task} model, not a {task} model", field="model")
        return entry


def _valid(kind: str, value: str) -> bool:
    try:
        check_name(kind, value)
    except BundleError:
        return False
    return True
