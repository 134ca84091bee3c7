"""`mltrain eval` and `mltrain sample` on a really trained (tiny, char-level) run, checked against
transformers running the exported model: same windows -> same loss; greedy -> same tokens."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests.helpers import mltrain_cmd, write_config

transformers = pytest.importorskip("transformers")

LINES = [
    "To be, or not to be, that is the question:",
    "Whether 'tis nobler in the mind to suffer",
    "The slings and arrows of outrageous fortune,",
    "Or to take arms against a sea of troubles",
]
SEQ_LEN = 16


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evalrun")
    (root / "train.txt").write_text("\n".join(LINES * 6) + "\n")
    (root / "val.txt").write_text("\n".join(reversed(LINES)) + "\n")
    cfg = {
        "name": "ev",
        "base_dir": str(root),
        "seed": 3,
        "model": {
            "vocab_size": 48,
            "hidden_size": 32,
            "n_layers": 2,
            "n_heads": 4,
            "n_kv_heads": 2,
            "ffn_hidden_size": 64,
            "max_seq_len": 64,
            "tie_embeddings": True,
        },
        "data": {
            "sources": [str(root / "train.txt")],
            "val_sources": [str(root / "val.txt")],
            "tokenizer": "char",
            "dir": str(root / "data"),
            "shard_tokens": 4096,
        },
        "train": {
            "device": "cpu",
            "seq_len": SEQ_LEN,
            "micro_batch_size": 4,
            "max_steps": 6,
            "lr": 1e-2,
            "warmup_steps": 1,
            "eval_every": 0,
            "log_every": 1,
            "tensorboard": False,
        },
        "checkpoint": {"every_steps": 3, "keep_last": 2},
    }
    from mltrain.config import load_run_config
    from mltrain.data.prepare import prepare_data

    path = write_config(root / "ev.yaml", cfg)
    prepare_data(load_run_config(path))
    r = subprocess.run(mltrain_cmd("train", str(path)), env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return root / "runs" / "ev"


@pytest.fixture(scope="module")
def exported(run_dir: Path) -> Path:
    from mltrain.infer.export import export_run

    return export_run(run_dir, run_dir.parent.parent / "hf", dtype="fp32")


def hf_reference_loss(hf_dir: Path, text: str) -> tuple[float, int, int]:
    """The documented method, written independently on transformers' model and tokenizer."""
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    stream = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    total, scored, n = 0.0, 0, 0
    with torch.no_grad():
        for start in range(0, len(stream) - 1, SEQ_LEN):
            chunk = torch.tensor([stream[start : start + SEQ_LEN + 1]])
            logits = model(chunk[:, :-1]).logits
            total += F.cross_entropy(logits[0].float(), chunk[0, 1:], reduction="sum").item()
            scored += chunk.shape[1] - 1
            n += 1
    return total / scored, scored, n


def test_eval_matches_transformers_on_the_same_windows(run_dir: Path, exported: Path, tmp_path: Path) -> None:
    from mltrain.infer.eval import eval_run

    text = "\n".join(LINES[::-1] + LINES[1:3]) + "\n"  # 1 + len(text) tokens: the last window is partial
    (tmp_path / "held.txt").write_text(text)
    assert (len(text) + 1 - 1) % SEQ_LEN != 0
    r = eval_run(run_dir, [str(tmp_path / "held.txt")], device="cpu", batch_size=3)
    want, scored, n = hf_reference_loss(exported, text)
    assert (r.scored_tokens, r.windows, r.step) == (scored, n, 6)
    assert r.loss == pytest.approx(want, rel=1e-5)
    assert r.perplexity == pytest.approx(math.exp(want), rel=1e-5)
    assert 1.0 < r.loss < math.log(48) + 1  # a real number of nats for a 45-token vocabulary


