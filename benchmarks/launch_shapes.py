"""Launch shapes of one training update's CUDA kernels, read without a GPU (issue 31 item 7).

    python benchmarks/launch_shapes.py --workload nmnist [--arch fc|conv|both] [--steps 4]

Runs one training update of each rule (surrogate, sparsegrad, localzo) through the CUDA execution simulator
(``torch.ops.lzo_sim``, kernels/cuda_sim.h) with its launch log on (``LZO_SIM_LAUNCH_LOG``), at the workload's
batch (N-MNIST: B = 256 fully connected, B = 32 conv) but ``--steps`` time steps instead of the workload's T
(the simulator runs every thread of a block as an OS thread: T = 300 would take hours). Each op call is
recorded with its arguments (a proxy of the op namespace), and every kernel it launched is matched to it.

What is measured and what is computed:

- **Grids.** Each kernel's GPU grid is computed from the launch formula of kernels/snn_cuda.cu (written out
  below in ``gpu_grid``), and that formula is first *checked against the simulator's logged grid* at the run's
  shape and the simulator's 64 threads per block (the script stops if one disagrees). It is then evaluated at
  the full shape (the workload's T) with the GPU's 256 threads per block and the 65 535-block cap. Grids that
  depend on the rows B·T scale with T; those of the forward scan, the readout and the trace scans depend on B
  only.
- **Event counts** (input events, spikes, active entries) are the run's, scaled by T_full / T_run (the rates
  are taken as stationary; the synthetic input fires at the workload's rate, the hidden layers are calibrated
  to 1 % per (step, neuron) on the run's input as ``lzo-bench profile`` does).
- **Occupancy** ``warps/SM = min(64, blocks · warps_per_block / 132)`` on an H100 SXM (132 SMs, 64 warps each):
  an upper bound from the grid alone; the limits from registers and shared memory are not modelled.
- **Roofline** ``time = max(bytes / 3.35 TB/s, ops / 67 TFLOP/s)`` (H100 SXM HBM3, fp32 non-tensor peak); bytes =
  the sizes of the tensors a kernel reads and writes (valid parts of the lists), ops = its arithmetic, both
  from the formulas in ``work`` (an estimate: caches, atomics' cost and integer index arithmetic beyond the
  counted ops are not modelled; integer ops are counted at the fp32 rate).
- Only the extension's own kernels are logged: the GEMMs / cuDNN convolutions of ``surrogate`` and of a forced
  GEMM current, and ATen's kernels (cumsum of the row pointers, zero fills, the partial sums) are not in the
  table, so each rule's "work" share is of its logged kernels only.

The op column numbers each op's calls in the update in call order: the forward goes up the layers, the backward
down (``lif_sparse_backward[0]`` is the last hidden layer's). The simulator logs dynamic shared bytes too (0:
the kernels use static ``__shared__`` only).

A kernel is flagged when it does more than 5 % of its update's estimated (logged) work and launches fewer
than 264 blocks (2 per SM) of >= 128 threads. Nothing is reshaped here (issue 31 item 6 is separate).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lzo_bench.core.conv import ConvShape
from lzo_bench.core.gates import GateSpec
from lzo_bench.core.model import SNN, SpikeRegularizer, classification_loss
from lzo_bench.core.rng import DrawKey
from lzo_bench.measure.workloads import (
    WORKLOADS,
    calibrate_deeper_layers,
    calibrate_gain,
    conv_workload,
)
from lzo_bench.ops.backends import Backend, cuda_simulator
from lzo_bench.ops.event_network import event_network

SMS, WARPS_PER_SM = 132, 64
HBM, PEAK = 3.35e12, 67e12
GPU_THREADS, SIM_THREADS, MAX_GRID = 256, 64, 65535
VALIDATE_BLOCKS, CONV_DW_WARPS, DET_BYTES = 528, 4096, 256 << 20
RULES = ("surrogate", "sparsegrad", "localzo")


def nnz(ptr: torch.Tensor) -> int:
    return int(ptr[-1]) if ptr.numel() else 0


class Recorder:
    """The op namespace as event_network sees it, recording each op call's shapes and the kernels it launched."""

    def __init__(self, lib, log: Path):
        self.lib, self.log, self.calls, self.name = lib, log, [], lib.name

    def _launches(self) -> list[list[str]]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        self.log.write_text("")
        return [line.split() for line in lines]

    def __getattr__(self, op: str):
        fn = getattr(self.lib, op)

        def call(*args):
            self._launches()  # nothing before belongs to this op
            out = fn(*args)
            launches = self._launches()
            if launches:
                self.calls.append((op, describe(op, args, out), launches))
            return out
        return call


