"""extend_packed builds the same messages as assigning lists, for every shape a reply uses."""

from __future__ import annotations

import numpy as np
import pytest

from service.front.protowire import extend_packed, packed
from service.v1 import forecast_pb2, translate_pb2


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 720, 5000])  # byte lengths across varint widths
def test_doubles_match_list_assignment(n):
    x = np.random.default_rng(n).standard_normal(n) * 1e3
    x[: min(n, 3)] = [np.inf, -0.0, 1e-300][: min(n, 3)]
    fast = extend_packed(forecast_pb2.Series(), "values", x)
    slow = forecast_pb2.Series(values=x.tolist())
    assert fast == slow and fast.SerializeToString() == slow.SerializeToString()


def test_floats_appends_and_nested_messages():
    m = np.random.default_rng(0).random((7, 13)).astype(np.float32)
    fast = extend_packed(translate_pb2.Matrix(rows=7, cols=13), "values", m)
    assert fast == translate_pb2.Matrix(rows=7, cols=13, values=m.ravel().tolist())
    extend_packed(fast, "values", np.array([1.5]))  # appends, as extend() would
    assert list(fast.values)[-1] == 1.5 and len(fast.values) == 92

    reply = forecast_pb2.ForecastResponse(model="m", version="1", target_channel=1)
    qp = extend_packed(reply.quantiles.add(quantile=0.1), "values", np.arange(3.0))
    extend_packed(qp.channels.add(), "values", np.ones(3))
    want = forecast_pb2.ForecastResponse(model="m", version="1", target_channel=1, quantiles=[
        forecast_pb2.QuantilePath(quantile=0.1, values=[0.0, 1.0, 2.0], channels=[forecast_pb2.Series(values=[1.0] * 3)])])
    assert reply == want


def test_wrong_fields_are_refused():
    with pytest.raises(TypeError, match="ForecastResponse.model is not a repeated double or float field"):
        extend_packed(forecast_pb2.ForecastResponse(), "model", np.ones(2))
    with pytest.raises(TypeError, match="target_channel"):
        extend_packed(forecast_pb2.ForecastResponse(), "target_channel", np.ones(2))
    assert packed(3, np.array([1.0]))[:2] == bytes([3 << 3 | 2, 8])
