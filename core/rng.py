"""Seeded randomness that leaves every other random stream as it was.

`torch.manual_seed` reseeds the CPU generator *and every CUDA device's*; `torch.random.fork_rng`
restores only the devices it is given. Seeding inside a fork that way (as Griffin-Lim's random phase
once was) silently reset the GPU's training noise to its step-0 draws at every `train.sample_every`.
Here exactly the generators named are seeded and restored, and no other is touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def _default_generator(device: torch.device) -> torch.Generator:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.default_generators[index]
    if device.type == "cpu":
        return torch.default_generator
    raise ValueError(f"no default generator for device {device}")


@contextlib.contextmanager
def seeded(seed: int, *devices: str | torch.device) -> Iterator[None]:
    """Within the block, the default generators of `devices` (default: the CPU's) start from `seed`;
    after it, they are back where they were. Other devices' generators are never touched."""
    generators = {}
    for device in devices or ("cpu",):
        generator = _default_generator(torch.device(device))
        generators[id(generator)] = generator
    states = [(generator, generator.get_state()) for generator in generators.values()]
    try:
        for generator, _ in states:
            generator.manual_seed(seed)
        yield
    finally:
        for generator, state in states:
            generator.set_state(state)
