"""Open Inference Protocol tensors and parameters: reading ``ModelInferRequest`` inputs (raw bytes or
typed contents) into numpy, writing outputs as ``raw_output_contents`` (what tritonclient's
``as_numpy()`` reads), and typed request parameters. Bad input is InvalidArgument naming the field."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.core.errors import InvalidArgument

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
CONTENTS = {  # datatype -> the InferTensorContents field that carries it typed
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
DATATYPES = (*DTYPES, "BYTES")
MAX_DIMENSION = 1 << 31  # a dimension beyond this cannot describe bytes that fit in one message
_LENGTH = struct.Struct("<I")


def read_inputs(request: Any) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (datatype, array) of every input; BYTES inputs are object arrays of ``bytes``."""
    raw = list(request.raw_input_contents)
    inputs = list(request.inputs)
    if raw and any(t.HasField("contents") for t in inputs):
        raise InvalidArgument("raw_input_contents and inputs[].contents are both set; send one or the other",
                              field="raw_input_contents")
    if raw and len(raw) != len(inputs):
        raise InvalidArgument(f"raw_input_contents has {len(raw)} entries; inputs has {len(inputs)}",
                              field="raw_input_contents")
    out: dict[str, tuple[str, np.ndarray]] = {}
    for k, t in enumerate(inputs):
        where = f"inputs[{k}]"
        if t.name in out:
            raise InvalidArgument(f"{where}.name {t.name!r} appears twice", field=f"{where}.name")
        if t.datatype not in DATATYPES:
            raise InvalidArgument(f"{where}.datatype {t.datatype!r} is not one of {', '.join(DATATYPES)}",
                                  field=f"{where}.datatype")
        shape = list(t.shape)
        if any(d < 0 for d in shape):
            raise InvalidArgument(f"{where}.shape {shape} has a negative dimension", field=f"{where}.shape")
        if any(d > MAX_DIMENSION for d in shape) or len(shape) > 8:
            raise InvalidArgument(f"{where}.shape {shape} is out of range (at most 8 dimensions of at most "
                                  f"{MAX_DIMENSION})", field=f"{where}.shape")
        count = math.prod(shape)
        if raw:
            array = _from_raw(raw[k], t.datatype, count, f"raw_input_contents[{k}]", shape)
        else:
            array = _from_contents(t, count, where, shape)
        out[t.name] = (t.datatype, array.reshape(shape))
    return out


def _from_raw(data: bytes, datatype: str, count: int, where: str, shape: list[int]) -> np.ndarray:
    if datatype == "BYTES":
        items, pos = [], 0
        while pos < len(data):
            if pos + 4 > len(data):
                raise InvalidArgument(f"{where}: a BYTES element's 4-byte length is cut off at byte {pos}", field=where)
            (n,) = _LENGTH.unpack_from(data, pos)
            if pos + 4 + n > len(data):
                raise InvalidArgument(f"{where}: a BYTES element of {n} bytes runs past the end ({len(data)} bytes)",
                                      field=where)
            items.append(data[pos + 4 : pos + 4 + n])
            pos += 4 + n
            if len(items) > count:
                break  # more elements than the shape holds: said below without reading the rest
        if len(items) != count or pos < len(data):
            held = f"{len(items)}" if pos >= len(data) else f"more than {count}"
            raise InvalidArgument(f"{where} holds {held} BYTES elements; shape {shape} needs {count}", field=where)
        array = np.empty(count, dtype=object)
        array[:] = items
        return array
    dtype = DTYPES[datatype]
    if len(data) != count * dtype.itemsize:
        raise InvalidArgument(f"{where} has {len(data)} bytes; shape {shape} of {datatype} needs "
                              f"{count * dtype.itemsize}", field=where)
    return np.frombuffer(data, dtype=dtype)


