"""MetricsWriter's pluggable sinks, the file_sd target files and the trackers' record mapping."""

from __future__ import annotations

import json

from mltrain.telemetry.file_sd import targets_dir, write_job_targets, write_self_target
from mltrain.telemetry.prometheus import restarts_in
from mltrain.telemetry.trackers import numeric_fields
from mltrain.train.metrics import MetricsWriter, read_metrics


class Collect:
    def __init__(self):
        self.records, self.closed = [], False

    def write(self, record):
        self.records.append(record)

    def close(self):
        self.closed = True


class Broken(Collect):
    def write(self, record):
        raise ConnectionError("server down")


def test_sinks_get_every_record_and_a_broken_sink_is_dropped(tmp_path, capsys):
    w = MetricsWriter(tmp_path, tensorboard=False)
    w.write({"kind": "start", "step": 0})
    late, broken = Collect(), Broken()
    w.add_sink(late)  # replays `start`
    w.add_sink(broken)
    w.add_enricher(lambda r: {"extra": 1} if r["kind"] == "train" else {})
    w.write({"kind": "train", "step": 1, "loss": 2.0})
    w.write({"kind": "train", "step": 2, "loss": 1.5})
    w.close()
    assert [r["kind"] for r in late.records] == ["start", "train", "train"] and late.closed
    assert late.records[1]["extra"] == 1
    assert "sink Broken failed (server down); disabled" in capsys.readouterr().out
    assert [r.get("extra") for r in read_metrics(tmp_path)] == [None, 1, 1]  # the file has every record


def test_file_sd_targets(tmp_path):
    run_dir = tmp_path / "runs" / "r1"
    p = write_job_targets(run_dir, "r1", ["p5-1", "p5-2"], 9410, "77")
    assert p.parent == targets_dir(run_dir) == tmp_path / "prometheus" / "targets"
    assert json.loads(p.read_text()) == [
        {"targets": ["p5-1:9410", "p5-2:9410"], "labels": {"run": "r1", "slurm_job_id": "77"}}
    ]
    q = write_self_target(run_dir, "r1", "p5-1", 9411)
    assert q.name == "r1--p5-1-9411.json"


