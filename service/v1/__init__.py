"""Generated gRPC stubs for the seqserve.v1 API and the Open Inference Protocol (package inference)
(scripts/gen_protos.py; do not edit)."""
