"""End to end: `model.init_from` an HF Llama dir -> `mltrain train` a few steps -> `mltrain export` -> transformers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from tests.conftest import mltrain_cmd, tiny_run_config, write_config

from mltrain.errors import CheckpointError, DataError

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow


def make_hf_llama(path: Path, vocab: int) -> Path:
    """A random HF Llama with exactly the shape of conftest's tiny run config."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            tie_word_embeddings=True,
            max_position_embeddings=1024,
        )
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.05 * torch.randn_like(p))
    model.save_pretrained(path)
    return path


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLTRAIN_FAULT", "SLURM_RESTART_COUNT")}
    return subprocess.run(mltrain_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_data_dir):
    """Fine-tune (lr so small the weights barely move) from a random HF Llama for 4 steps."""
    root = tmp_path_factory.mktemp("hfrun")
    manifest = json.loads((tiny_data_dir / "manifest.json").read_text())
    hf_dir = make_hf_llama(root / "hf-init", manifest["vocab_size"])
    cfg = tiny_run_config(root, tiny_data_dir, "ft", max_steps=4, lr=1e-9, warmup_steps=0, weight_decay=0.0)
    cfg["model"]["init_from"] = str(hf_dir)
    cfg["model"]["max_seq_len"] = 1024
    cfg["checkpoint"] = {"every_steps": 2, "keep_last": 3}
    r = run("train", str(write_config(root / "ft.yaml", cfg)))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return root / "runs" / "ft", hf_dir, manifest


