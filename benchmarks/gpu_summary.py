"""One JSON summary of a gpu_check.sh run, from the stage outputs in its folder (stdout).

    python benchmarks/gpu_summary.py OUT/rest > OUT/summary.json
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return {"missing": f"{path.name}: {type(e).__name__}"}


def summarize(rest: Path) -> dict:
    stages = list(csv.DictReader((rest / "stages.tsv").open(), delimiter="\t")) if (rest / "stages.tsv").exists() else []
    layer = {}
    for f in sorted(rest.glob("layer-*.json")):
        d = _load(f)
        layer[f.stem.removeprefix("layer-")] = {
            "header": d.get("header"),
            "rows": [{k: r[k] for k in ("method", "fwd_ms", "bwd_ms", "active_pct", "saved_mib", "peak_mib")}
                     for r in d.get("rows", [])],
        }
    profile = {}
    for d in sorted(rest.glob("profile-*")):
        p = _load(d / "profile.json")
        profile[d.name.removeprefix("profile-")] = {
            "energy": p.get("energy"),
            "gpu": (p.get("machine") or {}).get("gpu"),
            "rows": [{k: r.get(k) for k in ("method", "backend", "fwd_ms", "bwd_ms", "opt_ms", "bwd_speedup_vs_surrogate",
                                            "overall_speedup_vs_surrogate", "active_pct", "peak_mib", "avg_w",
                                            "j_per_update", "j_per_update_std", "net_j_per_update", "fwd_j", "bwd_j",
                                            "opt_j", "energy_ratio_vs_surrogate", "sampled_vs_counter_gap_pct")}
                     for r in p.get("rows", [])],
        }
    onnx = _load(rest / "onnx.json")
    check = onnx.get("check") or {}
    return {
        "stages": stages,
        "failed_stages": [s["stage"] for s in stages if s.get("rc") != "0"],
        "doctor": _load(rest / "doctor.json"),
        "nvml": _load(rest / "nvml.json"),
        "cuda_vs_reference": _load(rest / "cuda_check.json"),
        "layer": layer,
        "profile": profile,
        "train_energy": _load(rest / "train_energy.json"),
        "onnxruntime": {k: check.get(k) for k in ("passed", "onnxruntime", "available_providers")}
        | {"parity": [{k: r.get(k) for k in ("provider", "steps", "spike_mismatch", "passed", "session_providers")}
                      for r in check.get("parity", [])]},
    }


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: gpu_summary.py REST_FOLDER")
    print(json.dumps(summarize(Path(sys.argv[1])), indent=1))
