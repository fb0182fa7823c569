"""Step-level (continuous) batching of autoregressive decoding: every active stream or beam
advances through one shared decoder call per step; streams join and leave between steps."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np

from service.inference.steps import StepLayout

from .errors import (
    DeadlineExceeded,
    Internal,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from .observe import NULL_METER, GraphMeter, label_request
from .shared import SharedCounts
from .runtime import GraphRuntime

log = logging.getLogger(__name__)


class StreamSlots:
    """The server-wide cap on concurrently admitted generation streams and translation beam
    searches (one slot per sentence, whatever its beam). Full -> ResourceExhausted at once. With
    ``shared`` (``serve --workers N``) the count is every worker process's together."""

    def __init__(self, capacity: int, shared: SharedCounts | None = None) -> None:
        self.capacity = capacity
        self._shared = shared
        self._in_use = 0

    @property
    def in_use(self) -> int:
        return self._in_use if self._shared is None else self._shared.total("streams")

    def acquire(self, n: int = 1) -> "SlotLease":
        """Take ``n`` slots now or raise ResourceExhausted; release them with the lease."""
        if self._shared is None:
            refused = self._in_use if self._in_use + n > self.capacity else None
        else:
            refused = self._shared.try_add("streams", n, self.capacity)
        if refused is not None:
            label_request(reason="streams_full")
            if n > self.capacity:
                raise ResourceExhausted(f"request needs {n} decoding streams; the server admits at most {self.capacity}")
            raise ResourceExhausted(
                f"{refused} of {self.capacity} decoding streams are in use; {n} more requested; retry later"
            )
        if self._shared is None:
            self._in_use += n
        return SlotLease(self, n)

    def _release(self, n: int) -> None:
        if self._shared is None:
            self._in_use -= n
        else:
            self._shared.add("streams", -n)

    @contextmanager
    def hold(self, n: int = 1) -> Iterator[None]:
        lease = self.acquire(n)
        try:
            yield
        finally:
            lease.release()


class SlotLease:
    """Slots taken from StreamSlots; release() is idempotent."""

    def __init__(self, slots: StreamSlots, n: int) -> None:
        self._slots = slots
        self._n = n

    def release(self) -> None:
        if self._n:
            self._slots._release(self._n)
            self._n = 0


class StepItem:
    """One participant of the step loop: a generation stream (1 row) or a beam search (one row
    per live hypothesis). Subclasses keep their own state, sampler and RNG."""

    rows: int = 1  # rows this item contributes to the next call
    deadline: float | None = None  # time.monotonic() value
    cancelled: bool = False  # set by the owner; the loop drops the item before the next step
    serial: int = 0  # set by StepScheduler.add; unique per scheduler (ids of dead objects get reused)
    multi_step: bool = False  # the class decodes several steps per round with run_steps

    def step_feeds(self) -> dict[str, np.ndarray]:
        """Per-step inputs: state tensors (L, rows, H), everything else (rows, ...)."""
        raise NotImplementedError

    def static_feeds(self) -> dict[str, np.ndarray]:
        """Inputs fixed while ``rows`` is unchanged, (rows, S, ...); padded along S to the step's
        longest. Items should cache them."""
        return {}

    def advance(self, outputs: dict[str, np.ndarray]) -> bool:
        """Consume this item's rows of one call's outputs; return True when finished."""
        raise NotImplementedError

    @classmethod
    def advance_many(cls, items: list["StepItem"], bounds: list[tuple[int, int]], outputs: dict[str, np.ndarray],
                     layout: StepLayout) -> list[bool | Exception]:
        """Advance ``items`` (all of this class) with their rows ``bounds`` of one call's outputs:
        per item, finished or the exception it raised. Subclasses override it to work on all their
        rows at once (one vectorised sampling pass per step)."""
        results: list[bool | Exception] = []
        for it, (lo, hi) in zip(items, bounds):
            try:
                results.append(it.advance(layout.split(outputs, lo, hi)))
            except Exception as err:  # noqa: BLE001 - one broken item must not stop the others
                results.append(err)
        return results

    @classmethod
    def run_steps(cls, items: list["StepItem"], feeds: dict[str, np.ndarray], steps: int,
                  run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
                  layout: StepLayout, more: Callable[[list[dict[str, np.ndarray]]], bool] | None = None,
                  ) -> list[dict[str, np.ndarray]]:
        """``steps`` steps of ``items`` at once, on a worker thread (classes with ``multi_step``):
        each step's outputs, with what ``advance_many`` needs to replay the step without choosing
        again. With ``more``, it may go on with further rounds (none of the items can have ended),
        handing each finished round to ``more``, which returns False when the loop wants it back
        (the last round is the result). Must not touch the event loop."""
        raise NotImplementedError

    @classmethod
    def advance_steps(cls, items: list["StepItem"], bounds: list[tuple[int, int]], steps: list[dict[str, np.ndarray]],
                      layout: StepLayout) -> list[bool | Exception]:
        """Advance ``items`` through every step of their ``run_steps`` round in one pass (an item that
        finishes at one step ignores the later ones): per item, finished or the exception it raised.
        ``settle_many`` follows once per round (classes with ``multi_step``)."""
        raise NotImplementedError

    @classmethod
    def settle_many(cls, items: list["StepItem"]) -> list[bool | Exception]:
        """What is left of the last ``advance_many`` (or ``advance_steps``: the whole round) that the
        next step's inputs do not need (detokenising, queueing text): the loop calls it once the next
        call is running. Per item, finished (an item may finish here and still be part of that call:
        its rows are ignored) or the exception it raised."""
        return [False] * len(items)

    def fail(self, error: ServiceError) -> None:
        """Finish with an error (deadline, shutdown, graph failure)."""
        raise NotImplementedError


