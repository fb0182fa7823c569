"""Batchers fit() iterates: TBPTT streams, shuffled sharded mini-batches, and in-order evaluation batches."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import Dataset


def batchify(ids: Tensor, num_streams: int) -> Tensor:
    """Cut a 1-D id sequence (N,) into ``num_streams`` contiguous streams: (num_streams, N // num_streams)."""
    if ids.dim() != 1:
        raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
    n = ids.numel() // num_streams
    if n < 2:
        raise ValueError(f"{ids.numel()} tokens are too few for {num_streams} streams (need >= 2 each)")
    return ids[: n * num_streams].view(num_streams, n)


class StreamBatches:
    """TBPTT batches over B parallel streams: chunk k is tokens (B, L) and next-token targets (B, L).

    Consecutive chunks continue each stream, so a model carries its recurrent state from one to the
    next. With ``world_size`` > 1 the text is cut into batch_size * world_size streams and rank r takes
    its own batch_size of them; every rank sees the same number of chunks.
    """

    stateful = True  # the loop carries state between consecutive batches

    def __init__(self, ids: Tensor, batch_size: int, bptt_len: int, rank: int = 0, world_size: int = 1) -> None:
        if bptt_len < 1:
            raise ValueError(f"bptt_len must be >= 1, got {bptt_len}")
        data = batchify(torch.as_tensor(ids, dtype=torch.int64), batch_size * world_size)
        self.data = data[rank * batch_size : (rank + 1) * batch_size]  # (B, N)
        self.bptt_len = bptt_len
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil((self.data.shape[1] - 1) / self.bptt_len)

    def batches(self, epoch: int = 0) -> Iterator[dict[str, Tensor]]:
        n = self.data.shape[1]
        for i in range(0, n - 1, self.bptt_len):
            L = min(self.bptt_len, n - 1 - i)
            yield {"tokens": self.data[:, i : i + L], "targets": self.data[:, i + 1 : i + 1 + L]}


class LoaderBatches:
    """Shuffled (per epoch, seeded) mini-batches of a map-style dataset, sharded across ranks.

    Uses DistributedSampler even in one process, so the order depends only on (seed, epoch) and a
    resumed run can skip the batches it has already seen.
    """

    stateful = False

    def __init__(
        self, dataset: Dataset, batch_size: int, collate, *, shuffle: bool = True, seed: int = 0,
        rank: int = 0, world_size: int = 1, drop_last: bool = False,
    ) -> None:
        from torch.utils.data import DataLoader, DistributedSampler

        self.sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        # Own generator: creating an iterator must not draw from the global RNG (dropout, resume).
        self.loader = DataLoader(
            dataset, batch_size=batch_size, sampler=self.sampler, collate_fn=collate, generator=torch.Generator()
        )
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def batches(self, epoch: int = 0) -> Iterator[dict[str, Tensor]]:
        self.sampler.set_epoch(epoch)
        set_epoch = getattr(self.loader.collate_fn, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        return iter(self.loader)


class EvalBatches:
    """Every item of a dataset exactly once, in order; rank r takes items r, r + world, ... (no padding)."""

    stateful = False

    def __init__(self, dataset: Dataset, batch_size: int, collate, rank: int = 0, world_size: int = 1) -> None:
        self.dataset, self.collate, self.batch_size = dataset, collate, batch_size
        self.indices = list(range(rank, len(dataset), world_size))

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def batches(self, epoch: int = 0) -> Iterator[dict[str, Tensor]]:
        for i in range(0, len(self.indices), self.batch_size):
            yield self.collate([self.dataset[j] for j in self.indices[i : i + self.batch_size]])
