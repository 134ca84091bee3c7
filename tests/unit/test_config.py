"""Config loading: presets, overrides, and one-line errors that name file, key and reason."""

from pathlib import Path

import pytest

from mltrain.config import load_run_config
from mltrain.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_shipped_configs_load():
    demo = load_run_config(ROOT / "configs/demo.yaml")
    assert demo.model.hidden_size == 192 and demo.train.parallel == "ddp"
    qwen = load_run_config(ROOT / "configs/qwen2.5-0.5b.yaml")
    m = qwen.model
    assert (m.hidden_size, m.n_layers, m.n_heads, m.n_kv_heads, m.ffn_hidden_size, m.vocab_size) == (
        896,
        24,
        14,
        2,
        4864,
        151936,
    )
    assert m.tie_embeddings and m.qkv_bias and m.rope_theta == 1e6


def test_preset_fields_can_be_overridden(tmp_path):
    cfg = load_run_config(write(tmp_path, "name: x\nmodel: {preset: tiny, n_layers: 2}\n"))
    assert cfg.model.n_layers == 2 and cfg.model.hidden_size == 192


def test_set_overrides_parse_yaml_values(tmp_path):
    p = write(tmp_path, "name: x\nmodel: {preset: tiny}\n")
    cfg = load_run_config(p, ["train.max_steps=7", "train.lr=1e-4", "train.parallel=fsdp", "data.sources=[a, b]"])
    assert cfg.train.max_steps == 7 and cfg.train.lr == 1e-4 and cfg.train.parallel == "fsdp"
    assert cfg.data.sources == ["a", "b"]


@pytest.mark.parametrize(
    "text, overrides, expect",
    [
        ("name: x\nmodel: {preset: tiny}\ntrain: {max_stepz: 3}\n", [], "train.max_stepz: unknown key"),
        ("name: x\nmodel: {preset: tiny}\n", ["train.lr=-1"], "train.lr: Input should be greater than 0"),
        ("name: x\nmodel: {preset: nope}\n", [], "unknown preset 'nope'"),
        ("name: x\n", [], "model: required key is missing"),
        ("name: x\nmodel: {preset: tiny, n_heads: 5}\n", [], "not divisible by n_heads"),
        ("name: x\nmodel: [1\n", [], "invalid YAML"),
        ("name: x\nmodel: {preset: tiny}\n", ["train.parallel"], "expected KEY=VALUE"),
    ],
)
def test_bad_config_is_one_line_naming_file_and_key(tmp_path, text, overrides, expect):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_run_config(p, overrides)
    msg = str(e.value)
    assert msg.startswith(str(p)), msg
    assert expect in msg
    assert "\n" not in msg


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_run_config(tmp_path / "nope.yaml")


def test_set_indexes_lists_and_fills_empty_sections(tmp_path):
    from mltrain.config import apply_overrides

    data = {"models": [{"n": 1}, {"n": 2}], "train": None}
    apply_overrides(data, ["models.1.n=8", "train.max_steps=3"], "f.yaml")
    assert data == {"models": [{"n": 1}, {"n": 8}], "train": {"max_steps": 3}}
    with pytest.raises(ConfigError, match="'5' is not an index of a 2-item list"):
        apply_overrides(data, ["models.5.n=1"], "f.yaml")
    with pytest.raises(ConfigError, match="'max_steps' is not a section"):
        apply_overrides(data, ["train.max_steps.x=1"], "f.yaml")


def test_unknown_cli_option_is_a_usage_line_not_a_traceback():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "mltrain", "report", "x", "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "No such option" in r.stderr and "Traceback" not in r.stderr
