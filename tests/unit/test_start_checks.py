"""What a run is refused before it starts (train, submit, the trainer's own start): missing data, a
too-large tokenizer, a run dir written by an incompatible config."""

import re
from pathlib import Path

import pytest
from tests.helpers import tiny_run_config

from mltrain.config import RunConfig
from mltrain.errors import DataError, RunDirError
from mltrain.train.start_checks import check_run_dir, precheck
from mltrain.train.trainer import write_config


def cfg_for(tmp_path: Path, data_dir: Path, **model) -> RunConfig:
    raw = tiny_run_config(tmp_path, data_dir)
    raw["model"].update(model)
    return RunConfig.model_validate(raw)


def test_missing_data_names_the_manifest(tmp_path):
    with pytest.raises(DataError, match=r"nope/manifest.json: no prepared data; run `mltrain data prepare"):
        precheck(cfg_for(tmp_path, tmp_path / "nope"))


def test_tokenizer_larger_than_model_vocab(tmp_path, tiny_data_dir):
    with pytest.raises(DataError, match=r"tokenizer vocab 1024 is larger than model.vocab_size 512"):
        precheck(cfg_for(tmp_path, tiny_data_dir, vocab_size=512))


def test_incompatible_run_dir_lists_the_differences(tmp_path, tiny_data_dir):
    first = cfg_for(tmp_path, tiny_data_dir)
    write_config(first)
    check_run_dir(first)  # same config: fine
    changed_steps = first.model_copy(update={"train": first.train.model_copy(update={"max_steps": 99})})
    check_run_dir(changed_steps)  # extending training is allowed
    wider = cfg_for(tmp_path, tiny_data_dir, hidden_size=128)
    with pytest.raises(RunDirError, match=r"model.hidden_size: run dir has 64, config has 128"):
        check_run_dir(wider)


@pytest.mark.parametrize(
    "section, key, value, words",
    [
        ("model", "n_layers", 3, "model.n_layers: run dir has 2, config has 3"),
        ("model", "tie_embeddings", False, "model.tie_embeddings: run dir has True, config has False"),
        ("data", "dir", "/elsewhere", "data.dir: run dir has '"),
        ("data", "tokenizer", "bytes", "data.tokenizer: run dir has None, config has 'bytes'"),
        ("train", "seq_len", 64, "train.seq_len: run dir has 32, config has 64"),
    ],
)
def test_each_frozen_key_is_refused(tmp_path, tiny_data_dir, section, key, value, words):
    """What changes what the weights or the token stream mean is refused on a resume; the rest (lr,
    max_steps, batch, ...) is allowed and named in the resume line."""
    first = cfg_for(tmp_path, tiny_data_dir)
    write_config(first)
    raw = first.model_dump(mode="json")
    raw[section][key] = value
    with pytest.raises(RunDirError, match=re.escape(words)) as e:
        check_run_dir(RunConfig.model_validate(raw))
    assert "use a new run name, or restore the original values" in str(e.value)
    base = first.model_dump(mode="json")
    for allowed in (
        {"train": {**base["train"], "lr": 1e-4}},
        {"seed": 9},
        {"train": {**base["train"], "micro_batch_size": 2}},
    ):
        check_run_dir(RunConfig.model_validate({**base, **allowed}))
