"""One JSON summary of a gpu_check.sh run, from the stage outputs in its folder (stdout). The script
rewrites it before and after every stage, so it must read whatever a cut run left: a missing or
half-written file becomes ``{"missing": ...}``, never an error. Its fields: gpu_check.sh's header.

    python benchmarks/gpu_summary.py REST [--state S] [--running STAGE] [--elapsed S] [--deadline S]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

SANITIZERS = ("memcheck", "racecheck", "synccheck", "initcheck")


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return {"missing": f"{path.name}: {type(e).__name__}"}


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _junit(path: Path) -> dict:
    """pytest's JUnit XML: how many tests ran, failed, errored, were skipped."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        return {"missing": f"{path.name}: {type(e).__name__}"}
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return {"missing": f"{path.name}: no testsuite"}
    out = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    out["failed"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                     if c.find("failure") is not None or c.find("error") is not None]
    return out


def _sanitizer(path: Path, stage: dict | None) -> dict:
    """compute-sanitizer's verdict: the stage's status and its ERROR SUMMARY line."""
    status = stage["status"] if stage else "not run"
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {"status": status, "summary": None}
    found = re.findall(r"ERROR SUMMARY: .*", text)
    return {"status": status, "summary": found[-1].strip() if found else None}


def _stages(rest: Path) -> list[dict]:
    try:
        with (rest / "stages.tsv").open() as f:
            return [{k: v or "" for k, v in row.items() if k is not None} for row in csv.DictReader(f, delimiter="\t")]
    except OSError:
        return []


def summarize(rest: Path, run: dict | None = None) -> dict:
    stages = _stages(rest)
    by_name = {s["stage"]: s for s in stages}
    layer = {}
    for f in sorted(rest.glob("layer-*.json")):
        d = _dict(_load(f))
        layer[f.stem.removeprefix("layer-")] = {
            "header": d.get("header"),
            "rows": [{k: r.get(k) for k in ("method", "fwd_ms", "bwd_ms", "active_pct", "saved_mib", "peak_mib")}
                     for r in d.get("rows", []) if isinstance(r, dict)],
        }
    profile = {}
    for d in sorted(rest.glob("profile-*")):
        p = _dict(_load(d / "profile.json"))
        profile[d.name.removeprefix("profile-")] = {
            "energy": p.get("energy"),
            "gpu": (p.get("machine") or {}).get("gpu"),
            "rows": [{k: r.get(k) for k in ("method", "backend", "fwd_ms", "bwd_ms", "opt_ms", "bwd_speedup_vs_surrogate",
                                            "overall_speedup_vs_surrogate", "active_pct", "peak_mib", "avg_w",
                                            "j_per_update", "j_per_update_std", "net_j_per_update", "fwd_j", "bwd_j",
                                            "opt_j", "energy_ratio_vs_surrogate", "sampled_vs_counter_gap_pct")}
                     for r in p.get("rows", []) if isinstance(r, dict)],
        } | ({"missing": p["missing"]} if "missing" in p else {})
    onnx = _dict(_load(rest / "onnx.json"))
    check = _dict(onnx.get("check"))
    return {
        "run": run or {},
        "stages": stages,
        "failed_stages": [s["stage"] for s in stages if s.get("status") in ("failed", "timeout")],
        "skipped_stages": [s["stage"] for s in stages if s.get("status") == "skipped"],
        "gpu_tests": _junit(rest / "gpu-tests.xml"),
        "sanitizers": {t: _sanitizer(rest / f"{t}.txt", by_name.get(t)) for t in SANITIZERS},
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rest", type=Path)
    ap.add_argument("--state", default="finished")
    ap.add_argument("--running", default="")
    ap.add_argument("--elapsed", type=float, default=None)
    ap.add_argument("--deadline", type=float, default=None)
    ap.add_argument("--dry-run", type=int, default=0)
    a = ap.parse_args()
    run = {"state": a.state, "running": a.running, "elapsed_s": a.elapsed, "deadline_s": a.deadline,
           "dry_run": bool(a.dry_run)}
    print(json.dumps(summarize(a.rest, run), indent=1))


if __name__ == "__main__":
    main()