class StepScheduler:
    """One loop per decoder graph. ``add`` an item; it advances one step per shared call until its
    ``advance`` returns True, it is cancelled, or its deadline passes."""

    def __init__(
        self,
        name: str,
        runtime: GraphRuntime,
        layout: StepLayout,
        meter: GraphMeter = NULL_METER,
        max_streams_per_step: int = 0,
        decode_steps: int = 1,
    ) -> None:
        self.name = name
        self.max_streams_per_step = max_streams_per_step  # 0 = all active streams share each call
        self.decode_steps = decode_steps  # steps per round where every item's class has run_steps
        self._meter = meter
        self._runtime = runtime
        self._layout = layout
        self._pending: list[StepItem] = []
        self._active: list[StepItem] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task | None = None
        self._closed = False
        self._static_key: tuple | None = None
        self._static: dict[str, np.ndarray] = {}
        self._serial = 0

    @property
    def active(self) -> int:
        return len(self._active) + len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"scheduler {self.name}")
            self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task) -> None:
        """The loop only ends when close() cancels it: anything else is a bug, said loudly."""
        if not task.cancelled() and task.exception() is not None:
            log.critical("%s: the step loop died; its streams fail", self.name, exc_info=task.exception())
            for item in self._pending + self._active:
                item.fail(Internal(f"decoding failed in {self.name}"))
            self._pending.clear()
            self._active.clear()

    def add(self, item: StepItem) -> None:
        """Join the loop before its next step. Raises Unavailable after close()."""
        if self._closed:
            raise Unavailable(f"{self.name} is shutting down")
        self._serial += 1
        item.serial = self._serial
        self._pending.append(item)
        self._meter.streams(self.active)
        self._idle.clear()
        self._wake.set()

    def remove(self, item: StepItem) -> None:
        """Leave at once (no-op when already gone): the item is not part of any later call."""
        item.cancelled = True
        for group in (self._pending, self._active):
            if item in group:
                group.remove(item)
        self._meter.streams(self.active)
        if not self._pending and not self._active:
            self._idle.set()

    async def close(self, grace_s: float = 0.0) -> None:
        """Refuse new items, let active ones finish within ``grace_s``, fail the rest with Unavailable."""
        self._closed = True
        if grace_s > 0:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=grace_s)
            except asyncio.TimeoutError:
                pass
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for item in self._pending + self._active:
            item.fail(Unavailable(f"{self.name} shut down before the request finished"))
        self._pending.clear()
        self._active.clear()
        self._meter.clear()  # the version is going away: drop its gauges
        self._idle.set()

    def _stack(self, items: list[StepItem]) -> dict[str, np.ndarray]:
        feeds = self._layout.stack([it.step_feeds() for it in items])
        if self._layout.padded_inputs:
            key = tuple((it.serial, it.rows) for it in items)
            if key != self._static_key:  # membership or row counts changed: rebuild
                self._static = self._layout.pad([it.static_feeds() for it in items])
                self._static_key = key
            feeds.update(self._static)
        return feeds

    def _admit(self) -> list[StepItem]:
        self._active.extend(self._pending)
        self._pending.clear()
        now = time.monotonic()
        live: list[StepItem] = []
        for item in self._active:
            if item.cancelled:
                continue
            if item.deadline is not None and now >= item.deadline:
                item.fail(DeadlineExceeded(f"deadline passed while decoding in {self.name}"))
                continue
            live.append(item)
        self._active = live
        self._meter.streams(self.active)
        return list(live)

    async def _loop(self) -> None:
        call: _Call | None = None
        while True:
            if self.max_streams_per_step:
                # Groups of at most that many streams, one call after the other (1 = batching off).
                items = self._admit()
                if not items:
                    await self._sleep()
                    continue
                group = self.max_streams_per_step
                for k in range(0, len(items), group):
                    if (grouped := self._launch(items[k : k + group])) is not None:
                        self._settle(await self._finish(grouped))
                continue
            # Continuous batching: every stream advances through one shared call. Once a step's
            # tokens are chosen the next call starts, and the step's text is produced while it runs
            # (onnxruntime releases the GIL), as vLLM's asynchronous output processing does.
            if call is None:
                items = self._admit()
                if not items:
                    await self._sleep()
                    continue
                call = self._launch(items, chain=True)
                if call is None:
                    continue
            advanced = await self._finish(call)
            if call.inline:  # nothing would run beside the text: produce it first, as it came
                self._settle(advanced)
                items = self._admit()
                call = self._launch(items, chain=True) if items else None
            else:
                items = self._admit()
                call = self._launch(items, chain=True) if items else None
                self._settle(advanced)

    async def _sleep(self) -> None:
        self._idle.set()
        self._wake.clear()
        await self._wake.wait()

    def _launch(self, items: list[StepItem], chain: bool = False) -> "_Call | None":
        """Start one decoder call for ``items`` (fixing each item's rows of it); None when their
        inputs could not be put together (each item then failed, the loop goes on)."""
        try:
            return self._start_call(items, chain)
        except Exception as err:  # noqa: BLE001 - a bug in one item's feeds must not stop the loop
            log.error("%s: could not stack a decoding step", self.name, exc_info=err)
            for it in items:
                it.fail(Internal(f"decoding failed in {self.name}"))
                self.remove(it)
            return None

    def _start_call(self, items: list[StepItem], chain: bool = False) -> "_Call":
        """With ``chain``, a multi-step call may run several rounds before it returns (``_more``)."""
        bounds = []
        start = 0
        for it in items:  # rows may change in advance(): fix the slices first
            bounds.append((start, start + it.rows))
            start += it.rows
        mark = [time.monotonic()]  # when the call started, then when its worker handed over its last round
        feeds = self._stack(items)
        kind = type(items[0])
        if self.decode_steps > 1 and kind.multi_step and all(type(it) is kind for it in items):
            steps, layout = self.decode_steps, self._layout
            more = self._more(items, bounds, mark) if chain else None
            task = self._runtime.start(feeds, lambda run, f: kind.run_steps(items, f, steps, run, layout, more))
        else:
            task = self._runtime.start(feeds)
        return _Call(items, bounds, task, mark, task.done())

    def _more(self, items: list[StepItem], bounds: list[tuple[int, int]], mark: list[float]
              ) -> Callable[[list[dict[str, np.ndarray]]], bool]:
        """For a multi-step call's worker thread: after each round, go on (True, the round handed to
        the loop, which makes its text while the next round runs: no hand-off between rounds, the
        batch's inputs kept on the worker as vLLM's persistent batch keeps them) while nothing
        changes, or stop (False: the loop takes the round as the call's result). Something changes
        when an item waits to join, an item left (cancelled, finished, failed), a deadline passed or
        the loop closes; read across threads, so a change seen one round late costs that round, whose
        rows of a gone item are ignored as any call's are."""
        loop = asyncio.get_running_loop()
        deadlines = [it.deadline for it in items if it.deadline is not None]
        first = min(deadlines, default=math.inf)

        def more(steps: list[dict[str, np.ndarray]]) -> bool:
            now = time.monotonic()
            if self._closed or self._pending or now >= first or any(it.cancelled for it in items):
                return False
            loop.call_soon_threadsafe(self._take_round, items, bounds, steps, (now - mark[0]) / len(steps))
            mark[0] = now
            return True

        return more

    def _take_round(self, items: list[StepItem], bounds: list[tuple[int, int]], steps: list[dict[str, np.ndarray]],
                    took: float) -> None:
        """A round a worker handed over while it runs the next: advance and settle its items."""
        if self._closed:
            return
        self._record(bounds, len(steps), took)
        self._settle(self._advance(items, bounds, steps))

    async def _finish(self, call: "_Call") -> list[tuple[type[StepItem], list[StepItem]]]:
        """Wait for ``call``; every item still in the loop advances (or fails) with its rows of the
        outputs. Returns the items that advanced, by class, for ``_settle``."""
        try:
            if call.task.done():  # ran inline: still let the streams' consumers run
                await asyncio.sleep(0)
            outputs = await call.task
        except ServiceError as err:
            for it in call.items:
                if not it.cancelled:
                    it.fail(err)
                self.remove(it)
            return []
        steps = len(outputs) if isinstance(outputs, list) else 1  # a multi-step round's, or one
        self._record(call.bounds, steps, (time.monotonic() - call.mark[0]) / steps)
        return self._advance(call.items, call.bounds, outputs)

    def _record(self, bounds: list[tuple[int, int]], steps: int, took: float) -> None:
        """``steps`` calls of the graph, ``took`` seconds each, on the rows ``bounds`` cover."""
        for _ in range(steps):
            self._meter.batch(bounds[-1][1], took)

    def _advance(self, items: list[StepItem], bounds: list[tuple[int, int]],
                 outputs: dict[str, np.ndarray] | list[dict[str, np.ndarray]]) -> list[tuple[type[StepItem], list[StepItem]]]:
        """Every item still in the loop advances (or fails) with its rows of one call's outputs
        (a list: a multi-step round's, which each class takes in one pass)."""
        multi = isinstance(outputs, list)
        groups: dict[type[StepItem], list[int]] = {}  # items still here, by class (one pass each)
        for i, it in enumerate(items):
            if not it.cancelled:  # left while the call ran
                groups.setdefault(type(it), []).append(i)
        advanced = []
        for cls, members in groups.items():
            group, rows = [items[i] for i in members], [bounds[i] for i in members]
            try:
                results = (cls.advance_steps(group, rows, outputs, self._layout) if multi
                           else cls.advance_many(group, rows, outputs, self._layout))
            except Exception as err:  # noqa: BLE001 - a failed pass fails its items, not the loop
                results = [err] * len(group)
            advanced.append((cls, self._conclude(group, results)))
        return advanced

    def _settle(self, advanced: list[tuple[type[StepItem], list[StepItem]]]) -> None:
        for cls, group in advanced:
            try:
                results = cls.settle_many(group)
            except Exception as err:  # noqa: BLE001
                results = [err] * len(group)
            self._conclude(group, results)

    def _conclude(self, items: list[StepItem], results: list[bool | Exception]) -> list[StepItem]:
        """Remove the items that finished, failing those that raised; returns the rest that
        advanced without error."""
        ok = []
        for it, done in zip(items, results):
            if isinstance(done, Exception):
                log.error("%s: decoding step failed", self.name, exc_info=done)
                it.fail(Internal(f"decoding failed in {self.name}"))
                self.remove(it)
                continue
            ok.append(it)
            if done:
                self.remove(it)
        return ok


class _Call(NamedTuple):
    """One decoder call in flight: its items, their rows, the graph run, when it started."""

    items: list[StepItem]
    bounds: list[tuple[int, int]]
    task: asyncio.Future
    mark: list[float]  # [when it started], then when its worker handed over a round (_more)
    inline: bool  # it ran in the event loop's thread, done before start() returned
