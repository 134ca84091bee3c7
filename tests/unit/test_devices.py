"""devices.no_gpu_here: no GPU driver here means torch would find no GPU, so the launcher need not import
torch to learn it; any trace of a driver means "ask torch"."""

from __future__ import annotations

import pytest

from mltrain.devices import no_gpu_here


@pytest.mark.parametrize("trace", ["proc/driver/nvidia", "dev/nvidiactl", "dev/kfd"])
def test_a_driver_trace_means_ask_torch(tmp_path, monkeypatch, trace):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert no_gpu_here(tmp_path) is True
    (tmp_path / trace).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / trace).touch()
    assert no_gpu_here(tmp_path) is False
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert no_gpu_here(tmp_path) is False


@pytest.mark.parametrize("hidden", ["", "-1", " "])
def test_cuda_visible_devices_that_hides_every_gpu(tmp_path, monkeypatch, hidden):
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "nvidiactl").touch()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
    assert no_gpu_here(tmp_path) is True


def test_the_launcher_of_a_cpu_run_does_not_import_torch(tmp_path, monkeypatch):
    """device auto on this GPU-less machine: the plan of `mltrain train --nproc 2` never loads torch."""
    import subprocess
    import sys

    if not no_gpu_here():
        pytest.skip("this machine has a GPU driver: torch is asked")
    code = (
        "import sys\nfrom mltrain.launch.local import _fit_to_gpus\n"
        "assert _fit_to_gpus(2, 'auto') == 2\nprint('torch' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
