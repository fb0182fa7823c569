"""The committed stubs match the protos, and the protos document every element."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

REPO = Path(__file__).resolve().parents[3]
STUBS = REPO / "service" / "v1"


def _gen_module():
    spec = importlib.util.spec_from_file_location("gen_protos", REPO / "scripts" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_are_current(tmp_path):
    gen = _gen_module()
    fresh = {p.name: p.read_bytes() for p in gen.generate(tmp_path)}
    committed = {p.name: p.read_bytes() for p in STUBS.iterdir() if p.is_file()}
    assert sorted(committed) == sorted(fresh), "stub files differ: run python scripts/gen_protos.py"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale stubs {stale}: run python scripts/gen_protos.py"


def _descriptor_set(tmp_path) -> descriptor_pb2.FileDescriptorSet:
    import grpc_tools
    from grpc_tools import protoc

    gen = _gen_module()
    out = tmp_path / "api.pb"
    include = Path(grpc_tools.__file__).resolve().parent / "_proto"
    rc = protoc.main(
        [
            "protoc",
            f"-I{gen.PROTO_ROOT}",
            f"-I{include}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *(str(p.relative_to(gen.PROTO_ROOT)) for p in gen.proto_files()),
        ]
    )
    assert rc == 0
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _undocumented(file: descriptor_pb2.FileDescriptorProto) -> list[str]:
    """Paths of messages, fields, services and methods with no leading comment."""
    comments = {
        tuple(loc.path): loc.leading_comments.strip()
        for loc in file.source_code_info.location
    }
    missing = []
    # Field numbers of FileDescriptorProto / DescriptorProto / ServiceDescriptorProto.
    message_type, service, field, method, nested_type = 4, 6, 2, 2, 3

    def walk(msg, path, prefix):
        if msg.options.map_entry:
            return
        if not comments.get(path):
            missing.append(prefix)
        for i, f in enumerate(msg.field):
            if not comments.get(path + (field, i)):
                missing.append(f"{prefix}.{f.name}")
        for i, nested in enumerate(msg.nested_type):
            walk(nested, path + (nested_type, i), f"{prefix}.{nested.name}")

    for i, msg in enumerate(file.message_type):
        walk(msg, (message_type, i), msg.name)
    for i, svc in enumerate(file.service):
        if not comments.get((service, i)):
            missing.append(svc.name)
        for j, m in enumerate(svc.method):
            if not comments.get((service, i, method, j)):
                missing.append(f"{svc.name}.{m.name}")
    return missing


def test_every_message_field_and_rpc_is_documented(tmp_path):
    files = [f for f in _descriptor_set(tmp_path).file if f.package == "seqserve.v1"]
    assert len(files) == 5
    missing = {f.name: _undocumented(f) for f in files}
    assert not any(missing.values()), f"undocumented proto elements: {missing}"


def test_services_and_methods_users_depend_on():
    from service.v1 import forecast_pb2, generate_pb2, models_pb2, recognize_pb2, translate_pb2

    expected = {
        translate_pb2: ("Translator", {"Translate"}),
        forecast_pb2: ("Forecaster", {"Forecast"}),
        generate_pb2: ("Generator", {"Generate", "GenerateStream", "Score"}),
        models_pb2: ("Models", {"ListModels", "GetModel"}),
        recognize_pb2: ("Recognizer", {"Recognize", "StreamingRecognize"}),
    }
    for module, (name, methods) in expected.items():
        svc = module.DESCRIPTOR.services_by_name[name]
        assert svc.full_name == f"seqserve.v1.{name}"
        assert {m.name for m in svc.methods} == methods
    stream = generate_pb2.DESCRIPTOR.services_by_name["Generator"].methods_by_name["GenerateStream"]
    assert stream.server_streaming and not stream.client_streaming
    bidi = recognize_pb2.DESCRIPTOR.services_by_name["Recognizer"].methods_by_name["StreamingRecognize"]
    assert bidi.server_streaming and bidi.client_streaming


@pytest.mark.parametrize("field", ["temperature", "top_p", "seed"])
def test_unset_sampling_parameters_differ_from_zero(field):
    from service.v1 import generate_pb2

    req = generate_pb2.GenerateRequest()
    assert not req.HasField(field)
    setattr(req, field, 0)
    assert req.HasField(field)
    back = generate_pb2.GenerateRequest.FromString(req.SerializeToString())
    assert back.HasField(field) and getattr(back, field) == 0
