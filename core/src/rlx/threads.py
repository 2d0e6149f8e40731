"""CPU intra-op thread control shared by the builtin components."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def cpu_threads(device: torch.device, threads: int) -> Iterator[None]:
    """Use `threads` torch intra-op threads inside the block on a CPU device (0: leave torch's setting).

    Small models run thousands of tiny ops; splitting each over threads costs more in synchronisation than it
    saves, and on a shared machine idle-spinning OpenMP threads slow it 10x or more (measured here: a tiny Qwen2
    training step took 0.20 s with 1 thread and 3.4 s with 2 while another process used the other core).
    """
    if device.type != "cpu" or threads == 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
