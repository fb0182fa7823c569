"""What serving and training's evaluation share: onnxruntime sessions (``sessions``) and decoding (``decoding``).

Imports neither grpc nor torch; ``training`` may import it (and ``service.contract``), nothing else of ``service``."""
