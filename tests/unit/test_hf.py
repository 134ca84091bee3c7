"""Hugging Face import/export against transformers itself (tiny random models, no hub)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mltrain.config import ModelConfig
from mltrain.errors import CheckpointError, ConfigError
from mltrain.model import Transformer
from mltrain.model import hf as mhf

transformers = pytest.importorskip("transformers")

SHAPE = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=96,
    vocab_size=256,
    max_position_embeddings=128,
)
LLAMA3_SCALING = dict(
    rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=32
)
CASES = {
    "llama-untied": ("llama", dict(tie_word_embeddings=False, rope_theta=10000.0)),
    "llama3-scaled-tied": ("llama", dict(tie_word_embeddings=True, rope_theta=500000.0, rope_scaling=LLAMA3_SCALING)),
    "qwen2-tied": ("qwen2", dict(tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6)),
    "qwen2-untied": ("qwen2", dict(tie_word_embeddings=False, rope_theta=1e6, rms_norm_eps=1e-6)),
}
MAX_DIFFS: dict[str, float] = {}


def make_hf_model(family: str, extra: dict, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**SHAPE, **extra))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**SHAPE, **extra))
    with torch.no_grad():  # HF zero-inits biases and ones norms: randomise everything so the test can fail
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.08)
    return model.eval()


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for case, (family, extra) in CASES.items():
        d = root / case
        make_hf_model(family, extra).save_pretrained(d, safe_serialization=True)
        out[case] = d
    return out


def hf_logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        return m(ids).logits


def ids(seq: int = 40, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, seq), generator=g)


def assert_state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------- config mapping


def test_config_mapping(hf_dirs):
    cfg = mhf.load_hf_config(hf_dirs["llama3-scaled-tied"])
    assert (cfg.hidden_size, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_hidden_size, cfg.vocab_size) == (
        64,
        2,
        4,
        2,
        96,
        256,
    )
    assert cfg.tie_embeddings and not cfg.qkv_bias and cfg.rope_theta == 500000.0
    assert cfg.rope_scaling is not None and cfg.rope_scaling.factor == 8.0
    assert cfg.rope_scaling.original_max_position_embeddings == 32
    assert cfg.max_seq_len == 128 and cfg.init_from == str(hf_dirs["llama3-scaled-tied"])
    q = mhf.load_hf_config(hf_dirs["qwen2-untied"])
    assert q.qkv_bias and not q.tie_embeddings and q.rope_theta == 1e6 and q.norm_eps == 1e-6
    assert q.rope_scaling is None


def test_legacy_config_keys():
    """transformers 4.x style: rope_theta + rope_scaling at top level, no rope_parameters."""
    data = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 96,
        "vocab_size": 256,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
    }
    cfg = mhf.hf_config_to_model_config(data)
    assert cfg.rope_theta == 500000.0 and cfg.rope_scaling.factor == 32.0 and cfg.norm_eps == 1e-5


def test_preset_matches_qwen_published_config():
    """The qwen2.5-0.5b preset equals the published Qwen2.5-0.5B config.json (copied here, no hub)."""
    published = {
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_act": "silu",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "max_position_embeddings": 32768,
        "max_window_layers": 24,
        "model_type": "qwen2",
        "num_attention_heads": 14,
        "num_hidden_layers": 24,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_sliding_window": False,
        "vocab_size": 151936,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
    }
    hf = mhf.hf_config_to_model_config(published)
    mhf.check_matches_hf(ModelConfig(preset="qwen2.5-0.5b"), hf)
    with pytest.raises(ConfigError, match="tie_embeddings") as e:
        mhf.check_matches_hf(ModelConfig(preset="qwen2.5-0.5b", tie_embeddings=False, n_layers=2), hf)
    assert "n_layers: run 2 vs checkpoint 24" in str(e.value)


def test_preset_matches_llama32_published_config():
    published = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "head_dim": 64,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": 32,
        "num_hidden_layers": 16,
        "num_key_value_heads": 8,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
        "vocab_size": 128256,
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
    }
    mhf.check_matches_hf(ModelConfig(preset="llama3.2-1b"), mhf.hf_config_to_model_config(published))


# --------------------------------------------------------------------------- import: logits


@pytest.mark.parametrize("case", list(CASES))
def test_import_logits_match_transformers(hf_dirs, case):
    x = ids()
    ref = hf_logits(hf_dirs[case], x)
    model, cfg = mhf.build_model_from_hf(hf_dirs[case])
    assert (model.output is None) == CASES[case][1]["tie_word_embeddings"]
    with torch.no_grad():
        ours = model(x)
    diff = (ours - ref).abs().max().item()
    MAX_DIFFS[case] = diff
    print(f"{case}: max abs logit diff vs transformers = {diff:.2e}")
    assert ref.abs().max() > 0.1  # non-trivial logits
    assert diff < 1e-4


def test_import_into_fsdp_sharded_model(hf_dirs, tmp_path):
    """DTensor path of load_hf_weights (fully_shard on a 1-process gloo group)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        path = hf_dirs["qwen2-tied"]
        cfg = mhf.load_hf_config(path)
        with torch.device("meta"):
            model = Transformer(cfg)
        mesh = init_device_mesh("cpu", (1,))
        for layer in model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        model.to_empty(device="cpu")
        model.init_weights()
        assert isinstance(model.layers[0].attention.wq.weight, DTensor)
        mhf.load_hf_weights(model, path)
        x = ids()
        with torch.no_grad():
            diff = (model(x) - hf_logits(path, x)).abs().max().item()
        assert diff < 1e-4
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- export