def _from_contents(t: Any, count: int, where: str, shape: list[int]) -> np.ndarray:
    field = CONTENTS.get(t.datatype)
    if field is None:  # FP16 has no typed field
        raise InvalidArgument(f"{where}.contents: {t.datatype} has no typed field; send it in raw_input_contents",
                              field=f"{where}.contents")
    values = getattr(t.contents, field)
    if len(values) != count:
        raise InvalidArgument(f"{where}.contents.{field} has {len(values)} elements; shape {shape} needs {count}",
                              field=f"{where}.contents")
    if t.datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array
    return np.asarray(values, dtype=DTYPES[t.datatype])


def add_output(response: Any, name: str, datatype: str, values: np.ndarray | Sequence[bytes], shape: Sequence[int]) -> None:
    """Append one output tensor, its elements in ``raw_output_contents``."""
    response.outputs.add(name=name, datatype=datatype, shape=list(shape))
    if datatype == "BYTES":
        response.raw_output_contents.append(b"".join(_LENGTH.pack(len(v)) + v for v in values))
    else:
        response.raw_output_contents.append(np.ascontiguousarray(values, dtype=DTYPES[datatype]).tobytes())


# -- parameters ---------------------------------------------------------------------------------------

def parameter(value: Any) -> Any:
    """The Python value of an InferParameter (None when no kind is set)."""
    kind = value.WhichOneof("parameter_choice")
    return None if kind is None else getattr(value, kind)


def int_parameter(name: str, value: Any) -> int:
    v = parameter(value)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise InvalidArgument(f"parameters.{name} {v!r} must be an integer", field=f"parameters.{name}")
    if not -(2**31) <= v < 2**31:
        raise InvalidArgument(f"parameters.{name} {v!r} is out of range", field=f"parameters.{name}")
    return int(v)


def float_parameter(name: str, value: Any) -> float:
    v = parameter(value)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InvalidArgument(f"parameters.{name} {v!r} must be a number", field=f"parameters.{name}")
    return float(v)


def bool_parameter(name: str, value: Any) -> bool:
    v = parameter(value)
    if not isinstance(v, bool):
        raise InvalidArgument(f"parameters.{name} {v!r} must be a boolean", field=f"parameters.{name}")
    return v


def string_parameter(name: str, value: Any) -> str:
    v = parameter(value)
    if not isinstance(v, str):
        raise InvalidArgument(f"parameters.{name} {v!r} must be a string", field=f"parameters.{name}")
    return v


# What Triton's clients send by default, accepted where they mean nothing here: tritonclient sends
# sequence_id 0 / sequence_start false / sequence_end false and a priority; timeout is Triton's
# queue timeout (deadlines come from the gRPC call).
_IGNORED = ("priority", "timeout")


def check_sequence(parameters: Any) -> None:
    """Refuse a real sequence (Triton's sequence batcher keeps state between requests; seqserve's
    models carry their state within one request)."""
    seq = parameters.get("sequence_id")
    if seq is not None and parameter(seq) not in (None, 0, ""):
        raise InvalidArgument(f"parameters.sequence_id {parameter(seq)!r}: sequences (state kept between requests) "
                              "are not supported; send 0 or leave it out", field="parameters.sequence_id")
    for flag in ("sequence_start", "sequence_end"):
        value = parameters.get(flag)
        if value is not None and parameter(value) not in (None, False, 0):
            raise InvalidArgument(f"parameters.{flag} must be false: sequences are not supported",
                                  field=f"parameters.{flag}")


def request_parameters(parameters: Any, allowed: dict[str, Any]) -> dict[str, Any]:
    """Typed task parameters (``allowed``: name -> int_parameter/float_parameter/string_parameter);
    the sequence parameters and Triton's priority/timeout are accepted as described above."""
    check_sequence(parameters)
    out = {}
    for name, value in parameters.items():
        if name in ("sequence_id", "sequence_start", "sequence_end", *_IGNORED):
            continue
        read = allowed.get(name)
        if read is None:
            known = ", ".join(sorted(allowed)) or "none"
            raise InvalidArgument(f"parameters.{name} is not a parameter of this model (it takes: {known})",
                                  field=f"parameters.{name}")
        out[name] = read(name, value)
    return out
