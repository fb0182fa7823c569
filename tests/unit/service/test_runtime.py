"""GraphRuntime: graph calls cheaper than the thread hand-off run on the event loop, others on workers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from onnx import TensorProto, helper

from service.runtime import GraphRuntime, RuntimeOptions


class CountingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.submitted = 0

    def submit(self, *args, **kwargs):
        self.submitted += 1
        return super().submit(*args, **kwargs)


def _identity() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


async def test_cheap_calls_run_inline_after_the_first_and_never_when_disabled():
    feeds = {"x": np.arange(4, dtype=np.float32)}
    for inline_ms in (0.2, 0.0):
        with CountingExecutor() as pool:
            graph = GraphRuntime("identity", _identity(), RuntimeOptions(inline_ms=inline_ms), pool)
            for _ in range(10):
                np.testing.assert_array_equal((await graph.run(feeds))["y"], feeds["x"])
            # The first calls measure the graph on a worker; an identity costs microseconds, so
            # once one was fast the following ones stay on the event loop -- unless inlining is off.
            warm = pool.submitted
            for _ in range(5):
                await graph.run(feeds)
            assert graph.calls == 15
            if inline_ms:
                assert 1 <= warm < 10 and pool.submitted == warm
            else:
                assert pool.submitted == 15