def train_a_few_steps(model: Transformer, steps: int = 3) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for i in range(steps):
        x = ids(seq=16, seed=10 + i)
        loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("case", ["llama3-scaled-tied", "qwen2-untied"])
def test_round_trip_import_export_import_is_exact(hf_dirs, tmp_path, case):
    model, cfg = mhf.build_model_from_hf(hf_dirs[case])
    out = mhf.export_state_dict(model.state_dict(), cfg, tmp_path / "out", dtype="fp32")
    again, cfg2 = mhf.build_model_from_hf(out)
    assert_state_equal(model.state_dict(), again.state_dict())
    mhf.check_matches_hf(cfg, cfg2)
    # and the tensors in the files are exactly HF's originals
    from safetensors.torch import load_file

    orig = load_file(hf_dirs[case] / "model.safetensors")
    mine = load_file(out / "model.safetensors")
    assert mine.keys() <= orig.keys()
    for k in mine:
        assert torch.equal(mine[k], orig[k]), k


@pytest.mark.parametrize("case", ["llama3-scaled-tied", "qwen2-tied", "llama-untied"])
def test_trained_export_loads_in_transformers(hf_dirs, tmp_path, case):
    model, cfg = mhf.build_model_from_hf(hf_dirs[case])
    train_a_few_steps(model)
    out = mhf.export_state_dict(model.state_dict(), cfg, tmp_path / "export", dtype="fp32", bos_id=1, eos_id=2)
    conf = json.loads((out / "config.json").read_text())
    assert conf["architectures"] == [mhf.SUPPORTED[CASES[case][0]]]
    assert conf["eos_token_id"] == 2
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2
    assert not (tmp_path / "export.tmp").exists()
    x = ids(seed=3)
    with torch.no_grad():
        ours = model(x)
    diff = (ours - hf_logits(out, x)).abs().max().item()
    MAX_DIFFS[f"export:{case}"] = diff
    print(f"export {case}: max abs logit diff vs transformers = {diff:.2e}")
    assert diff < 1e-4


