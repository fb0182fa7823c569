"""Generated gRPC stubs for the seqserve.v1 API (scripts/gen_protos.py; do not edit)."""
