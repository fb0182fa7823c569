"""Load generation: the ``seqserve bench`` harness, its request pools and reports. Never imported by the server."""