def describe(op: str, a: tuple, out) -> dict:
    """An op call's shape: rows, B, T, widths and the valid lengths of its lists (names as in snn_cuda.cu)."""
    if op in ("lif_events_forward", "conv_lif_forward"):
        conv = op == "conv_lif_forward"
        w, steps = a[3], a[6] if conv else a[5]
        rows = a[0].numel() - 1
        d = {"rows": rows, "T": steps, "B": rows // steps, "nx": nnz(a[0]), "ncol_x": a[1].numel(), "ns": nnz(out[0]),
                 "na": nnz(out[3]), "sparse": out[4].numel() > 0 or out[3].numel() > 1, "gate": out[6].numel() > 0}
        if conv:
            c = ConvShape(*a[4])
            d.update(conv=c, N=c.units_out, Nin=c.units_in + int(w.shape[1] > c.c_in * c.kernel ** 2))
        else:
            d.update(N=w.shape[1], Nin=w.shape[0])
        return d
    if op == "pool_events":
        rows = a[0].numel() - 1
        c, h, wd = a[3]
        return {"rows": rows, "nx": nnz(a[0]), "ncol_x": a[1].numel(), "width_in": c * h * wd,
                    "width": (h // a[4]) * (wd // a[4]) * c, "nout": nnz(out[0]), "ncol_out": out[1].numel()}
    if op == "readout_forward":
        rows = a[0].numel() - 1
        return {"rows": rows, "T": a[3], "B": rows // a[3], "N": a[2].shape[0], "C": a[2].shape[1], "ns": nnz(a[0])}
    if op == "readout_backward":
        T, B, C = a[0].shape
        return {"rows": T * B, "T": T, "B": B, "C": C, "N": a[3].shape[0], "ns": nnz(a[1]), "na": nnz(a[5])}
    if op in ("lif_sparse_backward", "conv_sparse_backward"):
        conv = op == "conv_sparse_backward"
        w = a[8]
        steps = a[11] if conv else a[10]
        prev_ptr = a[12] if conv else a[11]
        rows = a[1].numel() - 1
        d = {"rows": rows, "T": steps, "B": rows // steps, "na": nnz(a[1]), "nx": nnz(a[5]), "np": nnz(prev_ptr)}
        if conv:
            c = ConvShape(*a[9])
            d.update(conv=c, N=c.units_out, units=c.units_in, Nin=w.shape[1] - c.c_in * c.kernel ** 2 + c.units_in,
                     cout=c.c_out, cols=w.shape[1], taps=c.c_in * c.kernel ** 2)
        else:
            d.update(N=w.shape[1], Nin=w.shape[0])
        return d
    if op in ("lif_dense_backward", "conv_dense_backward"):
        conv = op == "conv_dense_backward"
        steps = a[9] if conv else a[8]
        rows, N = a[0].shape
        w = a[6]
        Nin = (ConvShape(*a[7]).units_in + int(w.shape[1] > ConvShape(*a[7]).c_in * ConvShape(*a[7]).kernel ** 2)
               if conv else w.shape[0])
        return {"rows": rows, "T": steps, "B": rows // steps, "N": N, "Nin": Nin, "nx": nnz(a[3])}
    raise ValueError(f"no shape rule for {op}")


def full_shape(d: dict, T_full: int) -> dict:
    """The call at the workload's T: rows and event counts scaled by T_full / T (bound-sized lists with rows)."""
    if "T" not in d and "rows" in d:  # pool_events: rows are B*T too
        s = T_full / d["T_run"]
    else:
        s = T_full / d["T"]
    out = dict(d)
    for k in ("rows", "nx", "ncol_x", "ns", "na", "np", "nout", "ncol_out"):
        if k in out:
            out[k] = round(out[k] * s)
    if "T" in out:
        out["T"] = T_full
    return out


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def gpu_grid(kernel: str, op: str, d: dict, nth: int, threads: int) -> tuple[int, int, int]:
    """kernels/snn_cuda.cu's launch formula for ``kernel`` (the ``nth`` launch of it in the op), at ``threads``
    threads per block (the grid() helper: ceil(items / per_block), at least 1, at most 65 535)."""
    def grid(items: int, per_block: int = threads) -> int:
        return max(1, min(cdiv(items, per_block), MAX_GRID))
    k = kernel.split("<")[0]
    rows, B = d.get("rows"), d.get("B")
    if k == "validate_list_kernel":
        return (min(grid(max(rows, d["ncol_x"])), VALIDATE_BLOCKS), 1, 1)
    if k in ("compact_kernel", "scatter_rows_kernel", "scatter_rows_ordered_kernel", "readout_active_grad_kernel",
             "active_error_kernel", "gather_rows_kernel", "conv_dx_scatter_kernel", "count_nonzero_rows_kernel",
             "fill_events_kernel"):
        return (grid(rows * 32), 1, 1)
    if k == "events_forward_kernel":
        return (grid(B, 1), 1, 1)
    if k in ("readout_forward_kernel", "readout_backward_kernel"):
        return (grid(B * d["C"]), 1, 1)
    if k == "dense_reverse_kernel":
        return (grid(B * d["N"]), 1, 1)
    if k == "pool_rows_kernel":
        return (grid(rows), 1, 1)
    if k == "scan_rows_kernel":  # conv_sparse_backward: the input traces (nin), then the input gradient (units)
        return (grid(B * (d["Nin"] if nth == 0 else d["units"])), 1, 1)
    if k == "sparse_dw_kernel":  # the default mode: one group per batch row, one slice
        return (cdiv(d["Nin"], threads), min(B, MAX_GRID), 1)
    if k == "sparse_dx_kernel":
        return (cdiv(d["Nin"], threads), min(B, MAX_GRID), 1)
    if k == "conv_dw_kernel":
        part_bytes = d["cout"] * d["cols"] * 4
        want = max(1, min(rows, CONV_DW_WARPS, MAX_GRID * (threads // 32), DET_BYTES // part_bytes))
        rows_per = max(1, cdiv(rows, want))
        parts = max(1, cdiv(rows, rows_per))
        return (grid(parts * 32), 1, 1)
    raise ValueError(f"no launch formula for {kernel}")


def work(kernel: str, op: str, d: dict, nth: int) -> tuple[float, float]:
    """(bytes, ops) of one launch at shape ``d``: the tensors it reads and writes by their (valid) sizes, and
    its arithmetic. An estimate; see the module docstring."""
    k = kernel.split("<")[0]
    rows, B, N, Nin = d.get("rows", 0), d.get("B", 0), d.get("N", 0), d.get("Nin", 0)
    nx, ns, na, np_ = d.get("nx", 0), d.get("ns", 0), d.get("na", 0), d.get("np", 0)
    if k == "validate_list_kernel":
        return 4 * (rows + nx), rows + nx
    if k == "events_forward_kernel":
        conv = d.get("conv")
        w_bytes = 4 * Nin * N
        state = 6 * 4 * B * N  # u, s, counts read and written (per step in L1/L2; counted once)
        written = 4 * ns + 8 * na + 8 * rows + (4 * rows * N if d["gate"] else 0)
        lif = 12 * rows * N
        if conv:  # every output scans its row's events for the ones in its window
            return 8 * nx + 4 * (rows + 1) + w_bytes + state + written, 10 * (nx / max(rows, 1)) * rows * N + lif
        return 8 * nx + 4 * (rows + 1) + w_bytes + state + written, 2 * nx * N + lif
    if k == "compact_kernel":
        n = ns if nth == 0 else na
        return 8 * n + 8 * rows, n
    if k == "readout_forward_kernel":
        return 4 * ns + 4 * N * d["C"] + 4 * rows * d["C"] + 4 * rows, 2 * ns * d["C"] + 3 * rows * d["C"]
    if k == "readout_backward_kernel":
        return 4 * ns + 4 * rows + 8 * rows * d["C"] + 4 * B * N * d["C"], 2 * ns * d["C"] + 3 * rows * d["C"]
    if k == "readout_active_grad_kernel":
        return 8 * na + 4 * rows * d["C"] + 4 * N * d["C"], 2 * na * d["C"]
    if k == "active_error_kernel":
        return 16 * na + 4 * B * N, 2 * na
    if k == "sparse_dw_kernel":  # per active entry a row of dW^T (N_in atomics); the traces of every (row, input)
        return 8 * nx + 8 * na + 4 * N * Nin, 2 * na * Nin + 2 * rows * Nin
    if k == "sparse_dx_kernel":
        return 8 * na + 4 * N * Nin + 8 * np_, 2 * na * Nin + 2 * rows * Nin
    if k == "dense_reverse_kernel":
        return 12 * rows * N + 4 * B * N, 4 * rows * N
    if k in ("scatter_rows_kernel", "scatter_rows_ordered_kernel"):
        return 12 * nx + 4 * rows, nx
    if k == "scan_rows_kernel":
        width = d["Nin"] if nth == 0 else d["units"]
        return 8 * rows * width, 2 * rows * width
    if k == "conv_dw_kernel":
        return 8 * na + 4 * rows * Nin + 4 * d["cout"] * d["cols"], 2 * na * d["taps"]
    if k == "conv_dx_scatter_kernel":
        return 8 * na + 8 * rows * d["units"] + 4 * d["cout"] * d["cols"], 2 * na * d["taps"]
    if k == "gather_rows_kernel":
        return 12 * np_ + 4 * rows, np_
    if k == "pool_rows_kernel":
        return 8 * nx + 4 * rows + 4 * d["nout"], 6 * nx
    if k == "count_nonzero_rows_kernel":
        return 4 * rows * d["width"] + 4 * rows, rows * d["width"]
    if k == "fill_events_kernel":
        return 4 * rows * d["width"] + 8 * d["nout"], rows * d["width"]
    raise ValueError(f"no work model for {kernel}")


def setup(arch: str, workload: str, steps: int, batch: int | None):
    w = conv_workload(workload) if arch == "conv" else WORKLOADS[workload]
    T_full = w.steps
    w = replace(w, steps=steps, batch=batch or w.batch)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(w.steps, w.batch, w.n_in, generator=g) < w.synthetic_rate).float()
    y = torch.randint(w.n_out, (w.batch,), generator=g)
    gain, _ = calibrate_gain(w.network(), x)
    model = SNN(w.network("normal", gain), torch.Generator().manual_seed(0))
    if w.conv:
        calibrate_deeper_layers(model, x)
    return w, T_full, model, x, y


def one_update(model, x, y, rule: str, rec: Recorder) -> None:
    backend = Backend("cuda-sim", None, "launch log", lambda m, xx, s, k: event_network(m, xx, s, k, lib=rec))
    spec = GateSpec.build(rule, "normal", 0.05, 1)
    model.zero_grad(set_to_none=True)
    out = model(x, spec, DrawKey(0, 1), backend)
    (classification_loss(out.logits, y) + SpikeRegularizer(f_up=1.0)(out.counts)).backward()


def table(arch: str, workload: str, steps: int, batch: int | None) -> str:
    w, T_full, model, x, y = setup(arch, workload, steps, batch)
    log = Path(tempfile.mkdtemp()) / "launches.txt"
    os.environ["LZO_SIM_LAUNCH_LOG"] = str(log)
    rows_out, totals = [], []
    try:
        for rule in RULES:
            rec = Recorder(torch.ops.lzo_sim, log)
            one_update(model, x, y, rule, rec)
            entries = []
            calls = defaultdict(int)
            for op, d, launches in rec.calls:
                label = f"{op}[{calls[op]}]"  # [i]: the i-th call of the op in the update (layers in call order)
                calls[op] += 1
                d_full = full_shape(d | ({"T_run": steps} if "T" not in d else {}), T_full)
                seen = defaultdict(int)
                for name, gx, gy, gz, bx, shared in launches:
                    nth = seen[name]
                    seen[name] += 1
                    want = gpu_grid(name, op, d, nth, SIM_THREADS)
                    got = (int(gx), int(gy), int(gz))
                    if want != got or int(bx) != SIM_THREADS:
                        raise SystemExit(f"launch formula of {name} in {op} gives {want}, the simulator launched "
                                         f"{got} x {bx}: fix gpu_grid")
                    grid = gpu_grid(name, op, d_full, nth, GPU_THREADS)
                    b, o = work(name, op, d_full, nth)
                    entries.append((label, name, grid, int(shared), b, o))
            total = sum(max(b / HBM, o / PEAK) for *_, b, o in entries)
            for op, name, grid, shared, b, o in entries:
                blocks = grid[0] * grid[1] * grid[2]
                t = max(b / HBM, o / PEAK)
                share = t / total if total else 0.0
                warps = min(64.0, blocks * (GPU_THREADS // 32) / SMS)
                flag = share > 0.05 and (blocks < 2 * SMS or GPU_THREADS < 128)
                rows_out.append((rule, op, name, "×".join(map(str, grid)), blocks, warps, b, o, t, share, flag))
            totals.append((rule, len(entries), total))
    finally:
        os.environ.pop("LZO_SIM_LAUNCH_LOG", None)
    head = (f"\n### {workload} {arch}: B = {w.batch}, T = {T_full} (run at T = {steps}, grids and counts at "
            f"T = {T_full}; estimate)\n\n"
            "| rule | op | kernel | grid | blocks | threads | warps/SM (≤64) | MB | Mop | est. µs | share | flag |\n"
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
    body = "".join(f"| {r} | {op} | `{k}` | {g} | {bl} | {GPU_THREADS} | {wp:.1f} | {b / 1e6:.1f} | {o / 1e6:.1f} | "
                   f"{t * 1e6:.1f} | {s:.1%} | {'**<264 blocks**' if f else ''} |\n"
                   for r, op, k, g, bl, wp, b, o, t, s, f in rows_out)
    foot = "\n" + "".join(f"- {r}: {n} launches of the extension's kernels, est. {t * 1e6:.0f} µs in all\n"
                          for r, n, t in totals)
    return head + body + foot


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", default="nmnist")
    ap.add_argument("--arch", choices=("fc", "conv", "both"), default="both")
    ap.add_argument("--steps", type=int, default=4, help="time steps the simulator runs (grids are for the full T)")
    ap.add_argument("--batch", type=int, default=None, help="batch (default: the workload's, 256 fc / 32 conv)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    cuda_simulator()
    print(f"# Launch shapes (estimate): `python benchmarks/launch_shapes.py --workload {args.workload} --arch "
          f"{args.arch} --steps {args.steps}`, {platform.node()} ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, no GPU), {datetime.date.today()}")
    print("H100 SXM model: 132 SMs × 64 warps, 3.35 TB/s, 67 TFLOP/s fp32; warps/SM = min(64, blocks·8/132), "
          "register/shared-memory limits not modelled; est. µs = max(bytes/HBM, ops/peak); share = of the "
          "rule's logged kernels (GEMM/cuDNN/ATen not logged); flag: > 5 % and < 264 blocks of ≥ 128 threads.")
    for arch in (("fc", "conv") if args.arch == "both" else (args.arch,)):
        print(table(arch, args.workload, args.steps, args.batch), flush=True)


if __name__ == "__main__":
    main()