def test_export_run_loads_in_transformers(trained_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mltrain.config import load_run_config
    from mltrain.data.tokenizer import load_tokenizer
    from mltrain.model import Transformer
    from mltrain.train.checkpoint import find_checkpoints, load_model_state_dict

    run_dir, hf_dir, manifest = trained_run
    out = tmp_path / "export"
    r = run("export", str(run_dir), "--hf", str(out), "--dtype", "fp32")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert not Path(str(out) + ".tmp").exists()
    conf = json.loads((out / "config.json").read_text())
    assert conf["architectures"] == ["LlamaForCausalLM"] and conf["eos_token_id"] == manifest["eos_id"]

    # the trainer started from the HF weights (lr 1e-9: they barely moved), not from a random init
    from safetensors.torch import load_file

    init, exported = load_file(hf_dir / "model.safetensors"), load_file(out / "model.safetensors")
    for k, v in exported.items():
        assert (v - init[k]).abs().max() < 1e-5, k

    # logits of the exported model in transformers == mltrain with the newest checkpoint
    cfg = load_run_config(run_dir / "config.yaml")
    ours = Transformer(cfg.model)
    step, ckpt = find_checkpoints(run_dir)[-1]
    assert step == 4
    load_model_state_dict(ckpt, ours)
    x = torch.randint(0, manifest["vocab_size"], (2, 32), generator=torch.Generator().manual_seed(0))
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        diff = (ours(x) - theirs(x).logits).abs().max().item()
    print(f"run export: max abs logit diff vs transformers = {diff:.2e}")
    assert diff < 1e-4

    # the tokenizer the data was prepared with, through AutoTokenizer
    text = "def main():\n    return 42  # hello"
    hf_tok = AutoTokenizer.from_pretrained(out)
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == load_tokenizer(cfg.data.dir).encode(text).ids
    assert hf_tok.eos_token_id == manifest["eos_id"]


def test_export_run_step_choice_and_errors(trained_run, tmp_path, monkeypatch):
    from mltrain.config import load_run_config
    from mltrain.infer.export import _run_tokenizer, export_run
    from mltrain.model.hf import build_model_from_hf

    run_dir, _, _ = trained_run
    out = export_run(run_dir, tmp_path / "s2", step=2, dtype="fp32")
    assert (out / "model.safetensors").exists()
    with pytest.raises(CheckpointError, match="no committed checkpoint for step 3; have 2, 4"):
        export_run(run_dir, tmp_path / "s3", step=3)
    with pytest.raises(CheckpointError, match="already exists"):
        export_run(run_dir, out, step=2)
    assert build_model_from_hf(out)[1].vocab_size > 0

    r = run("export", str(run_dir), "--hf", str(tmp_path / "x"), "--step", "3")
    assert r.returncode != 0 and "step 3" in r.stdout + r.stderr and "Traceback" not in r.stdout + r.stderr

    # tokenizer vs manifest vs model vocab
    cfg = load_run_config(run_dir / "config.yaml")
    data = tmp_path / "data"
    data.mkdir()
    for f in ("tokenizer.json", "manifest.json"):
        shutil.copy(Path(cfg.data.dir) / f, data / f)
    small = cfg.model.model_copy(update={"vocab_size": 100})
    with pytest.raises(DataError, match="more than model.vocab_size 100"):
        _run_tokenizer(data, small)
    man = json.loads((data / "manifest.json").read_text())
    man["vocab_size"] += 1
    man["tokenizer"]["vocab_size"] += 1
    (data / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(DataError, match="manifest.json says"):
        _run_tokenizer(data, cfg.model)
    shutil.copy(Path(cfg.data.dir) / "manifest.json", data / "manifest.json")
    _run_tokenizer(data, cfg.model)  # consistent again
    (data / "tokenizer.json").write_text((data / "tokenizer.json").read_text().replace('"<unk>"', '"<UNK>"', 1) + " ")
    with pytest.raises(DataError, match="sha256 differs"):
        _run_tokenizer(data, cfg.model)


def test_export_says_which_step_and_why_newer_ones_were_skipped(trained_run, tmp_path, capsys):
    """A bit flip in the newest checkpoint (any size: every file is checksummed): export names it with
    the reason and uses the next older one."""
    from mltrain.infer.export import export_run

    run_dir = tmp_path / "ft"
    shutil.copytree(trained_run[0], run_dir)
    data_file = sorted((run_dir / "checkpoints" / "step_00000004").glob("*.distcp"))[0]
    raw = bytearray(data_file.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data_file.write_bytes(bytes(raw))
    capsys.readouterr()
    export_run(run_dir, tmp_path / "out", dtype="fp32")
    err = capsys.readouterr().err
    skipped = [ln for ln in err.splitlines() if "skipping checkpoint" in ln]
    assert len(skipped) == 1 and "step_00000004" in skipped[0] and "does not match its xxh3_128" in skipped[0], err
    assert "exporting step 2 (the newest valid checkpoint)" in err


def test_init_from_shape_mismatch_is_a_config_error(trained_run, tmp_path, tiny_data_dir):
    _, hf_dir, _ = trained_run
    cfg = tiny_run_config(tmp_path, tiny_data_dir, "bad", max_steps=1)
    cfg["model"]["init_from"] = str(hf_dir)
    cfg["model"]["ffn_hidden_size"] = 96
    r = run("train", str(write_config(tmp_path / "bad.yaml", cfg)))
    out = r.stdout + r.stderr
    assert r.returncode == 2, out[-3000:]
    assert "ffn_hidden_size: run 96 vs checkpoint 128" in out and "Traceback" not in out


FSDP_WORKER = r"""
import sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def uneven_shard_check(rank, mesh, scratch):
    from safetensors import safe_open
    from safetensors.torch import save_file
    from torch.distributed.tensor import Shard, distribute_tensor

    from mltrain.model.hf.load import _copy_into, _local_region

    full = torch.arange(20.0).view(5, 4)  # 5 rows over 2 ranks: 3 + 2
    if rank == 0:
        save_file({"w": full}, scratch)
    dist.barrier()
    dt = distribute_tensor(torch.zeros(5, 4), mesh, [Shard(0)])
    assert _local_region(dt) is not None
    with safe_open(scratch, framework="pt") as sf:
        _copy_into(dt, sf, "w")
    assert torch.equal(dt.full_tensor(), full)


def worker(rank, path, init, scratch):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from mltrain.model import Transformer
    from mltrain.model.hf import load as hf

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    cfg = hf.load_hf_config(path)
    with torch.device("meta"):
        model = Transformer(cfg)
    mesh = init_device_mesh("cpu", (2,))
    for layer in model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.to_empty(device="cpu")
    model.init_weights()
    uneven_shard_check(rank, mesh, scratch)
    assert hf._local_region(model.layers[0].attention.wq.weight) is not None  # reads slices, not full tensors
    hf.load_hf_weights(model, path)
    ref, _ = hf.build_model_from_hf(path)
    ref_sd = ref.state_dict()
    for name, p in model.state_dict().items():
        assert torch.equal(p.full_tensor(), ref_sd[name]), name
    local = model.layers[0].attention.wq.weight.to_local()
    rows = ref_sd["layers.0.attention.wq.weight"].shape[0] // 2
    assert torch.equal(local, ref_sd["layers.0.attention.wq.weight"][rank * rows:(rank + 1) * rows])
    x = torch.arange(24).view(2, 12) % cfg.vocab_size
    with torch.no_grad():
        diff = (model(x) - ref(x)).abs().max().item()
    assert diff < 1e-5, diff
    # training step under FSDP2: chunked loss (recomputes the tied head in backward) == plain model
    y = torch.roll(x, -1, dims=1)
    loss = model(x, y, loss_chunk_tokens=7)
    loss.backward()
    ref_loss = ref(x, y)
    ref_loss.backward()
    assert abs(loss.item() - ref_loss.item()) < 1e-5, (loss.item(), ref_loss.item())
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        g = p.grad.full_tensor()
        assert torch.allclose(g, ref_params[name].grad, atol=1e-5, rtol=1e-4), name
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1], sys.argv[2], sys.argv[3]), nprocs=2)
    print("FSDP-LOAD-OK")
"""


def test_load_hf_weights_into_two_rank_fsdp(trained_run, tmp_path):
    """Each rank reads only its own slice of every tensor into its FSDP2 shard (even and uneven splits)."""
    import sys

    _, hf_dir, _ = trained_run
    script = tmp_path / "fsdp_load.py"
    script.write_text(FSDP_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, str(script), str(hf_dir), f"file://{tmp_path / 'pg'}", str(tmp_path / "uneven.safetensors")],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0 and "FSDP-LOAD-OK" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