def test_bf16_export_holds_rounded_weights(hf_dirs, tmp_path):
    from safetensors.torch import load_file

    model, cfg = mhf.build_model_from_hf(hf_dirs["qwen2-tied"])
    out = mhf.export_state_dict(model.state_dict(), cfg, tmp_path / "bf16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    t = load_file(out / "model.safetensors")
    assert "lm_head.weight" not in t  # tied: HF re-ties it on load
    assert t["model.layers.0.self_attn.q_proj.bias"].dtype == torch.bfloat16
    assert torch.equal(
        t["model.layers.0.self_attn.q_proj.bias"], model.layers[0].attention.wq.bias.detach().to(torch.bfloat16)
    )


def test_sharded_export_loads_in_transformers_and_back(hf_dirs, tmp_path):
    model, cfg = mhf.build_model_from_hf(hf_dirs["llama-untied"])
    out = mhf.export_state_dict(
        model.state_dict(), cfg, tmp_path / "sharded", dtype="fp32", max_shard_gb=60_000 / 1024**3
    )
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((out / mhf.INDEX_FILE).read_text())
    assert set(index["weight_map"].values()) == set(shards)
    x = ids()
    with torch.no_grad():
        assert (model(x) - hf_logits(out, x)).abs().max().item() < 1e-4
    again, _ = mhf.build_model_from_hf(out)
    assert_state_equal(model.state_dict(), again.state_dict())


def test_export_with_tokenizer_loads_with_autotokenizer(hf_dirs, tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer

    vocab = {"<unk>": 0, "<bos>": 1, "<eos>": 2, "hello": 3, "world": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok_dir = tmp_path / "data"
    tok_dir.mkdir()
    tok.save(str(tok_dir / "tokenizer.json"))
    model, cfg = mhf.build_model_from_hf(hf_dirs["llama-untied"])
    out = mhf.export_state_dict(model.state_dict(), cfg, tmp_path / "tok", tokenizer_dir=tok_dir, bos_id=1, eos_id=2)
    hf_tok = AutoTokenizer.from_pretrained(out)
    assert hf_tok("hello world", add_special_tokens=False)["input_ids"] == [3, 4]
    assert hf_tok.eos_token == "<eos>" and hf_tok.eos_token_id == 2
    assert "tokenizes differently" not in capsys.readouterr().err
    # transformers 5 forces Qwen2Tokenizer for model_type qwen2: a non-Qwen tokenizer gets a warning
    qmodel, qcfg = mhf.build_model_from_hf(hf_dirs["qwen2-tied"])
    mhf.export_state_dict(qmodel.state_dict(), qcfg, tmp_path / "qtok", tokenizer_dir=tok_dir, eos_id=2)
    assert "tokenizes differently" in capsys.readouterr().err


def test_export_is_atomic_and_refuses_to_clobber(hf_dirs, tmp_path, monkeypatch):
    model, cfg = mhf.build_model_from_hf(hf_dirs["llama-untied"])
    sd = model.state_dict()
    out = tmp_path / "out"
    # a failure in the middle leaves neither OUT nor OUT.tmp
    import safetensors.torch

    calls = {"n": 0}
    real = safetensors.torch.save_file

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", failing)
    with pytest.raises(OSError, match="No space"):
        mhf.export_state_dict(sd, cfg, out, max_shard_gb=60_000 / 1024**3)
    assert not out.exists() and not (tmp_path / "out.tmp").exists()
    monkeypatch.setattr(safetensors.torch, "save_file", real)

    mhf.export_state_dict(sd, cfg, out)
    with pytest.raises(CheckpointError, match="already exists"):
        mhf.export_state_dict(sd, cfg, out)
    train_a_few_steps(model, 1)
    mhf.export_state_dict(model.state_dict(), cfg, out, dtype="fp32", overwrite=True)
    again, _ = mhf.build_model_from_hf(out)
    assert_state_equal(model.state_dict(), again.state_dict())
    assert not (tmp_path / "out.old").exists()
    # never replaces something that is not a model dir
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="refusing"):
        mhf.export_state_dict(sd, cfg, other, overwrite=True)
    assert (other / "todo.txt").read_text() == "keep me"


def test_export_rejects_state_that_does_not_fit(hf_dirs, tmp_path):
    model, cfg = mhf.build_model_from_hf(hf_dirs["llama-untied"])
    sd = dict(model.state_dict())
    del sd["layers.1.feed_forward.w2.weight"]
    sd["layers.0.attention.wq.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError) as e:
        mhf.export_state_dict(sd, cfg, tmp_path / "x")
    assert "missing layers.1.feed_forward.w2.weight" in str(e.value)
    assert "layers.0.attention.wq.weight: state [3, 3]" in str(e.value)
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- errors


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(ConfigError) as e:
        mhf.load_hf_config(tmp_path)
    msg = str(e.value)
    assert "gpt2" in msg and "GPT2LMHeadModel" in msg and "LlamaForCausalLM" in msg and "Qwen2ForCausalLM" in msg


def test_unsupported_features_are_named():
    base = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 96,
        "vocab_size": 256,
    }
    with pytest.raises(ConfigError, match="yarn"):
        mhf.hf_config_to_model_config({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ConfigError, match="attention_bias"):
        mhf.hf_config_to_model_config({**base, "attention_bias": True})
    with pytest.raises(ConfigError, match="vocab_size: required"):
        mhf.hf_config_to_model_config({k: v for k, v in base.items() if k != "vocab_size"})


def test_missing_files(tmp_path, hf_dirs):
    with pytest.raises(ConfigError, match="does not exist"):
        mhf.load_hf_config(tmp_path / "nope")
    with pytest.raises(ConfigError, match="config.json: missing"):
        mhf.load_hf_config(tmp_path)
    (tmp_path / "config.json").write_text((hf_dirs["llama-untied"] / "config.json").read_text())
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        mhf.build_model_from_hf(tmp_path)
    # an index naming a shard that is not there
    (tmp_path / mhf.INDEX_FILE).write_text(json.dumps({"weight_map": {"model.norm.weight": "model-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="model-00002.safetensors"):
        mhf.build_model_from_hf(tmp_path)


def test_shape_mismatch_and_missing_keys_are_listed(hf_dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    src = hf_dirs["qwen2-untied"]
    d = tmp_path / "bad"
    d.mkdir()
    conf = json.loads((src / "config.json").read_text())
    conf["intermediate_size"] = 128  # config now disagrees with the tensors
    (d / "config.json").write_text(json.dumps(conf))
    t = load_file(src / "model.safetensors")
    del t["model.layers.1.self_attn.k_proj.bias"]
    t["model.extra.weight"] = torch.zeros(2)
    save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as e:
        mhf.build_model_from_hf(d)
    msg = str(e.value)
    assert "missing model.layers.1.self_attn.k_proj.bias" in msg
    assert "unexpected model.extra.weight" in msg
    assert "mlp.gate_proj.weight: checkpoint [96, 64] vs model [128, 64]" in msg
    assert msg.count(";") == 7 and "more" not in msg  # 6 mis-shaped MLP weights + 2 others
    conf["num_key_value_heads"] = 4  # + 7 mis-shaped k/v tensors: the list is capped at 10
    (d / "config.json").write_text(json.dumps(conf))
    with pytest.raises(CheckpointError, match=r"; \.\.\. 5 more$"):
        mhf.build_model_from_hf(d)


def test_init_from_check(hf_dirs):
    path = str(hf_dirs["qwen2-tied"])
    hf = mhf.load_hf_config(path)
    run = ModelConfig(**{**hf.model_dump(), "max_seq_len": 64, "init_from": path})
    assert mhf.check_init_from(run, "run.yaml") == hf
    bad = ModelConfig(**{**run.model_dump(), "hidden_size": 128})
    with pytest.raises(ConfigError, match="run.yaml: model.init_from.*hidden_size: run 128 vs checkpoint 64"):
        mhf.check_init_from(bad, "run.yaml")
    assert mhf.check_init_from(ModelConfig(preset="tiny")) is None
