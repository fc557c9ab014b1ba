"""CUDA_HOME from the real toolkit (issue 31.2): torch guesses it from the nvcc on PATH, and where that is
a wrapper script (/usr/local/bin/nvcc: ``exec /usr/local/cuda-13.0/bin/nvcc "$@"``) it takes /usr/local
and links a missing -L/usr/local/lib64. The build takes the toolkit behind it; doctor says so in one row.
Fake toolkits under tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lzo_bench.cli import doctor_checks as doctor
from lzo_bench.ops import extension as ops


def _toolkit(root: Path, lib: str = "lib64") -> Path:
    (root / "bin").mkdir(parents=True)
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho fake nvcc\n")
    nvcc.chmod(0o755)
    (root / lib).mkdir(parents=True)
    (root / lib / "libcudart.so.13").write_text("")
    return root


def _wrapper(folder: Path, target: Path) -> Path:
    (folder / "bin").mkdir(parents=True, exist_ok=True)
    w = folder / "bin" / "nvcc"
    w.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
    w.chmod(0o755)
    return w


def _which(path: Path | None):
    return lambda name: str(path) if path is not None and name == "nvcc" else None


def test_a_wrapper_nvcc_on_path_leads_to_the_toolkit_behind_it(tmp_path):
    kit = _toolkit(tmp_path / "cuda-13.0")
    wrapper = _wrapper(tmp_path / "local", kit / "bin" / "nvcc")
    missing = str(tmp_path / "none")
    assert ops.torch_cuda_home({}, _which(wrapper), missing) == str(tmp_path / "local")  # torch's guess
    assert not ops.is_cuda_toolkit(tmp_path / "local")  # no lib64/libcudart*
    home, how = ops.find_cuda_home({}, _which(wrapper), missing)
    assert home == str(kit) and str(wrapper) in how and str(kit / "bin" / "nvcc") in how


def test_a_symlinked_nvcc_and_a_targets_lib_layout(tmp_path):
    kit = _toolkit(tmp_path / "cuda-12.8", lib="targets/x86_64-linux/lib")
    (tmp_path / "bin").mkdir()
    link = tmp_path / "bin" / "nvcc"
    link.symlink_to(kit / "bin" / "nvcc")
    assert ops.find_cuda_home({}, _which(link), str(tmp_path / "none"))[0] == str(kit)


def test_cuda_home_from_the_environment_when_it_is_a_toolkit_else_the_next_guess(tmp_path):
    kit = _toolkit(tmp_path / "cuda")
    other = _toolkit(tmp_path / "cuda-other")
    assert ops.find_cuda_home({"CUDA_HOME": str(other)}, _which(kit / "bin" / "nvcc"))[0] == str(other)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    assert ops.find_cuda_home({"CUDA_HOME": str(wrong)}, _which(None), str(kit)) == (str(kit), str(kit))
    home, why = ops.find_cuda_home({"CUDA_HOME": str(wrong)}, _which(None), str(tmp_path / "none"))
    assert home is None and f"$CUDA_HOME={wrong}" in why and "libcudart" in why


def test_a_wrapper_loop_or_a_wrapper_to_nothing_stops(tmp_path):
    a = _wrapper(tmp_path / "a", tmp_path / "b" / "bin" / "nvcc")
    _wrapper(tmp_path / "b", a)
    home, why = ops.find_cuda_home({}, _which(a), str(tmp_path / "none"))
    assert home is None and "no CUDA toolkit" in why


@pytest.fixture(autouse=True)
def _real_cuda_home():
    """use_cuda_home() writes $CUDA_HOME and torch's cpp_extension.CUDA_HOME itself: put both back after
    every test, so that later tests (the nvcc compile check) see this machine's real toolkit."""
    cpp = ops._cpp_extension()
    saved = os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cpp.CUDA_HOME
    yield
    for name, value in zip(("CUDA_HOME", "CUDA_PATH"), saved[:2]):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    cpp.CUDA_HOME = saved[2]


def _fake_machine(monkeypatch, tmp_path) -> Path:
    """This process sees only the fake wrapper and toolkit."""
    kit = _toolkit(tmp_path / "cuda-13.0")
    wrapper = _wrapper(tmp_path / "local", kit / "bin" / "nvcc")
    for name in ("CUDA_HOME", "CUDA_PATH"):  # set first, so that teardown restores the real value (or its absence)
        monkeypatch.setenv(name, "")  # after use_cuda_home() writes os.environ itself
        monkeypatch.delenv(name)
    monkeypatch.setattr(ops.shutil, "which", _which(wrapper))
    monkeypatch.setattr(ops, "_CUDA_HOME_FIX", [])
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    cpp = ops._cpp_extension()
    monkeypatch.setattr(cpp, "CUDA_HOME", str(tmp_path / "local"))  # what torch computed at its import
    return kit


def test_the_build_path_sets_cuda_home_to_the_toolkit(monkeypatch, tmp_path):
    kit = _fake_machine(monkeypatch, tmp_path)
    assert ops.cuda_toolchain() is None
    assert ops.use_cuda_home() == str(kit)
    assert os.environ["CUDA_HOME"] == str(kit) and ops._cpp_extension().CUDA_HOME == str(kit)
    assert "torch takes CUDA_HOME=" + str(tmp_path / "local") in ops.cuda_home_problem()


def test_doctor_reports_a_wrong_cuda_home_in_one_row(monkeypatch, tmp_path):
    kit = _fake_machine(monkeypatch, tmp_path)
    row = doctor.cuda_home_check()
    assert row.item == "CUDA_HOME" and row.status == doctor.MISSING and "\n" not in row.detail
    assert f"torch takes CUDA_HOME={tmp_path / 'local'}" in row.detail and f"export CUDA_HOME={kit}" in row.detail
    monkeypatch.setenv("CUDA_HOME", str(kit))  # set right: torch takes it as it is
    row = doctor.cuda_home_check()
    assert row.status == doctor.OK and row.detail.startswith(str(kit))


def test_doctor_cuda_home_row_on_a_cpu_only_torch(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    assert doctor.cuda_home_check().status == doctor.NA


@pytest.mark.skipif(not Path("/usr/local/bin/nvcc").is_file() or not Path("/usr/local/cuda").is_dir(),
                    reason="no /usr/local/bin/nvcc wrapper here")
def test_this_machine_wrapper(monkeypatch):
    for name in ("CUDA_HOME", "CUDA_PATH"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    home, _ = ops.find_cuda_home()
    assert home is not None and ops.is_cuda_toolkit(home) and Path(home).resolve() == Path("/usr/local/cuda").resolve()


def test_the_fake_machine_leaves_no_cuda_home_behind():
    """A later test (the nvcc compile check) must see this process's real CUDA_HOME, not the fake toolkit."""
    assert "pytest-of" not in os.environ.get("CUDA_HOME", ""), os.environ.get("CUDA_HOME")
    assert "pytest-of" not in str(ops._cpp_extension().CUDA_HOME), ops._cpp_extension().CUDA_HOME
