"""`model.init_from` alone is enough: the shape and the tokenizer come from the Hugging Face directory."""

import shutil

import pytest

from mltrain.config import load_run_config
from mltrain.errors import ConfigError


@pytest.fixture
def hf_dir(tmp_path, tiny_data_dir):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Qwen2Config(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    d = tmp_path / "hf"
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(d)
    shutil.copy(tiny_data_dir / "tokenizer.json", d / "tokenizer.json")
    return d


def test_shape_and_tokenizer_default_from_init_dir(tmp_path, hf_dir):
    run = tmp_path / "run.yaml"
    run.write_text(f"name: ft\nmodel:\n  init_from: {hf_dir}\n")
    cfg = load_run_config(run)
    m = cfg.model
    assert (m.hidden_size, m.n_layers, m.n_heads, m.n_kv_heads, m.vocab_size) == (64, 2, 4, 2, 1024)
    assert m.qkv_bias and m.tie_embeddings and m.init_from == str(hf_dir)
    assert cfg.data.tokenizer == str(hf_dir / "tokenizer.json")


def test_explicit_tokenizer_wins(tmp_path, hf_dir):
    run = tmp_path / "run.yaml"
    run.write_text(f"name: ft\nmodel:\n  init_from: {hf_dir}\ndata:\n  tokenizer: /x/tok.json\n")
    assert load_run_config(run).data.tokenizer == "/x/tok.json"


def test_init_from_missing_dir_is_one_line(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text(f"name: ft\nmodel:\n  init_from: {tmp_path / 'nope'}\n")
    with pytest.raises(ConfigError) as e:
        load_run_config(run)
    assert "nope" in str(e.value) and "\n" not in str(e.value)
