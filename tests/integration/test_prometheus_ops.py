"""Prometheus end to end with the real server and promtool (Debian package `prometheus`):
the shipped scrape config passes `promtool check config`, a real (tiny, CPU) training run's exporter
output passes `promtool check metrics`, and every PromQL expression of dashboards/training.json returns
data from a real Prometheus that discovered the run through file_sd and scraped it.

There is no GPU here: the training process gets tests/fake_nvml first on its PYTHONPATH (a stand-in
pynvml, see its docstring), so the exporter's real NVML collector code produces the DCGM_* series."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from tests.helpers import mltrain_cmd, tiny_run_config, write_config

from mltrain.ops.dashboard import load_dashboard, panel_queries, query_range, render_png
from mltrain.telemetry import prometheus as P

ROOT = Path(__file__).resolve().parents[2]
SCRAPE_CONFIG = ROOT / "configs" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "dashboards" / "training.json"
FAKE_NVML = str(ROOT / "tests" / "fake_nvml")


@pytest.fixture(scope="module")
def prom_bins() -> tuple[str, str]:
    """prometheus and promtool; installed with apt-get when missing and we are root (as CI is)."""
    if not (shutil.which("prometheus") and shutil.which("promtool")) and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"]
        if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True)
            subprocess.run(cmd, env=env, capture_output=True)
    prom, tool = shutil.which("prometheus"), shutil.which("promtool")
    if not (prom and tool):
        pytest.skip("prometheus/promtool not installed and apt-get could not install the Debian package `prometheus`")
    return prom, tool


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shipped_scrape_config_passes_promtool(prom_bins):
    r = subprocess.run([prom_bins[1], "check", "config", str(SCRAPE_CONFIG)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    sd = yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"][0]["file_sd_configs"]
    assert sd and sd[0]["files"][0].endswith("prometheus/targets/*.json")


def test_dashboard_is_built_on_exported_names():
    exported = set(P.HELP) | set(P.DCGM_FIELDS) | {"mltrain_stragglers_total"}
    used = set()
    for _, expr in panel_queries(load_dashboard(DASHBOARD)):
        used |= {m for m in re.findall(r"\b(mltrain_[a-z_]+|DCGM_FI_[A-Z_]+)\b", expr)}
    assert used and used <= exported, used - exported
    assert {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_GPU_TEMP"} <= used


@pytest.mark.slow
def test_training_run_scraped_and_dashboard_returns_data(tmp_path, tiny_data_dir, prom_bins):
    prom, promtool = prom_bins
    targets = tmp_path / "prometheus" / "targets"  # <base>/prometheus/targets, base = tmp_path
    targets.mkdir(parents=True)
    conf = yaml.safe_load(SCRAPE_CONFIG.read_text())  # the shipped config, pointed at this test's base dir
    conf["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    conf["scrape_configs"][0]["file_sd_configs"][0].update(files=[str(targets / "*.json")], refresh_interval="1s")
    (tmp_path / "prom.yml").write_text(yaml.safe_dump(conf))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [prom, f"--config.file={tmp_path / 'prom.yml'}", f"--web.listen-address=127.0.0.1:{port}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        cfg = tiny_run_config(tmp_path, tiny_data_dir, "prom", max_steps=16, log_every=2, eval_every=8)
        cfg["checkpoint"] = {"every_steps": 4, "keep_last": 2}
        cfg["log"] = {"prometheus": {"enabled": True, "port": 0, "addr": "127.0.0.1", "linger_s": 6.0}}
        path = write_config(tmp_path / "prom.yaml", cfg)
        env = {**os.environ, "PYTHONPATH": FAKE_NVML + os.pathsep + os.environ.get("PYTHONPATH", "")}
        t_start = time.time()
        train = subprocess.Popen(mltrain_cmd("train", str(path)), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        deadline = time.time() + 240
        while not list(targets.glob("prom--*.json")) and train.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        files = list(targets.glob("prom--*.json"))
        assert files, "the exporter wrote no file_sd target"
        target = json.loads(files[0].read_text())[0]
        assert target["labels"] == {"run": "prom"}
        text = urllib.request.urlopen(f"http://{target['targets'][0]}/metrics", timeout=10).read()
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
        assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
        assert b"DCGM_FI_DEV_GPU_UTIL{" in text and b"mltrain_loss" in text
        # linger_s keeps the endpoint up after the last step: wait until Prometheus has scraped the final step
        final_scraped = False
        while train.poll() is None and time.time() < deadline:
            last = query_range(url, 'mltrain_step{run="prom"}', t_start, time.time())
            final_scraped = final_scraped or any(float(v[1]) == 16 for x in last for v in x["values"])
            time.sleep(0.5)
        out, _ = train.communicate(timeout=240)
        assert train.returncode == 0, out[-3000:]
        assert final_scraped, "Prometheus never scraped the final step within linger_s"
        assert not files[0].exists()  # the finished run removed its target
        t_end = time.time()

        empty = []
        queries = panel_queries(load_dashboard(DASHBOARD))
        for title, expr in queries:
            if not query_range(url, expr, t_start, t_end):
                empty.append(f"{title}: {expr}")
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
        loss = query_range(url, 'mltrain_loss{run="prom"}', t_start, t_end)[0]["values"]
        assert 0 < float(loss[-1][1]) < 20
        # "returns data" is not enough: the last scraped values are the run's own last figures
        from mltrain.train.metrics import read_metrics

        recs = read_metrics(tmp_path / "runs" / "prom")
        last = {
            kind: [r[field] for r in recs if r.get("kind") == kind and isinstance(r.get(field), (int, float))][-1]
            for kind, field in (("train", "loss"), ("eval", "val_loss"))
        }
        val = query_range(url, 'mltrain_val_loss{run="prom"}', t_start, t_end)[0]["values"]
        assert float(val[-1][1]) == pytest.approx(last["eval"], rel=1e-9) and last["eval"] > 0
        assert float(loss[-1][1]) == pytest.approx(last["train"], rel=1e-9)
        util = query_range(url, 'DCGM_FI_DEV_GPU_UTIL{run="prom"}', t_start, t_end)
        assert sorted((s["metric"]["gpu"], s["metric"]["UUID"], s["metric"]["model_name"], s["values"][-1][1])
                      for s in util) == [("0", "GPU-fake-0000", "NVIDIA H100 80GB HBM3", "90"),
                                         ("1", "GPU-fake-0001", "NVIDIA H100 80GB HBM3", "91")]  # fmt: skip
        png = render_png(url, load_dashboard(DASHBOARD), t_start, t_end, tmp_path / "dash.png")
        assert png.stat().st_size > 10_000
        if os.environ.get("MLTRAIN_DASHBOARD_PNG"):  # how docs/operate-dashboard.png is made
            shutil.copy(png, os.environ["MLTRAIN_DASHBOARD_PNG"])
    finally:
        server.terminate()
        server.wait(timeout=30)