def test_eval_cli_json_and_errors(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(LINES[0] + "\n")
    (tmp_path / "b.txt").write_text(LINES[1] + "\n")
    r = subprocess.run(
        mltrain_cmd(
            "eval", str(run_dir), "--step", "3", "--data", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "--json"
        ),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["step"] == 3 and out["documents"] == 2 and out["tokens"] == len(LINES[0]) + len(LINES[1]) + 4
    assert out["perplexity"] == pytest.approx(math.exp(out["loss"]))
    from mltrain.errors import DataError
    from mltrain.infer.eval import eval_run

    (tmp_path / "odd.txt").write_text("QXZ@@")  # characters the char vocabulary lacks
    with pytest.raises(
        DataError,
        match=r"odd.txt \(document 1\): 4 characters are not in the run's character vocabulary: '@', 'Q', 'X', 'Z'",
    ):
        eval_run(run_dir, [str(tmp_path / "odd.txt")], device="cpu")


def test_greedy_sample_matches_transformers_generate(run_dir: Path, exported: Path) -> None:
    from mltrain.data.tokenizer import encode_checked
    from mltrain.infer.run_model import load_run_model
    from mltrain.infer.sample import generate

    rm = load_run_model(run_dir, device="cpu")
    prompt = [rm.eos_id, *encode_checked(rm.tokenizer, "To be", "prompt")]
    ours, _ = generate(rm, prompt, max_new_tokens=SEQ_LEN - len(prompt), temperature=0.0, stop_at_eos=False)
    model = transformers.AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    theirs = model.generate(
        torch.tensor([prompt]), max_new_tokens=len(ours), do_sample=False, attention_mask=torch.ones(1, len(prompt))
    )
    assert ours == theirs[0, len(prompt) :].tolist()
    # past the context (train.seq_len) the cache restarts from the newest half: still valid tokens
    longer, _ = generate(rm, prompt, max_new_tokens=3 * SEQ_LEN, temperature=0.0, stop_at_eos=False)
    assert len(longer) == 3 * SEQ_LEN and longer[: len(ours)] == ours


def test_sample_is_deterministic_for_a_seed_and_cli_prints_prompt_and_sample(run_dir: Path) -> None:
    from mltrain.errors import CheckpointError
    from mltrain.infer.sample import sample_run

    def sample(seed: int) -> list[int]:
        r = sample_run(run_dir, "To", max_new_tokens=40, temperature=1.5, top_k=20, top_p=0.95, seed=seed, device="cpu")
        assert 1 <= len(r.new_ids) <= 40
        return r.new_ids

    a = sample(1)
    assert sample(1) == a and sample(2) != a
    with pytest.raises(CheckpointError, match=r"no committed checkpoint for step 99; have 3, 6"):
        sample_run(run_dir, "To", step=99)
    r = subprocess.run(
        mltrain_cmd("sample", str(run_dir), "--prompt", "To be", "--max-new-tokens", "20", "--temperature", "0"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    want = sample_run(run_dir, "To be", max_new_tokens=20, temperature=0.0, device="cpu")
    assert r.stdout == "To be" + want.text + "\n"
    # sample_run hands its temperature on: near 0 it is greedy for any seed, at 2.0 it is not
    cold = [sample_run(run_dir, "To be", max_new_tokens=20, temperature=1e-4, seed=s, device="cpu") for s in (1, 2)]
    assert [c.new_ids for c in cold] == [want.new_ids] * 2
    hot = [sample_run(run_dir, "To be", max_new_tokens=20, temperature=2.0, seed=s, device="cpu") for s in (1, 2)]
    assert all(h.new_ids != want.new_ids for h in hot)


def test_a_tokenizer_larger_than_the_model_is_one_line(run_dir: Path, tmp_path: Path) -> None:
    """A data dir re-prepared with a larger vocabulary than the run's model is refused in one line."""
    import shutil
    import string

    import yaml

    from mltrain.data.tokenizer import build_char_tokenizer
    from mltrain.errors import DataError
    from mltrain.infer.run_model import load_run_model

    copy, data = tmp_path / "ev", tmp_path / "data"
    shutil.copytree(run_dir, copy)
    cfg = yaml.safe_load((copy / "config.yaml").read_text())
    shutil.copytree(cfg["data"]["dir"], data)
    cfg["data"]["dir"] = str(data)
    (copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    build_char_tokenizer([string.ascii_letters + string.digits]).save(str(data / "tokenizer.json"))  # 63 > 48
    with pytest.raises(DataError, match=r"data/tokenizer.json: more tokens than model.vocab_size 48$"):
        load_run_model(copy, device="cpu")
