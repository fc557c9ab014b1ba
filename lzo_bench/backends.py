"""Which implementation of the LIF layer runs, and why.

Order of preference is ``cuda → cpp → torch`` (DESIGN.md §6). This version ships the
pure-PyTorch reference only; the C++/CUDA extension plugs in here as further backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable

from lzo_bench import lif


class BackendName(str, Enum):
    AUTO = "auto"
    TORCH = "torch"


@dataclass(frozen=True)
class Backend:
    name: str
    layer: Callable[..., lif.LayerOut]
    reason: str

    def describe(self) -> str:
        return f"backend: {self.name} ({self.reason})"


TORCH_BACKEND = Backend(
    "torch", lif.lif_layer, "pure-PyTorch reference; no C++/CUDA extension in this build"
)


def select_backend(requested: BackendName | str = BackendName.AUTO) -> Backend:
    """The backend to run: the requested one, or for ``auto`` the fastest available."""
    requested = BackendName(requested)
    if requested is BackendName.TORCH:
        return Backend("torch", lif.lif_layer, "requested with --backend torch")
    return TORCH_BACKEND
