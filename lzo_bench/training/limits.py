"""The limits a training configuration is checked against, with why each is where it is.

Shared by :mod:`lzo_bench.training.config` (options) and :mod:`lzo_bench.training.checkpoint` (what a checkpoint may
record), so that neither imports the other for them.
"""

from __future__ import annotations

import torch

FLOAT32_TINY, FLOAT32_MAX = torch.finfo(torch.float32).tiny, torch.finfo(torch.float32).max
MAX_STEPS = 100_000     # time bins: 100 s at 1 ms; beyond, a batch no longer fits in memory
MAX_NEURONS = 1 << 20   # per hidden layer
MAX_EPOCHS = 1_000_000  # metrics.json keeps a record per epoch, rewritten after every epoch
MAX_PROFILE_UPDATES = 100_000  # profile's --updates and --warmup per method
LIMIT_WHY = {"--updates": "profile keeps every measured update's phase times in memory and in profile.json; "
                          "100 000 updates of the paper's network take hours already",
             "--samples": "the kernels count LocalZO samples in 16 bits of the Philox counter",
             "--steps": "100 s at 1 ms bins; a longer sequence does not fit a batch in memory",
             "--epochs": "metrics.json keeps a record per epoch and is rewritten after each"}
