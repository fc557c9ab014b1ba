"""The CPU ops' vectorised paths (AVX2: the register-blocked current, the fused scan with its mask
compactions, 8-lane Philox, the 32-wide to_events) against the same source built without AVX2, which takes
the scalar loops: every output equal to the bit, as the kernels claim (same float operations in the same
order). The scalar build runs in a child process (its ops register under the same names)."""

import subprocess
import sys

import pytest
import torch

from lzo_bench.core.gates import GateSpec
from lzo_bench.core.rng import DrawKey
from lzo_bench.ops import extension as ops
from lzo_bench.ops import library
from lzo_bench.runtime.devices import vector_isa

CHILD = """
import sys, torch
from torch.utils.cpp_extension import load
from lzo_bench.ops import extension as ops, library
load("lzo_scalar_check", [sys.argv[1] + "/" + f for f in ops.CPU_SOURCES], extra_include_paths=[sys.argv[1]], is_python_module=False,
     extra_cflags=["-O3", "-ffp-contract=off", "-march=x86-64", "-mno-avx2", "-fopenmp"], extra_ldflags=["-fopenmp"],
     build_directory=sys.argv[2])
from lzo_bench.core.gates import GateSpec
from lzo_bench.core.rng import DrawKey
cases = torch.load(sys.argv[3])
out = {}
for name, c in cases.items():
    spec = GateSpec.build(c["method"], "normal", 0.05, samples=c["m"])
    table, *params = library.gate_args(spec, DrawKey(3, 7), torch.device("cpu"))
    ptr, col, val = torch.ops.lzo.to_events(c["x"])
    val = val if c["graded"] else val.new_empty(0)
    out[name] = [ptr, col, val, *torch.ops.lzo.lif_events_forward(ptr, col, val, c["w"], table, c["x"].shape[0], 0.9, 1.0,
                                                                    *params, 0, 0)]
torch.save(out, sys.argv[4])
"""


def _cases() -> dict:
    g = torch.Generator().manual_seed(0)
    cases = {}
    # widths with and without partial 8-, 32- and 64-blocks; layer 1's shape; graded input; m = 1 and 3
    for n, n_in, t, b, rate, graded in ((300, 70, 40, 3, 0.1, False), (37, 130, 25, 2, 0.3, True),
                                        (200, 1156, 30, 2, 0.012, False)):
        x = (torch.rand(t, b, n_in, generator=g) < rate).float()
        if graded:
            x = x * torch.rand(t, b, n_in, generator=g)
        w = torch.randn(n_in, n, generator=g) * (3.0 / n_in ** 0.5)
        for method, m in (("surrogate", 1), ("sparsegrad", 1), ("localzo", 1), ("localzo", 3)):
            cases[f"{n}-{method}-{m}"] = {"x": x, "w": w, "graded": graded, "method": method, "m": m}
    return cases


@pytest.mark.skipif(vector_isa() not in ("avx2", "avx512f"), reason="this CPU has no AVX2: both builds are scalar")
def test_avx2_paths_equal_the_scalar_build_to_the_bit(tmp_path):
    cases = _cases()
    torch.save(cases, tmp_path / "cases.pt")
    build = tmp_path / "build"
    build.mkdir()
    subprocess.run([sys.executable, "-c", CHILD, str(ops.kernels_dir()), str(build), str(tmp_path / "cases.pt"),
                    str(tmp_path / "scalar.pt")], check=True, capture_output=True)
    scalar = torch.load(tmp_path / "scalar.pt")
    lib = torch.ops.lzo
    ops.build()
    for name, c in cases.items():
        spec = GateSpec.build(c["method"], "normal", 0.05, samples=c["m"])
        table, *params = library.gate_args(spec, DrawKey(3, 7), torch.device("cpu"))
        ptr, col, val = lib.to_events(c["x"])
        val = val if c["graded"] else val.new_empty(0)
        ours = [ptr, col, val, *lib.lif_events_forward(ptr, col, val, c["w"], table, c["x"].shape[0], 0.9, 1.0,
                                                         *params, 0, 0)]
        assert len(ours) == len(scalar[name])
        for i, (a, b) in enumerate(zip(ours, scalar[name])):
            assert torch.equal(a, b), f"{name}: output {i} differs between the AVX2 and the scalar build"
        assert ours[7].numel() > 0 or c["method"] == "surrogate"  # a non-empty active list was compared
