"""Bundle export: contract names/shapes, fused recurrent ops, parity with PyTorch, manifest, tests/bundles.py."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from tokenizers import Tokenizer

from service.contract import CELLS, read_manifest
from tests.bundles import make_bundle
from training.export import (
    EncoderGraph,
    ExportError,
    check_graph_file,
    check_op_types,
    compare,
    export_bundle,
    graph_io,
)
from training.layers import ONNX_OP
from training.models import ForecastConfig, LMConfig, TranslationConfig, build_model
from training.vocab import build_char_tokenizer

TEXT = "the quick brown fox jumps over the lazy dog. THE END!\n"
ROLES = {"forecast": ["forecast"], "generate": ["lm"], "translate": ["encoder", "decoder_step"]}


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _tiny(task: str, cell: str, **kw):
    tok = build_char_tokenizer(TEXT)
    V = tok.get_vocab_size()
    if task == "translate":
        cfg = TranslationConfig(V, V, cell=cell, embed_size=8, hidden_size=10, attention_size=6, num_layers=2, dropout=0.1, **kw)
        return build_model(task, cfg), {"source": tok, "target": tok}
    if task == "generate":
        return build_model(task, LMConfig(V, cell=cell, embed_size=8, hidden_size=10, dropout=0.1, **kw)), {"text": tok}
    cfg = ForecastConfig(channels=2, window=12, min_history=3, horizon=4, cell=cell, hidden_size=8, dropout=0.1, **kw)
    return build_model(task, cfg), {}


def _states(out: dict[str, np.ndarray], suffix: str = "") -> dict[str, np.ndarray]:
    return {k[: len(k) - len(suffix)] if suffix else k: v for k, v in out.items() if k.startswith("state_") and k.endswith(suffix)}


def _independent_parity(task: str, model, bundle: Path) -> float:
    """Run the graphs the way the service does and compare with the PyTorch model."""
    torch.manual_seed(123)
    model.eval()
    worst = 0.0
    if task == "forecast":
        sess = _session(bundle / "forecast.onnx")
        for B, T in ((2, 12), (5, 3), (1, 7)):
            window = 50.0 + 4.0 * torch.randn(B, T, 2)
            (got,) = sess.run(None, {"window": window.numpy()})
            with torch.no_grad():
                worst = max(worst, float(np.abs(got - model(window).numpy()).max()))
        return worst
    if task == "generate":
        sess = _session(bundle / "lm.onnx")
        names = graph_io("lm", model.config.cell)
        prompt = torch.randint(0, model.config.vocab_size, (3, 5))
        state = {n: np.zeros((model.config.num_layers, 3, model.config.hidden_size), np.float32) for n in names[0][1:]}
        t_state = None
        tokens = prompt
        for _ in range(4):  # a prompt, then single tokens with the state carried
            out = dict(zip(names[1], sess.run(None, {"tokens": tokens.numpy(), **state})))
            with torch.no_grad():
                logits, t_state = model(tokens, t_state)
            worst = max(worst, float(np.abs(out["logits"] - logits.numpy()).max()))
            state = _states(out, "_out")
            tokens = logits[:, -1].argmax(-1, keepdim=True)
        return worst
    enc, dec = _session(bundle / "encoder.onnx"), _session(bundle / "decoder_step.onnx")
    enc_names, dec_names = graph_io("encoder", model.config.cell), graph_io("decoder_step", model.config.cell)
    lengths = torch.tensor([3, 9, 5])
    src = torch.randint(4, model.config.src_vocab_size, (3, 10))
    src[torch.arange(10)[None, :] >= lengths[:, None]] = 0
    enc_out = dict(zip(enc_names[1], enc.run(None, {"src": src.numpy(), "src_len": lengths.numpy()})))
    with torch.no_grad():
        memory, keys, t_state = model.encode(src, lengths)
    worst = float(np.abs(enc_out["memory"] - memory.numpy()).max())
    mask = model.source_mask(lengths, 10)
    state = _states(enc_out)
    prev = torch.full((3,), model.config.bos_id)
    for _ in range(5):  # greedy decoding, state threaded through the graph
        feed = {"prev_token": prev.numpy(), **state, "memory": enc_out["memory"], "memory_keys": enc_out["memory_keys"], "src_mask": mask.numpy()}
        out = dict(zip(dec_names[1], dec.run(None, feed)))
        with torch.no_grad():
            log_probs, t_state, attention = model.decode_step(prev, t_state, memory, keys, mask)
        worst = max(worst, float(np.abs(out["log_probs"] - log_probs.numpy()).max()))
        worst = max(worst, float(np.abs(out["attention"] - attention.numpy()).max()))
        np.testing.assert_allclose(out["attention"].sum(1), 1.0, atol=1e-5)
        state = _states(out, "_out")
        prev = log_probs.argmax(-1)
    return worst


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("task", ["translate", "forecast", "generate"])
def test_export_every_task_and_cell(tmp_path, task, cell):
    torch.manual_seed(0)
    model, toks = _tiny(task, cell)
    model.train()
    bundle = tmp_path / "m" / "1"
    manifest = export_bundle(model, bundle, name="m", version="1", tokenizers=toks)
    assert model.training, "export must restore the model's mode"
    assert read_manifest(bundle).to_dict() == manifest.to_dict()
    for role in ROLES[task]:
        path = bundle / manifest.graphs[role]
        ops = check_op_types(path, ONNX_OP[cell])
        assert ops[ONNX_OP[cell]] == model.config.num_layers  # one fused op per layer, both directions in it
        check_graph_file(path, role, cell)
        m = onnx.load(str(path), load_external_data=False)
        assert all(i.data_location != TensorProto.EXTERNAL for i in m.graph.initializer)
    assert sorted(p.name for p in bundle.iterdir()) == sorted(["manifest.json", *manifest.files()])
    assert max(manifest.extra["export_parity"].values()) < 1e-4
    assert _independent_parity(task, model, bundle) < 1e-4
    assert manifest.cell == cell and manifest.num_parameters == sum(p.numel() for p in model.parameters())
    assert manifest.seqserve_version


def test_translate_manifest_and_tokenizers(tmp_path):
    model, toks = _tiny("translate", "gru", bidirectional=False)
    manifest = export_bundle(model, tmp_path, name="tr", version="7", tokenizers=toks, limits={"max_source_tokens": 20})
    assert manifest.special_tokens == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    assert manifest.vocab_size == {"source": toks["source"].get_vocab_size(), "target": toks["target"].get_vocab_size()}
    assert manifest.bidirectional is False and manifest.embed_size == 8 and manifest.hidden_size == 10
    assert manifest.limits == {"max_source_tokens": 20}
    assert manifest.training["model_config"]["cell"] == "gru"
    loaded = Tokenizer.from_file(str(tmp_path / manifest.tokenizers["source"]))
    assert loaded.encode(TEXT).ids == toks["source"].encode(TEXT).ids


def test_forecast_manifest_spec(tmp_path):
    model, _ = _tiny("forecast", "lstm", quantiles=(0.05, 0.5, 0.95))
    manifest = export_bundle(model, tmp_path, name="fc", version="1", channel_names=["load", "temp"], frequency="1h")
    spec = manifest.forecast
    assert (spec.window, spec.min_history, spec.horizon, spec.channels) == (12, 3, 4, 2)
    assert spec.quantiles == [0.05, 0.5, 0.95] and spec.channel_names == ["load", "temp"]
    (q,) = _session(tmp_path / "forecast.onnx").run(None, {"window": np.random.randn(2, 5, 2).astype(np.float32)})
    assert q.shape == (2, 4, 2, 3)


def test_export_refuses_wrong_tokenizer_roles_and_small_vocab(tmp_path):
    model, toks = _tiny("generate", "lstm")
    with pytest.raises(ValueError, match="text"):
        export_bundle(model, tmp_path, name="x", version="1", tokenizers={})
    big = build_char_tokenizer(TEXT + "0123456789@#$%^&*()")
    with pytest.raises(ValueError, match="vocab_size"):
        export_bundle(model, tmp_path, name="x", version="1", tokenizers={"text": big})
    with pytest.raises(ValueError, match="name"):
        export_bundle(model, tmp_path, name="../x", version="1", tokenizers=toks)


def test_compare_names_graph_output_and_difference(tmp_path):
    model, toks = _tiny("translate", "lstm")
    export_bundle(model, tmp_path, name="x", version="1", tokenizers=toks)
    with torch.no_grad():
        model.attn_key.weight.add_(0.5)  # the PyTorch model now differs from the exported graph
    encoder = EncoderGraph(model).eval()
    inputs = {"src": torch.randint(4, 20, (2, 5)), "src_len": torch.tensor([5, 3])}
    with pytest.raises(ExportError, match=r"encoder\.onnx: output memory_keys differs from PyTorch by max abs"):
        compare(tmp_path / "encoder.onnx", encoder, inputs)


def _graph(tmp_path: Path, node_op: str, dims: list) -> Path:
    x = helper.make_tensor_value_info("window", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("quantiles", TensorProto.FLOAT, [*dims, 1])
    nodes = [helper.make_node(node_op, ["window"], ["w2"]), helper.make_node("Unsqueeze", ["w2", "axes"], ["quantiles"])]
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [3])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [y], [axes])), str(path))
    return path


def test_checks_reject_unfused_or_fixed_graphs(tmp_path):
    with pytest.raises(ExportError, match="no fused recurrent op"):
        check_op_types(_graph(tmp_path, "Relu", ["B", "T", 1]))
    fixed = _graph(tmp_path, "Relu", [2, "T", 1])
    with pytest.raises(ExportError, match=r"window axis 0 \(batch\) is fixed to 2; the contract says dynamic"):
        check_graph_file(fixed, "forecast", "lstm")
    with pytest.raises(ExportError, match=r"inputs are \['window'\]; the contract says \['tokens', 'state_h', 'state_c'\]"):
        check_graph_file(_graph(tmp_path, "Relu", ["B", "T", 1]), "lm", "lstm")
    with pytest.raises(ExportError, match="window has rank 2; the contract says 3"):
        check_graph_file(_graph(tmp_path, "Relu", ["B", "T"]), "forecast", "lstm")


@pytest.mark.parametrize("task", ["translate", "forecast", "generate"])
def test_make_bundle_is_fast_and_valid(tmp_path, task):
    start = time.perf_counter()
    path = make_bundle(tmp_path, task)
    took = time.perf_counter() - start
    assert took < 5.0, f"make_bundle({task}) took {took:.1f}s"
    manifest = read_manifest(path)
    assert path == tmp_path / manifest.name / "1" and manifest.name == f"tiny-{task}"
    again = make_bundle(tmp_path, task, name="other", version="2", cell="gru", num_layers=2)
    assert read_manifest(again).cell == "gru" and read_manifest(again).num_layers == 2


def test_generate_bundle_starts_empty_prompts_after_a_line_break(tmp_path):
    # The LM never sees [BOS] in its training stream: the bundle's start token is the newline.
    model, toks = _tiny("generate", "lstm")
    manifest = export_bundle(model, tmp_path, name="lm", version="1", tokenizers=toks)
    bos = manifest.special_tokens["bos"]
    assert toks["text"].id_to_token(bos) == "\n"
    assert toks["text"].token_to_id("[BOS]") != bos
