"""benchmarks/gpu_check.sh in its dry-run mode (stand-in stages that sleep and fail on cue, no GPU): one
call holds its deadline, a kill anywhere leaves a readable summary.json, nothing starts past the
deadline, a failed build stops the later stages; and every import on the GPU machine's path works
without the packages it lacks (tonic, nir, nirtorch, the peer libraries, neurobench, ray)."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
FILES = {"summary.json", "log.txt", "rest.tar.gz"}
#: what the GPU machine does not have
ABSENT = ("tonic", "nir", "nirtorch", "snntorch", "spikingjelly", "norse", "neurobench", "ray")


def _env(out: Path, seconds: int, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    env.update(OUT=str(out), PYTHON=sys.executable, GPU_CHECK_SECONDS=str(seconds), GPU_CHECK_RESERVE="1",
               GPU_CHECK_MIN_STAGE="1", **extra)
    return env


def _run(out: Path, seconds: int, **extra: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run"], env=_env(out, seconds, **extra), capture_output=True,
                          text=True, timeout=seconds + 30)
    return proc, time.monotonic() - t0


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _files(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if not p.name.endswith(".tmp")}  # a kill mid-write may leave a .tmp


def _stages(summary: dict) -> dict[str, dict]:
    return {s["stage"]: s for s in summary["stages"]}


def test_the_deadline_holds_and_nothing_starts_past_it(tmp_path):
    proc, wall = _run(tmp_path, 5, GPU_CHECK_DRY_SLEEP="*:1")
    assert wall < 5 + 3, proc.stdout
    assert proc.returncode == 2, proc.stdout + proc.stderr  # stages were skipped
    s = _summary(tmp_path)
    assert s["run"]["state"] == "finished" and s["run"]["dry_run"] is True
    stages = s["stages"]
    assert [r["stage"] for r in stages[:3]] == ["env", "build", "doctor"]
    ran = [r for r in stages if r["status"] != "skipped"]
    assert ran and all(float(r["started_at"]) <= 5 - 1 - 1 for r in ran)  # deadline - reserve - minimum
    assert all(float(r["started_at"]) + float(r["limit"]) <= 5 - 1 + 0.01 for r in ran)
    assert stages[-1]["status"] == "skipped" and stages[-1]["note"] == "deadline"
    assert "profile-shd" in s["skipped_stages"]
    assert _files(tmp_path) == FILES


def test_a_stage_past_the_deadline_is_cut_there_and_says_so(tmp_path):
    proc, wall = _run(tmp_path, 4, GPU_CHECK_DRY_SLEEP="env:60")
    assert wall < 4 + 4
    env = _stages(_summary(tmp_path))["env"]
    assert env["status"] == "timeout" and env["rc"] == "124" and env["note"] == "clipped by the deadline"
    assert _summary(tmp_path)["failed_stages"] == ["env"]


def test_a_failed_build_stops_the_later_stages_and_says_so(tmp_path):
    proc, _ = _run(tmp_path, 20, GPU_CHECK_DRY_FAIL="build")
    assert proc.returncode == 1
    s = _summary(tmp_path)
    assert s["run"]["state"] == "stopped: the build failed"
    stages = s["stages"]
    assert [(r["stage"], r["status"]) for r in stages[:2]] == [("env", "ok"), ("build", "failed")]
    assert all(r["status"] == "skipped" and r["note"] == "the build failed" for r in stages[2:])
    assert "the CUDA ops did not build" in (tmp_path / "log.txt").read_text()
    with tarfile.open(tmp_path / "rest.tar.gz") as tar:
        assert "rest/stages.tsv" in tar.getnames()


def test_a_stage_that_needs_a_missing_package_is_skipped_in_one_line(tmp_path):
    proc, _ = _run(tmp_path, 20, GPU_CHECK_ONLY="nvml,onnxruntime", GPU_CHECK_DRY_MISSING="onnxruntime")
    stages = _stages(_summary(tmp_path))
    assert stages["nvml"]["status"] == "ok"
    assert stages["onnxruntime"]["status"] == "skipped" and stages["onnxruntime"]["note"] == "needs onnxruntime"
    assert stages["build"]["note"] == "not selected"
    lines = [line for line in (tmp_path / "log.txt").read_text().splitlines() if "onnxruntime" in line]
    assert lines == ["== onnxruntime skipped: needs onnxruntime (not installed here)"]
    assert proc.returncode == 2  # a skipped stage is not a pass


def test_only_the_selected_stages_run_and_their_passing_is_a_pass(tmp_path):
    proc, _ = _run(tmp_path, 20, GPU_CHECK_ONLY="env,build")
    assert proc.returncode == 0, proc.stdout
    s = _summary(tmp_path)
    assert [r["stage"] for r in s["stages"] if r["status"] == "ok"] == ["env", "build"]
    assert s["failed_stages"] == [] and "profile-nmnist" in s["skipped_stages"]


@pytest.mark.parametrize("moment", [0.3, 1.2, 2.5])
def test_a_kill_at_any_moment_leaves_a_readable_summary(tmp_path, moment):
    proc = subprocess.Popen(["bash", str(SCRIPT), "--dry-run"], env=_env(tmp_path, 30, GPU_CHECK_DRY_SLEEP="*:0.7"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        t0 = time.monotonic()
        while not (tmp_path / "summary.json").exists() and time.monotonic() - t0 < 20:
            time.sleep(0.02)
        time.sleep(moment)
        os.kill(proc.pid, signal.SIGKILL)  # the script only: what a cut call does to it
        proc.wait()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its orphaned stage, if any
        except ProcessLookupError:
            pass
    s = _summary(tmp_path)
    assert s["run"]["state"] == "running"
    ran = [r["stage"] for r in s["stages"]]
    assert ran == ["env", "build", "doctor", "gpu-tests", "nvml"][:len(ran)]
    assert s["run"]["running"] or ran  # which stage it was in, or which had finished
    assert _files(tmp_path) <= FILES
    with tarfile.open(tmp_path / "rest.tar.gz") as tar:
        assert "rest/stages.tsv" in tar.getnames()


def test_the_summary_reads_a_half_written_run(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_summary
    finally:
        sys.path.pop(0)
    rest = tmp_path / "rest"
    (rest / "profile-nmnist").mkdir(parents=True)
    (rest / "profile-nmnist" / "profile.json").write_text('{"rows": [{"method": "surr')  # cut mid-write
    (rest / "doctor.json").write_text('[{"item": "torch"}]')
    (rest / "memcheck.txt").write_text("========= ERROR SUMMARY: 0 errors\n")
    (rest / "gpu-tests.xml").write_text('<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
                                        '<testcase classname="t" name="a"><failure/></testcase></testsuite></testsuites>')
    (rest / "stages.tsv").write_text("stage\tstatus\trc\tseconds\tlimit\tstarted_at\tnote\nmemcheck\tok\t0\t1\t60\t9\t\n")
    s = gpu_summary.summarize(rest)
    assert s["profile"]["nmnist"]["missing"] == "profile.json: JSONDecodeError" and s["profile"]["nmnist"]["rows"] == []
    assert s["sanitizers"]["memcheck"] == {"status": "ok", "summary": "ERROR SUMMARY: 0 errors"}
    assert s["gpu_tests"] | {"failed": None} == {"tests": 3, "failures": 1, "errors": 0, "skipped": 1, "failed": None}
    assert s["gpu_tests"]["failed"] == ["t::a"]
    json.dumps(s)


# -- the GPU machine's imports: no tonic, nir, nirtorch, peer libraries, neurobench or ray ------------------

BLOCKER = textwrap.dedent(f"""
    import sys
    ABSENT = {ABSENT!r}

    class _Absent:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name.split(".")[0] in ABSENT:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not on the GPU machine)", name=name)
            return None

    sys.meta_path.insert(0, _Absent)
