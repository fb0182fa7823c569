"""The stubs of one channel: a SeqserveClient holds one set per channel it opened."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2_grpc

from service.v1 import (
    forecast_pb2_grpc,
    generate_pb2_grpc,
    models_pb2_grpc,
    recognize_pb2_grpc,
    translate_pb2_grpc,
)


class Stubs:
    def __init__(self, channel: grpc.Channel) -> None:
        self.translator = translate_pb2_grpc.TranslatorStub(channel)
        self.forecaster = forecast_pb2_grpc.ForecasterStub(channel)
        self.generator = generate_pb2_grpc.GeneratorStub(channel)
        self.recognizer = recognize_pb2_grpc.RecognizerStub(channel)
        self.models = models_pb2_grpc.ModelsStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)
