"""The bundle contract between training/ (writes bundles) and service/ (serves them): the manifest
schema, task and cell names, and each task's graphs with their input/output names, dtypes and
dynamic axes. Imports neither torch nor grpc nor onnxruntime, so both halves use it."""

from .graphs import (
    FLOAT32,
    INT64,
    ONNX_DTYPES,
    ORT_DTYPES,
    Found,
    GraphSpec,
    TensorSpec,
    check_graph,
    graph_spec,
)
from .manifest import (
    ALLOWED_SUFFIXES,
    CELLS,
    GRAPHS,
    LSTM_FAMILY,
    MANIFEST_FILE,
    OPTIONAL_GRAPHS,
    SCHEMA_VERSION,
    TASKS,
    TOKENIZERS,
    WEIGHT_FORMATS,
    BundleError,
    ForecastSpec,
    Manifest,
    SpeechSpec,
    check_file_name,
    check_name,
    read_manifest,
    state_names,
    write_manifest,
)

__all__ = [
    "ALLOWED_SUFFIXES", "CELLS", "FLOAT32", "GRAPHS", "INT64", "LSTM_FAMILY", "MANIFEST_FILE", "ONNX_DTYPES", "OPTIONAL_GRAPHS",
    "ORT_DTYPES", "SCHEMA_VERSION", "TASKS", "TOKENIZERS", "WEIGHT_FORMATS", "BundleError", "ForecastSpec", "Found",
    "GraphSpec", "Manifest", "SpeechSpec", "TensorSpec", "check_file_name", "check_graph", "check_name", "graph_spec",
    "read_manifest", "state_names", "write_manifest",
]
