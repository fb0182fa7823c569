"""What the ``seqserve`` command, the Python client and the load generator share: address, env names, exit codes."""

ADDRESS_ENV = "SEQSERVE_ADDRESS"
# Client-side TLS and token settings. Not SEQSERVE_TLS_CERT/_KEY: those configure the server.
TLS_CA_ENV = "SEQSERVE_TLS_CA"
TLS_CERT_ENV = "SEQSERVE_TLS_CLIENT_CERT"
TLS_KEY_ENV = "SEQSERVE_TLS_CLIENT_KEY"
TLS_SERVER_NAME_ENV = "SEQSERVE_TLS_SERVER_NAME"
TOKEN_ENV = "SEQSERVE_TOKEN"
TOKEN_FILE_ENV = "SEQSERVE_TOKEN_FILE"
LOG_LEVEL_ENV = "SEQSERVE_LOG_LEVEL"
DEFAULT_PORT = 50051
DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"
# Subcommands that belong to the training package (it needs torch: `pip install 'seqserve[train]'`).
TRAINING_COMMANDS = {
    "train": "train a model from a preset or config (delegates to training.cli)",
    "build": "your own data files -> trained, evaluated, served bundle in one command (delegates to training.cli)",
    "zero-shot": "score forecasters on series they never saw against statistical baselines (delegates to training.cli)",
    "export": "export a trained checkpoint to an ONNX model bundle (delegates to training.cli)",
    "evaluate": "evaluate a checkpoint or bundle on held-out data (delegates to training.cli)",
    "quantize": "store a bundle's weights as int8 if its figures hold within 1%% (delegates to training.cli)",
    "gradient-flow": "measure gradient flow through time for each cell type (delegates to training.cli)",
    "compare": "train one task once per cell with the same budget and compare (delegates to training.cli)",
}
EXIT_RPC_ERROR = 1
EXIT_USAGE = 2


def with_default_port(address: str) -> str:
    """``address`` with seqserve's port (50051) when it names none: ``127.0.0.1`` -> ``127.0.0.1:50051``
    (gRPC would try 443), ``[::1]`` -> ``[::1]:50051``; target URIs (``dns:///...``, ``unix:...``) as they are."""
    if "://" in address or address.startswith(("unix:", "dns:", "ipv4:", "ipv6:", "unix-abstract:")):
        return address
    if address.startswith("["):
        return address if "]:" in address else f"{address}:{DEFAULT_PORT}"
    return f"{address}:{DEFAULT_PORT}" if ":" not in address else address
