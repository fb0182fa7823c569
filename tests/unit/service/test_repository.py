"""Model repository: loading, polling, atomic swaps, failed versions, keep_versions, path safety."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.core.errors import InvalidArgument, NotFound, Unavailable
from service.core.types import FAILED, READY, ForecastRequest, GenerateRequest

HISTORY = np.sin(np.arange(30.0))[:, None]


def _edit_manifest(bundle: Path, **changes) -> None:
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _states(engine) -> dict[tuple[str, str], str]:
    return {(m.name, m.version): m.state for m in engine.list_models()}


async def test_loads_every_bundle(engine):
    infos = {m.name: m for m in engine.list_models()}
    assert set(infos) == {"tiny-forecast", "tiny-translate", "tiny-generate"}
    assert all(m.state == READY and m.is_default and m.version == "1" and m.loaded_at > 0 for m in infos.values())
    assert all(engine.task_ready(t) for t in ("forecast", "translate", "generate"))
    fc = infos["tiny-forecast"]
    assert fc.task == "forecast" and fc.cell == "lstm" and fc.forecast["horizon"] == 6
    assert fc.limits["window"] == 24 and fc.num_parameters > 0
    tr = infos["tiny-translate"]
    assert tr.bidirectional and tr.limits["max_source_tokens"] == 64 and tr.forecast is None
    assert engine.get_model("tiny-generate").limits["max_prompt_tokens"] == 512


async def test_new_version_swaps_in_and_old_one_retires(repo, add_bundle, make_engine):
    engine = await make_engine(repo)
    assert (await engine.forecast(ForecastRequest(history=HISTORY))).version == "1"
    add_bundle(repo, "tiny-forecast", "2")
    await engine.refresh()
    assert (await engine.forecast(ForecastRequest(history=HISTORY))).version == "2"
    assert engine.get_model("tiny-forecast").version == "2"
    assert _states(engine).get(("tiny-forecast", "1")) in (None, "UNLOADING")
    with pytest.raises((NotFound, Unavailable)):
        await engine.forecast(ForecastRequest(model="tiny-forecast", version="1", history=HISTORY))


async def test_keep_versions_serves_the_latest_n(repo, add_bundle, make_engine):
    add_bundle(repo, "tiny-forecast", "2")
    add_bundle(repo, "tiny-forecast", "10")
    engine = await make_engine(repo, keep_versions=2)
    states = _states(engine)
    assert states[("tiny-forecast", "10")] == READY and states[("tiny-forecast", "2")] == READY
    assert ("tiny-forecast", "1") not in states  # beyond the latest 2: never loaded
    assert (await engine.forecast(ForecastRequest(history=HISTORY))).version == "10"  # numeric, not lexical
    pinned = await engine.forecast(ForecastRequest(model="tiny-forecast", version="2", history=HISTORY))
    assert pinned.version == "2"
    shutil.rmtree(repo / "tiny-forecast" / "10")
    await engine.refresh()
    assert {v for (n, v), s in _states(engine).items() if n == "tiny-forecast" and s == READY} == {"1", "2"}


async def test_failed_version_never_replaces_the_good_one(repo, add_bundle, make_engine, caplog):
    engine = await make_engine(repo)
    bad = add_bundle(repo, "tiny-generate", "2")
    (bad / "lm.onnx").write_bytes(b"this is not an onnx graph")
    with caplog.at_level(logging.WARNING, logger="service.core.repository"):
        await engine.refresh()
    info = engine.get_model("tiny-generate", "2")
    assert info.state == FAILED and "graph 'lm.onnx' does not load" in info.error
    assert engine.get_model("tiny-generate").version == "1"
    assert (await engine.generate(GenerateRequest(prompt="Fir", max_tokens=3, seed=0))).version == "1"
    assert any("tiny-generate" in r.getMessage() and r.levelno >= logging.WARNING for r in caplog.records)
    with pytest.raises(Unavailable, match=r"model 'tiny-generate' version 2 is FAILED"):
        await engine.generate(GenerateRequest(model="tiny-generate", version="2", prompt="Fir"))

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="service.core.repository"):
        await engine.refresh()  # unchanged files: not retried
    assert not caplog.records and engine.get_model("tiny-generate", "2").state == FAILED

    shutil.copy(repo / "tiny-generate" / "1" / "lm.onnx", bad / "lm.onnx")  # fixed: retried, swaps in
    await engine.refresh()
    assert engine.get_model("tiny-generate").version == "2"
    assert (await engine.generate(GenerateRequest(prompt="Fir", max_tokens=3, seed=0))).version == "2"


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing_file", "named by the manifest is missing"),
        ("bad_json", "not readable JSON"),
        ("bad_schema", "cell 'transformer' is not one of"),
        ("escape", "must be a plain file name"),
        ("symlinked_graph", "missing"),
        ("wrong_suffix", "must be a plain file name"),
        ("weights", "weights 'int4' is not one of float32, int8"),
        ("frequency", "forecast.frequencies 'fortnightly' is not a frequency"),
        ("season_input", "season"),  # the manifest says the graph takes a season; this one does not
    ],
)
async def test_broken_bundles_are_recorded_failed(repo, add_bundle, make_engine, breakage, message):
    bad = add_bundle(repo, "tiny-forecast", "2")
    if breakage == "missing_file":
        (bad / "forecast.onnx").unlink()
    elif breakage == "bad_json":
        (bad / "manifest.json").write_text("{ not json")
    elif breakage == "bad_schema":
        _edit_manifest(bad, cell="transformer")
    elif breakage == "escape":
        shutil.copy(bad / "forecast.onnx", repo / "outside.onnx")
        _edit_manifest(bad, graphs={"forecast": "../../outside.onnx"})
    elif breakage == "symlinked_graph":
        (bad / "forecast.onnx").rename(repo / "real.onnx")
        (bad / "forecast.onnx").symlink_to(repo / "real.onnx")
    elif breakage == "weights":
        _edit_manifest(bad, weights="int4")
    elif breakage in ("frequency", "season_input"):
        spec = json.loads((bad / "manifest.json").read_text())["forecast"]
        _edit_manifest(bad, forecast={**spec, **({"frequencies": ["fortnightly"]} if breakage == "frequency"
                                                 else {"season_input": True})})
    elif breakage == "wrong_suffix":
        shutil.copy(bad / "forecast.onnx", bad / "forecast.so")
        _edit_manifest(bad, graphs={"forecast": "forecast.so"})
    engine = await make_engine(repo)
    info = engine.get_model("tiny-forecast", "2")
    assert info.state == FAILED and message in info.error
    assert engine.get_model("tiny-forecast").version == "1"  # the good one serves
    assert engine.task_ready("forecast")


async def test_int8_weight_bundles_serve_like_float32(repo, add_bundle, make_engine):
    onnx = pytest.importorskip("onnx")  # the training extra writes int8 bundles; serving only reads them
    from training.quantize import int8_weights

    engine = await make_engine(repo)
    want = (await engine.forecast(ForecastRequest(history=HISTORY))).quantile_paths
    v2 = add_bundle(repo, "tiny-forecast", "2")
    model, converted = int8_weights(onnx.load(str(v2 / "forecast.onnx")), min_elements=256)
    assert converted > 0
    onnx.save(model, str(v2 / "forecast.onnx"))
    _edit_manifest(v2, weights="int8")
    await engine.refresh()
    result = await engine.forecast(ForecastRequest(history=HISTORY))
    assert result.version == "2" and engine.get_model("tiny-forecast").version == "2"
    got = result.quantile_paths
    assert np.allclose(got, want, atol=0.05 * np.abs(want).max()) and not np.array_equal(got, want)


async def test_symlinked_directories_are_ignored(repo, tmp_path, make_engine):
    shutil.copytree(repo / "tiny-forecast" / "1", tmp_path / "elsewhere")
    (repo / "tiny-forecast" / "5").symlink_to(tmp_path / "elsewhere")
    (repo / "linked-model").symlink_to(repo / "tiny-forecast")
    engine = await make_engine(repo)
    assert ("tiny-forecast", "5") not in _states(engine)
    assert all(m.name != "linked-model" for m in engine.list_models())


async def test_request_names_never_reach_the_filesystem(engine):
    for name in ("../tiny-forecast", "tiny-forecast/1", "/etc/passwd", "..", "nope"):
        with pytest.raises(NotFound, match=r"model .* not found"):
            await engine.forecast(ForecastRequest(model=name, history=HISTORY))
    for version in ("../1", "2", "01x"):
        with pytest.raises(NotFound, match=r"model 'tiny-forecast' has no version"):
            await engine.forecast(ForecastRequest(model="tiny-forecast", version=version, history=HISTORY))
    with pytest.raises(NotFound, match="model 'nope' not found"):
        engine.get_model("nope")
    with pytest.raises(InvalidArgument, match="model 'tiny-translate' is a translate model, not a forecast model"):
        await engine.forecast(ForecastRequest(model="tiny-translate", history=HISTORY))


async def test_default_model_is_marked_or_alphabetical(repo, add_bundle, make_engine):
    add_bundle(repo, "gru-generate")
    engine = await make_engine(repo)
    assert (await engine.generate(GenerateRequest(prompt="Fi", max_tokens=2))).model == "gru-generate"
    _edit_manifest(repo / "tiny-generate" / "1", default=True)
    add_bundle(repo, "tiny-generate", "2")
    _edit_manifest(repo / "tiny-generate" / "2", default=True)
    await engine.refresh()
    assert (await engine.generate(GenerateRequest(prompt="Fi", max_tokens=2))).model == "tiny-generate"
    defaults = [(m.name, m.version) for m in engine.list_models() if m.is_default and m.task == "generate"]
    assert defaults == [("tiny-generate", "2")]


async def test_polling_finds_new_and_removed_models(tmp_path, add_bundle, make_engine):
    engine = await make_engine(tmp_path, poll_interval_s=0.05)
    assert not engine.task_ready("forecast")
    changed = asyncio.Event()
    engine.add_listener(changed.set)
    add_bundle(tmp_path, "tiny-forecast")
    await asyncio.wait_for(changed.wait(), timeout=10)
    assert engine.task_ready("forecast") and not engine.task_ready("generate")
    changed.clear()
    shutil.rmtree(tmp_path / "tiny-forecast")
    await asyncio.wait_for(changed.wait(), timeout=10)
    assert not engine.task_ready("forecast")
    with pytest.raises(Unavailable, match="no forecast model is loaded"):
        await engine.forecast(ForecastRequest(history=HISTORY))


async def test_heap_is_frozen_after_loading_and_retired_versions_are_still_freed(repo, add_bundle, make_engine):
    import gc
    import weakref

    engine = await make_engine(repo)
    assert gc.get_freeze_count() > 1000  # what loading left behind is out of the collector's sight
    old = weakref.ref(engine._repo.find("tiny-forecast", "1").model)
    assert old() is not None
    add_bundle(repo, "tiny-forecast", "2")
    await engine.refresh()
    for _ in range(200):  # the old version drains, unloads, then the heap is frozen again
        if old() is None and ("tiny-forecast", "1") not in _states(engine):
            break
        await asyncio.sleep(0.01)
    assert old() is None, "the retired version is still alive (frozen with the heap?)"
    assert (await engine.forecast(ForecastRequest(history=HISTORY))).version == "2"
    await engine.stop(0)
    assert gc.get_freeze_count() == 0  # a stopped engine leaves nothing out of the collector's sight


async def test_a_graph_that_breaks_the_contract_is_refused_naming_what_differs(repo, add_bundle, make_engine):
    from onnx import TensorProto, helper, save

    engine = await make_engine(repo)
    bad = add_bundle(repo, "tiny-forecast", "2")
    # A valid ONNX graph with the right file name whose batch axis is fixed and output misnamed.
    x = helper.make_tensor_value_info("window", TensorProto.FLOAT, [1, "time", 1])
    y = helper.make_tensor_value_info("levels", TensorProto.FLOAT, [1, "time", 1])
    save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["window"], ["levels"])], "g", [x], [y])),
         str(bad / "forecast.onnx"))
    await engine.refresh()
    info = engine.get_model("tiny-forecast", "2")
    assert info.state == FAILED
    assert "forecast.onnx (forecast graph): window axis 0 (batch) is fixed to 1; the contract says dynamic" in info.error
    assert engine.get_model("tiny-forecast").version == "1"


async def test_the_manifest_default_flag_picks_the_default_model(repo, add_bundle, make_engine):
    other = repo / "a-forecast" / "1"  # alphabetically first: the default without a flag
    shutil.copytree(repo / "tiny-forecast" / "1", other)
    _edit_manifest(other, name="a-forecast")
    engine = await make_engine(repo)
    assert (await engine.forecast(ForecastRequest(history=HISTORY))).model == "a-forecast"
    shutil.copytree(repo / "tiny-forecast" / "1", repo / "tiny-forecast" / "2")
    _edit_manifest(repo / "tiny-forecast" / "2", version="2", default=True)
    await engine.refresh()
    assert (await engine.forecast(ForecastRequest(history=HISTORY))).model == "tiny-forecast"
    assert engine.get_model("tiny-forecast").is_default and not engine.get_model("a-forecast").is_default
    _edit_manifest(other, default="yes")
    shutil.copytree(other, repo / "a-forecast" / "2")
    _edit_manifest(repo / "a-forecast" / "2", version="2")
    await engine.refresh()
    assert "default 'yes' must be true or false" in engine.get_model("a-forecast", "2").error


async def test_copying_a_bundle_into_a_new_version_directory_is_all_it_takes(repo, make_engine, caplog):
    """The directory names the version (and the model): the README's hot reload, `cp -r name/1 name/2`,
    serves version 2 although its manifest still says 1; a copy under another name serves under it."""
    engine = await make_engine(repo)
    shutil.copytree(repo / "tiny-forecast" / "1", repo / "tiny-forecast" / "2")
    shutil.copytree(repo / "tiny-forecast" / "1", repo / "my-forecaster" / "7")
    with caplog.at_level(logging.INFO, logger="service.core.repository"):
        await engine.refresh()
    assert engine.get_model("tiny-forecast").version == "2"
    assert (await engine.forecast(ForecastRequest(model="tiny-forecast", history=HISTORY))).version == "2"
    mine = await engine.forecast(ForecastRequest(model="my-forecaster", history=HISTORY))
    assert (mine.model, mine.version) == ("my-forecaster", "7")
    assert any("the manifest says 'tiny-forecast' version '1'; serving it as 'tiny-forecast' version '2'" in r.getMessage()
               for r in caplog.records)
    v2, copy, original = (engine.get_model(n, v) for n, v in (("tiny-forecast", "2"), ("my-forecaster", "7"),
                                                                ("tiny-translate", "1")))
    assert (v2.manifest_name, v2.manifest_version) == ("tiny-forecast", "1")  # reported, as the manifest says
    assert (copy.manifest_name, copy.manifest_version) == ("tiny-forecast", "1")
    assert (original.manifest_name, original.manifest_version) == ("", "")  # agrees with its directory
