"""Dynamic batching: queue bound, deadlines, grouping, failures; batched results equal unbatched."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.core.batching import DynamicBatcher
from service.core.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from service.core.observe import begin_request
from service.core.repository import open_bundle
from service.core.runtime import RuntimeOptions
from service.core.types import ForecastRequest, TranslateRequest
from tests.integration.harness import metric_value
from tests.unit.service.recorded import step_calls


class Recorder:
    """A run_batch that records each call and can be held until released."""

    def __init__(self, hold: bool = False) -> None:
        self.calls: list[list] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        if not hold:
            self.release.set()

    async def __call__(self, payloads: list) -> list:
        self.calls.append(list(payloads))
        self.started.set()
        await self.release.wait()
        return [p * 10 for p in payloads]


async def test_batches_up_to_max_size_and_keeps_order():
    rec = Recorder()
    b = DynamicBatcher("t", rec, max_batch_size=4, max_wait_s=0.05, max_queue=100)
    b.start()
    results = await asyncio.gather(*(b.submit(i) for i in range(10)))
    await b.close()
    assert results == [i * 10 for i in range(10)]
    assert all(len(c) <= 4 for c in rec.calls) and sum(len(c) for c in rec.calls) == 10
    assert len(rec.calls) == 3  # 4 + 4 + 2


async def test_up_to_max_concurrent_batches_run_at_once_and_the_rest_queue():
    rec = Recorder(hold=True)
    b = DynamicBatcher("t", rec, max_batch_size=2, max_wait_s=0.0, max_queue=100, max_concurrent=2)
    b.start()
    pending = [asyncio.ensure_future(b.submit(i)) for i in range(6)]
    for _ in range(50):  # let the loop dispatch what it can
        await asyncio.sleep(0)
    assert len(rec.calls) == 2 and b.queued == 6 - sum(map(len, rec.calls))  # two workers busy, the rest wait
    rec.release.set()
    assert await asyncio.gather(*pending) == [i * 10 for i in range(6)]
    await b.close()
    assert sorted(x for call in rec.calls for x in call) == list(range(6))
    with pytest.raises(ValueError, match="max_concurrent"):
        DynamicBatcher("t", rec, max_batch_size=1, max_wait_s=0.0, max_queue=1, max_concurrent=0)


async def test_groups_never_mix_keys():
    rec = Recorder()
    b = DynamicBatcher("t", rec, max_batch_size=8, max_wait_s=0.05, max_queue=100, key=lambda p: p % 3)
    b.start()
    results = await asyncio.gather(*(b.submit(i) for i in range(8)))
    await b.close()
    assert results == [i * 10 for i in range(8)]
    assert all(len({p % 3 for p in call}) == 1 for call in rec.calls)


async def test_full_queue_is_rejected_at_once():
    rec = Recorder(hold=True)
    b = DynamicBatcher("forecaster", rec, max_batch_size=1, max_wait_s=0.0, max_queue=2)
    b.start()
    running = asyncio.ensure_future(b.submit(1))
    await rec.started.wait()  # 1 is running (held); the next two wait in the queue
    waiting = [asyncio.ensure_future(b.submit(i)) for i in (2, 3)]
    await asyncio.sleep(0)  # let them enqueue (a yield, not a timed wait)
    assert b.queued == 2
    labels = begin_request()  # what the interceptor reads when the RPC ends
    with pytest.raises(ResourceExhausted, match=r"queue of forecaster is full \(2 requests waiting\)"):
        await b.submit(4)
    assert labels.reason == "queue_full"
    rec.release.set()
    assert await asyncio.gather(running, *waiting) == [10, 20, 30]
    await b.close()


async def test_a_caller_that_gives_up_frees_its_place_in_the_queue_at_once():
    rec = Recorder(hold=True)
    b = DynamicBatcher("forecaster", rec, max_batch_size=1, max_wait_s=0.0, max_queue=2)
    b.start()
    running = asyncio.ensure_future(b.submit(1))
    await rec.started.wait()  # 1 is running (held)
    gone = [asyncio.ensure_future(b.submit(i)) for i in (2, 3)]
    await asyncio.sleep(0)
    assert b.queued == 2
    for task in gone:  # their deadlines pass: gRPC cancels the handlers
        task.cancel()
    await asyncio.gather(*gone, return_exceptions=True)
    assert b.queued == 0  # the queue bound counts live callers only
    waiting = [asyncio.ensure_future(b.submit(i)) for i in (4, 5)]
    await asyncio.sleep(0)
    assert b.queued == 2
    rec.release.set()
    assert await asyncio.gather(running, *waiting) == [10, 40, 50]
    assert [c for call in rec.calls for c in call] == [1, 4, 5]  # 2 and 3 never ran
    await b.close()


async def test_expired_work_is_dropped_before_it_runs():
    rec = Recorder(hold=True)
    b = DynamicBatcher("t", rec, max_batch_size=1, max_wait_s=0.0, max_queue=10)
    b.start()
    first = asyncio.ensure_future(b.submit(1))
    await rec.started.wait()
    late = asyncio.ensure_future(b.submit(2, deadline=time.monotonic() - 0.001))  # expires while queued
    fine = asyncio.ensure_future(b.submit(3, deadline=time.monotonic() + 60))
    await asyncio.sleep(0)  # let them enqueue behind the running batch
    rec.release.set()
    assert await first == 10 and await fine == 30
    with pytest.raises(DeadlineExceeded):
        await late
    assert [c for call in rec.calls for c in call] == [1, 3]  # 2 never ran
    await b.close()


async def test_a_failed_batch_fails_each_request():
    async def broken(payloads):
        raise ValueError("boom")

    b = DynamicBatcher("t", broken, max_batch_size=4, max_wait_s=0.05, max_queue=10)
    b.start()
    results = await asyncio.gather(*(b.submit(i) for i in range(3)), return_exceptions=True)
    await b.close()
    assert all(isinstance(r, ValueError) and str(r) == "boom" for r in results)


async def test_forecast_batched_equals_unbatched(engine):
    rng = np.random.default_rng(0)
    # lengths below, at and above the window (24): different lengths never share a call
    histories = [rng.normal(size=(n, 1)).cumsum(0) * s for n, s in [(8, 1.0), (24, 5.0), (30, 0.1), (8, 100.0), (12, 1.0), (24, 1.0)]]
    alone = [await engine.forecast(ForecastRequest(history=h)) for h in histories]
    together = await asyncio.gather(*(engine.forecast(ForecastRequest(history=h)) for h in histories))
    for a, t in zip(alone, together):
        np.testing.assert_allclose(t.quantile_paths, a.quantile_paths, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(t.forecast, a.forecast, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-translate", "gru-translate"])
def test_encoder_padding_does_not_change_results(built, name):
    with ThreadPoolExecutor(1) as pool:
        bundle = open_bundle(built[name], name, "1", RuntimeOptions(), pool)
        pad = bundle.manifest.special_tokens["pad"]
        enc = bundle.graphs["encoder"]
        sentences = [[5, 9, 14, 7, 30], [11, 4], [8, 8, 8]]
        batch = np.full((3, 5), pad, dtype=np.int64)
        for b, s in enumerate(sentences):
            batch[b, : len(s)] = s
        together = enc.run_sync({"src": batch, "src_len": np.array([5, 2, 3], dtype=np.int64)})
        for b, s in enumerate(sentences):
            alone = enc.run_sync({"src": np.array([s], dtype=np.int64), "src_len": np.array([len(s)], dtype=np.int64)})
            n = len(s)
            np.testing.assert_allclose(together["memory"][b, :n], alone["memory"][0], atol=1e-5)
            np.testing.assert_allclose(together["memory_keys"][b, :n], alone["memory_keys"][0], atol=1e-5)
            np.testing.assert_allclose(together["state_h"][:, b], alone["state_h"][:, 0], atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-translate", "gru-translate"])
async def test_translate_batched_equals_unbatched(tmp_path, add_bundle, make_engine, name):
    add_bundle(tmp_path, name)
    engine = await make_engine(tmp_path, max_batch_wait_ms=20.0)
    texts = ["Ein Mann fährt Fahrrad.", "Zwei Hunde", "Die Katze schläft auf dem Sofa.", "Ein Kind liest ein Buch."]
    for beam in (1, 3):
        alone = [await engine.translate(TranslateRequest(texts=[t], beam_size=beam, return_attention=True)) for t in texts]
        one_request = await engine.translate(TranslateRequest(texts=texts, beam_size=beam, return_attention=True))
        concurrent = await asyncio.gather(
            *(engine.translate(TranslateRequest(texts=[t], beam_size=beam, return_attention=True)) for t in texts)
        )
        for i, a in enumerate(alone):
            want = a.translations[0]
            for got in (one_request.translations[i], concurrent[i].translations[0]):
                assert got.tokens == want.tokens and got.text == want.text
                assert got.score == pytest.approx(want.score, abs=1e-4)
                np.testing.assert_allclose(got.attention, want.attention, atol=1e-5)


@pytest.mark.parametrize("per_step", [1, 2])
async def test_decoding_in_small_step_groups_gives_the_same_results(tmp_path, add_bundle, make_engine, per_step):
    """max_streams_per_step (1 = batching off, the benchmark baseline) changes how many decoder
    calls are made, never what they compute."""
    add_bundle(tmp_path, "tiny-translate")
    shared = await make_engine(tmp_path, decoder_lanes=1)
    grouped = await make_engine(tmp_path, max_streams_per_step=per_step, decoder_lanes=1)
    texts = ["Ein Mann fährt Fahrrad.", "Zwei Hunde", "Die Katze schläft auf dem Sofa.", "Ein Kind liest ein Buch."]
    for beam in (1, 3):
        shared_steps, _ = step_calls(shared, "decoder_step")
        steps, rows = step_calls(grouped, "decoder_step")
        want = await asyncio.gather(*(shared.translate(TranslateRequest(texts=[t], beam_size=beam)) for t in texts))
        got = await asyncio.gather(*(grouped.translate(TranslateRequest(texts=[t], beam_size=beam)) for t in texts))
        for w, g in zip(want, got):
            assert g.translations[0].tokens == w.translations[0].tokens
            assert g.translations[0].score == pytest.approx(w.translations[0].score, abs=1e-4)
        # More, smaller calls than with every search sharing each call.
        (grouped_steps, grouped_rows), (all_steps, _) = step_calls(grouped, "decoder_step"), step_calls(shared, "decoder_step")
        assert grouped_steps - steps > all_steps - shared_steps
        if per_step == 1 and beam == 1:  # one row per call
            assert grouped_steps - steps == grouped_rows - rows


async def test_decoder_lanes_split_the_beam_searches_and_change_no_result(tmp_path, add_bundle, make_engine):
    """--decoder-lanes 2: concurrent beam searches go to two step loops (more, smaller decoder calls),
    greedy sentences all to the first (the same calls as one loop); every sentence is translated
    exactly as in one shared loop; the streams gauge counts both lanes."""
    add_bundle(tmp_path, "tiny-translate")
    one = await make_engine(tmp_path, decoder_lanes=1)
    two = await make_engine(tmp_path, decoder_lanes=2)
    texts = ["Ein Mann fährt Fahrrad.", "Zwei Hunde", "Die Katze schläft auf dem Sofa.", "Ein Kind liest ein Buch."]
    for beam in (1, 3):
        before_one, before_two = step_calls(one, "decoder_step")[0], step_calls(two, "decoder_step")[0]
        want = await asyncio.gather(*(one.translate(TranslateRequest(texts=[t], beam_size=beam)) for t in texts))
        got = await asyncio.gather(*(two.translate(TranslateRequest(texts=[t], beam_size=beam)) for t in texts))
        for w, g in zip(want, got):
            assert g.translations[0].tokens == w.translations[0].tokens
            assert g.translations[0].score == pytest.approx(w.translations[0].score, abs=1e-4)
        calls_one = step_calls(one, "decoder_step")[0] - before_one
        calls_two = step_calls(two, "decoder_step")[0] - before_two
        if beam == 1:
            assert calls_two == calls_one
        else:
            assert calls_two > calls_one
    assert metric_value(two.sink, "seqserve_active_streams", model="tiny-translate") == 0


def test_lane_meter_reports_the_sum_of_its_lanes_and_clears_with_the_last():
    from service.core.observe import GraphMeter, LaneMeter

    class Seen(GraphMeter):
        def __init__(self):
            self.streams_set, self.cleared, self.batches = [], 0, []

        def streams(self, n):
            self.streams_set.append(n)

        def batch(self, rows, seconds):
            self.batches.append(rows)

        def clear(self):
            self.cleared += 1

    seen = Seen()
    shared = LaneMeter(seen, 2)
    a, b = shared.lane(0), shared.lane(1)
    a.streams(3)
    b.streams(2)
    a.streams(1)
    a.batch(12, 0.01)
    assert seen.streams_set == [3, 5, 3] and seen.batches == [12]
    a.clear()
    assert seen.cleared == 0  # the other lane still decodes
    b.clear()
    assert seen.cleared == 1


async def test_closing_a_batcher_whose_loop_never_ran_fails_what_is_queued():
    """A request queued where no loop will ever run it (the version is closed before it started)
    gets UNAVAILABLE instead of waiting forever."""
    rec = Recorder()
    b = DynamicBatcher("t", rec, max_batch_size=4, max_wait_s=0.0, max_queue=10)
    queued = asyncio.ensure_future(b.submit(1))
    await asyncio.sleep(0)  # enqueued
    await b.close()
    with pytest.raises(Unavailable, match="t is shutting down"):
        await asyncio.wait_for(queued, 5.0)  # not a hang
    assert rec.calls == []