""")


@pytest.fixture
def without_optional(tmp_path):
    """An environment where the GPU machine's absent packages cannot be imported (a sitecustomize
    putting a finder first on ``sys.meta_path`` that raises what a missing module raises)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{ROOT}")
    env.pop("GPU_CHECK_ONLY", None)
    return env


def test_the_blocker_blocks(without_optional):
    proc = subprocess.run([sys.executable, "-c", "import tonic"], env=without_optional, capture_output=True, text=True)
    assert proc.returncode == 1 and "blocked: not on the GPU machine" in proc.stderr


def test_every_stage_imports_without_the_absent_packages(without_optional):
    """What each stage of gpu_check.sh imports (the modules its -c snippets, cli.py and the benchmark
    scripts name), in one process with the packages blocked."""
    code = textwrap.dedent("""
        import importlib, runpy, sys
        for m in ("lzo_bench.cli.typer_app", "lzo_bench.cli.doctor_checks", "lzo_bench.ops.extension",
                  "lzo_bench.ops.backends", "lzo_bench.ops.selfcheck", "lzo_bench.measure.energy",
                  "lzo_bench.measure.profile", "lzo_bench.training.train", "lzo_bench.export.parity",
                  "lzo_bench.export.onnx_model", "lzo_bench.export.nir_graph", "lzo_bench.export.run"):
            importlib.import_module(m)
        sys.argv = ["cuda_check.py", "--help"]
        for script in ("benchmarks/cuda_check.py", "benchmarks/layer_speed.py"):
            sys.argv[0] = script
            try:
                runpy.run_path(script, run_name="__main__")
            except SystemExit as e:
                assert e.code in (0, None), (script, e.code)
        from lzo_bench.cli.doctor_checks import extra_checks
        rows = {c.item: c.status for c in extra_checks()}
        assert all(rows[m] != "ok" for m in ("tonic", "nir", "ray")), rows
        print("imports ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=without_optional, capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "imports ok" in proc.stdout, proc.stderr[-3000:]


def test_the_gpu_tests_collect_without_the_absent_packages(without_optional):
    """`pytest -m gpu tests` collects every test module (~50 s on a loaded CI core): one module that
    imports an absent package at its top would stop the stage before any test ran."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", "-m", "gpu",
                           "tests"], env=without_optional, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "error" not in proc.stdout.splitlines()[-1].lower(), proc.stdout[-2000:]