def test_restarts_follow_the_one_definition(tmp_path):
    lines = [{"action": "requeue"}, {"action": "none"}, {"action": "restart_in_place"}, {"action": "give_up"}]
    (tmp_path / "restarts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert restarts_in(tmp_path) == 2


def test_tracker_metric_names():
    assert numeric_fields({"kind": "train", "step": 3, "time": 1.0, "loss": 2.0, "mfu": None}) == {"loss": 2.0}
    assert numeric_fields({"kind": "checkpoint", "step": 3, "ok": True, "stall_s": 0.5}) == {"checkpoint_stall_s": 0.5}


def _samples(text: str, prefix: str = "mltrain_") -> dict:
    """{sample name: value} of the unlabelled series in a /metrics page (parsed by prometheus-client)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        s.name: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name.startswith(prefix) and not s.name.endswith("_created")
    }


def _cfg(tmp_path, **prom):
    from mltrain.config import RunConfig

    log = {"prometheus": {"enabled": True, "port": 0, "addr": "127.0.0.1", "gpu_metrics": False, **prom}}
    return RunConfig.model_validate({"name": "u", "base_dir": str(tmp_path), "model": {"preset": "tiny"}, "log": log})


def test_exporter_serves_the_records(tmp_path):
    import urllib.request

    from mltrain.telemetry.prometheus import PrometheusExporter

    cfg = _cfg(tmp_path)
    exp = PrometheusExporter(cfg.log.prometheus, cfg.run_dir, cfg.name, training=True)
    try:
        exp.write({"kind": "train", "step": 7, "loss": 2.5, "tokens_per_s": 1000.0, "mfu": None, "data_wait_s": 0.01})
        exp.write({"kind": "checkpoint", "step": 7, "ok": True, "stall_s": 0.5, "save_s": 2.25, "time": 1234.0})
        exp.write({"kind": "checkpoint", "step": 8, "ok": False, "stall_s": 9.0, "save_s": 9.0, "time": 9999.0})
        exp.write({"kind": "straggler", "step": 7, "slowdown": 0.4})
        exp.write({"kind": "train", "step": 8, "loss": 2.25, "mfu": 0.375, "step_time_s": 0.125})
        exp.write({"kind": "eval", "step": 8, "val_loss": 3.125})
        exp.write({"kind": "eval", "step": 8, "val_loss": None})  # an eval without a loss keeps the last one
        text = urllib.request.urlopen(f"http://127.0.0.1:{exp.port}/metrics", timeout=10).read().decode()
    finally:
        exp.close()
    values = _samples(text)
    assert values == {
        "mltrain_step": 8.0, "mltrain_loss": 2.25, "mltrain_val_loss": 3.125, "mltrain_tokens_per_second": 1000.0,
        "mltrain_mfu_ratio": 0.375, "mltrain_step_time_seconds": 0.125, "mltrain_data_wait_seconds": 0.01,
        "mltrain_checkpoint_save_seconds": 2.25, "mltrain_checkpoint_stall_seconds": 0.5,
        "mltrain_last_checkpoint_timestamp_seconds": 1234.0,  # the failed save at step 8 changed nothing
        "mltrain_restarts": 0.0, "mltrain_stragglers_total": 1.0, "mltrain_straggler_slowdown_ratio": 0.4,
    }  # fmt: skip
    assert not exp.target_file.exists()  # removed on close


def test_taken_port_is_a_warning_not_a_crash(tmp_path, capsys):
    import socket
    from types import SimpleNamespace

    from mltrain.telemetry.instrument import open_sinks

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        cfg = _cfg(tmp_path, port=s.getsockname()[1])
        info = SimpleNamespace(local_rank=0, is_main=True)
        writer = MetricsWriter(tmp_path, tensorboard=False)
        assert open_sinks(cfg, info, writer) is None
        writer.close()
    assert "WARNING: log.prometheus: cannot serve on 127.0.0.1:" in capsys.readouterr().out


def test_restart_gauge_reads_only_what_was_appended(tmp_path):
    from mltrain.telemetry.prometheus import RestartCount

    count = RestartCount(tmp_path)
    assert count() == 0
    metrics = tmp_path / "metrics.jsonl"
    with metrics.open("a") as f:
        f.write(json.dumps({"kind": "start", "step": 0}) + "\n" + json.dumps({"kind": "train", "step": 1}) + "\n")
    assert count() == 0
    with metrics.open("a") as f:
        f.write(json.dumps({"kind": "start", "step": 1}) + "\n" + '{"kind": "sta')  # a torn last line waits
    assert count() == 1 == restarts_in(tmp_path)
    with metrics.open("a") as f:
        f.write('rt", "step": 2}\n')
    assert count() == 2 == restarts_in(tmp_path)
    # launcher records win from then on (the one definition in runstats)
    (tmp_path / "restarts.jsonl").write_text(json.dumps({"action": "requeue"}) + "\n")
    assert count() == 1 == restarts_in(tmp_path)
    with (tmp_path / "restarts.jsonl").open("a") as f:
        f.write(json.dumps({"action": "none"}) + "\n" + json.dumps({"action": "restart_in_place"}) + "\n")
    assert count() == 2 == restarts_in(tmp_path)
    # a replaced file (a new run under the same name) is read again from the start
    (tmp_path / "restarts.jsonl").unlink()
    (tmp_path / "restarts.jsonl").write_text(json.dumps({"action": "requeue"}) + "\n")
    assert count() == 1 == restarts_in(tmp_path)


def test_nvml_gauges_carry_each_gpus_own_labels_and_values(tmp_path, monkeypatch):
    """The DCGM_* series through the real collector and HTTP endpoint, NVML from tests/fake_nvml (no GPU here):
    each label holds its own field (UUID the UUID, model_name the product name) and each value its unit."""
    import importlib.util
    import sys
    import urllib.request
    from pathlib import Path

    from prometheus_client.parser import text_string_to_metric_families

    from mltrain.telemetry.prometheus import PrometheusExporter

    fake = Path(__file__).resolve().parents[1] / "fake_nvml" / "pynvml.py"
    spec = importlib.util.spec_from_file_location("pynvml", fake)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    monkeypatch.setenv("FAKE_NVML_BAD", "1")
    cfg = _cfg(tmp_path, gpu_metrics=True)
    exp = PrometheusExporter(cfg.log.prometheus, cfg.run_dir, cfg.name, training=False)
    try:
        assert exp.gpu_note == ""
        text = urllib.request.urlopen(f"http://127.0.0.1:{exp.port}/metrics", timeout=10).read().decode()
    finally:
        exp.close()
    got = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith("DCGM_"):
                got[(s.name, s.labels["gpu"])] = (s.labels, s.value)
    host = exp.host
    for gpu in ("0", "1"):
        labels = {"gpu": gpu, "UUID": f"GPU-fake-000{gpu}", "device": f"nvidia{gpu}",
                  "model_name": "NVIDIA H100 80GB HBM3", "hostname": host}  # fmt: skip
        for name in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_GPU_TEMP"):
            assert got[(name, gpu)][0] == labels, name
    expect = {  # tests/fake_nvml: util 90+i %, used (10+i) GiB, free (70-i) GiB, 650+i W, 40+i C (91 C bad), 1980 MHz
        "DCGM_FI_DEV_GPU_UTIL": (90.0, 91.0), "DCGM_FI_DEV_FB_USED": (10240.0, 11264.0),
        "DCGM_FI_DEV_FB_FREE": (71680.0, 70656.0), "DCGM_FI_DEV_POWER_USAGE": (650.0, 651.0),
        "DCGM_FI_DEV_GPU_TEMP": (40.0, 91.0), "DCGM_FI_DEV_SM_CLOCK": (1980.0, 1980.0),
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": (0.0, 3.0),
    }  # fmt: skip
    for name, (v0, v1) in expect.items():
        assert (got[(name, "0")][1], got[(name, "1")][1]) == (v0, v1), name
