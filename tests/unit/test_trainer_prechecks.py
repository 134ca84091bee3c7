"""What the trainer refuses before touching a GPU: missing data, a too-large tokenizer, a run dir
written by an incompatible config."""

from pathlib import Path

import pytest
from tests.helpers import tiny_run_config

from mltrain.config import RunConfig
from mltrain.errors import DataError, RunDirError
from mltrain.train.trainer import check_run_dir, precheck, write_config


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