# -- one variant of the ops per process (a GPU machine's processes: doctor, the simulator's tests) ----------

@pytest.fixture
def fake_builds(monkeypatch):
    from lzo_bench.ops import extension as ops

    built = []

    @functools.lru_cache(maxsize=None)  # as the real one: compiled and loaded once
    def fake_build(cuda, verbose):
        if cuda and fail_cuda:
            raise RuntimeError("nvcc: error")
        built.append(cuda)
        return ops.Extension(cuda=cuda, path=f"fake-{cuda}")

    fail_cuda = False
    monkeypatch.setattr(ops, "_build", fake_build)
    monkeypatch.setattr(ops, "_LOADED", [])
    monkeypatch.setattr(ops, "_FAILED", {})
    monkeypatch.setattr(ops, "cuda_toolchain", lambda: None)

    def machine(gpu: bool, cuda_fails: bool = False):
        nonlocal fail_cuda
        fail_cuda = cuda_fails
        monkeypatch.setattr(ops.torch.cuda, "is_available", lambda: gpu)
        return ops, built

    return machine


def test_on_a_gpu_machine_the_cpu_request_gets_the_cuda_build(fake_builds):
    ops, built = fake_builds(gpu=True)
    assert ops.build(cuda=False).cuda and ops.build(cuda=True).cuda and ops.build().cuda
    assert built == [True]  # never the CPU-only library beside it (the same ops registered twice abort)


def test_the_cuda_build_after_the_cpu_only_one_raises_instead_of_aborting(fake_builds):
    ops, built = fake_builds(gpu=False)
    assert not ops.build(cuda=False).cuda
    with pytest.raises(RuntimeError, match="CPU-only lzo ops are loaded in this process already"):
        ops.build(cuda=True)
    assert built == [False]


def test_where_the_cuda_build_fails_the_cpu_request_gets_the_cpu_build(fake_builds):
    ops, built = fake_builds(gpu=True, cuda_fails=True)
    assert not ops.build(cuda=False).cuda
    with pytest.raises(RuntimeError):
        ops.build(cuda=True)
    assert built == [False]
