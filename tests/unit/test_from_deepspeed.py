"""`mltrain config from-deepspeed`: ZeRO-1/2/3 configs, offload, "auto" values, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mltrain.config import TrainConfig
from mltrain.errors import ConfigError
from mltrain.integrations import from_deepspeed as fd
from mltrain.integrations.from_deepspeed import convert, from_deepspeed_command, load_ds_config, render

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hf_trainer" / "ds_config.json"


def _zero(stage: int, **zero) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 8,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": True},
        "zero_optimization": {"stage": stage, **zero},
        "optimizer": {"type": "AdamW", "params": {"lr": 3e-4, "betas": [0.9, 0.95], "weight_decay": 0.1}},
        "scheduler": {
            "type": "WarmupDecayLR",
            "params": {"warmup_num_steps": 100, "total_num_steps": 2000, "warmup_max_lr": 3e-4},
        },
    }


def _train_block(text: str) -> dict:
    """The printed YAML parses, and its train: block is a valid mltrain TrainConfig."""
    data = yaml.safe_load(text)
    TrainConfig.model_validate(data["train"])
    return data["train"]


@pytest.mark.parametrize("stage, parallel", [(1, "ddp"), (2, "ddp"), (3, "fsdp")])
def test_zero_stages(stage, parallel):
    conv = convert(_zero(stage))
    assert conv.train == {
        "micro_batch_size": 4,
        "grad_accum_steps": 8,
        "grad_clip": 1.0,
        "dtype": "bf16",
        "parallel": parallel,
        "lr": 3e-4,
        "beta1": 0.9,
        "beta2": 0.95,
        "weight_decay": 0.1,
        "warmup_steps": 100,
        "max_steps": 2000,
        "min_lr_ratio": 0.0,
    }
    lost = [n for n in conv.notes if "what is lost" in n]
    assert bool(lost) == (stage < 3)  # ddp says what it loses against ZeRO-1/2
    if stage == 2:
        assert "gradients are replicated" in lost[0]
    assert conv.unmapped == []


def test_offload_zeropp_and_unknown_are_named_with_advice(tmp_path):
    ds = _zero(
        3,
        offload_optimizer={"device": "cpu", "pin_memory": True},
        offload_param={"device": "nvme", "nvme_path": "/local"},
        zero_quantized_weights=True,
        zero_hpz_partition_size=8,
        stage3_gather_16bit_weights_on_model_save=True,
    )
    ds["fp16"] = {"enabled": False}
    ds["wall_clock_breakdown"] = False
    ds["some_new_option"] = 1
    p = tmp_path / "ds.json"
    p.write_text(json.dumps(ds))
    text = from_deepspeed_command(p)
    train = _train_block(text)
    assert train["parallel"] == "fsdp"
    for key, words in [
        ("zero_optimization.offload_optimizer (device cpu)", "use parallel: fsdp"),
        ("zero_optimization.offload_param (device nvme)", "activation_checkpointing"),
        ("zero_optimization.zero_quantized_weights", "ZeRO++"),
        ("zero_optimization.zero_hpz_partition_size", "ZeRO++"),
        ("zero_optimization.stage3_gather_16bit_weights_on_model_save", "mltrain export"),
        ("wall_clock_breakdown", "metrics.jsonl"),
        ("some_new_option", "check it by hand"),
    ]:
        assert any(line.startswith(f"#   {key}: ") and words in line for line in text.splitlines()), key
    assert "# not mapped (7)" in text


def test_offload_to_none_is_not_reported():
    conv = convert(_zero(2, offload_optimizer={"device": "none"}))
    assert conv.unmapped == []


def test_auto_values_are_reported_as_taken_from_the_trainer_args():
    conv = convert(json.loads(EXAMPLE.read_text()))
    autos = {(ds, hf) for ds, hf, _ in conv.auto}
    assert ("train_micro_batch_size_per_gpu", "per_device_train_batch_size") in autos
    assert ("gradient_accumulation_steps", "gradient_accumulation_steps") in autos
    assert ("gradient_clipping", "max_grad_norm") in autos
    assert ("bf16.enabled", "bf16") in autos
    assert "micro_batch_size" not in conv.train  # left for the user to set from the Trainer args
    assert conv.train["parallel"] == "ddp"
    ds = _zero(2)
    ds["optimizer"]["params"] = {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}
    ds["scheduler"] = {"type": "WarmupCosineLR", "params": {"warmup_num_steps": "auto", "total_num_steps": "auto"}}
    conv = convert(ds)
    got = {ds_key: hf for ds_key, hf, _ in conv.auto}
    assert got["optimizer.params.lr"] == "learning_rate" and got["optimizer.params.betas"] == "adam_beta1, adam_beta2"
    assert got["scheduler.params.total_num_steps"] == "max_steps"
    assert "lr" not in conv.train and conv.train["min_lr_ratio"] == pytest.approx(0.0001)


def test_fp16_maps_to_bf16_with_a_reason():
    ds = _zero(1)
    ds.pop("bf16")
    ds["fp16"] = {"enabled": True, "loss_scale": 0}
    conv = convert(ds)
    assert conv.train["dtype"] == "bf16"
    keys = [k for k, _ in conv.unmapped]
    assert "fp16" in keys and "fp16.loss_scale" in keys


def test_other_optimizer_and_scheduler_are_named():
    ds = _zero(2)
    ds["optimizer"] = {"type": "OneBitLamb", "params": {"lr": 1e-3}}
    ds["scheduler"] = {"type": "OneCycle", "params": {}}
    conv = convert(ds)
    assert {k for k, _ in conv.unmapped} == {"optimizer.type = OneBitLamb", "scheduler.type = OneCycle"}


@pytest.mark.parametrize(
    "text, words",
    [
        ("{", "invalid JSON"),
        ("[1]", "top level must be a JSON object"),
        ('{"train_micro_batch_size_per_gpu": "four"}', 'train_micro_batch_size_per_gpu: expected a number or "auto"'),
        ('{"zero_optimization": {"stage": 4}}', "zero_optimization.stage: expected 0, 1, 2 or 3"),
    ],
)
def test_bad_input_is_one_line(tmp_path, text, words):
    p = tmp_path / "ds.json"
    p.write_text(text)
    with pytest.raises(ConfigError, match=words):
        from_deepspeed_command(p)
    with pytest.raises(ConfigError, match="file not found"):
        load_ds_config(tmp_path / "missing.json")


def test_cli(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "mltrain", "config", "from-deepspeed", str(EXAMPLE)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert _train_block(r.stdout)["parallel"] == "ddp" and "= auto -> TrainingArguments" in r.stdout
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    r = subprocess.run(
        [sys.executable, "-m", "mltrain", "config", "from-deepspeed", str(bad)], capture_output=True, text=True
    )
    assert r.returncode == 2 and "invalid JSON" in r.stderr and "Traceback" not in r.stderr


# --------------------------------------------------------------------------- each mapping pinned


def test_activation_checkpointing_section_turns_it_on():
    for section in ({}, None, {"partition_activations": False}, {"number_checkpoints": 4}):
        conv = convert({"activation_checkpointing": section})
        assert conv.train["activation_checkpointing"] is True, section
        assert conv.origin["activation_checkpointing"] == "activation_checkpointing section"
        assert _train_block(render(conv, "ds.json"))["activation_checkpointing"] is True
    conv = convert(
        {
            "activation_checkpointing": {
                "partition_activations": True,
                "cpu_checkpointing": True,
                "contiguous_memory_optimization": True,
                "synchronize_checkpoint_boundary": True,
            }
        }
    )
    assert conv.train["activation_checkpointing"] is True
    assert [k for k, _ in conv.unmapped] == [
        "activation_checkpointing.partition_activations",
        "activation_checkpointing.cpu_checkpointing",
        "activation_checkpointing.contiguous_memory_optimization",
    ]
    assert all("mltrain recomputes each block" in advice for _, advice in conv.unmapped)
    assert "activation_checkpointing" not in convert({}).train  # no section: left at mltrain's default (off)


@pytest.mark.parametrize(
    "section, dtype, origin",
    [
        ({"bf16": {"enabled": True}}, "bf16", "bf16.enabled = true"),
        ({"bfloat16": {"enabled": True}}, "bf16", "bf16.enabled = true"),  # DeepSpeed's older spelling
        ({"bf16": {"enabled": False}}, "fp32", "bf16/fp16 disabled"),
        ({"fp16": {"enabled": False}}, "fp32", "bf16/fp16 disabled"),
        ({"bf16": {"enabled": False}, "fp16": {"enabled": False}}, "fp32", "bf16/fp16 disabled"),
        ({"bf16": {"enabled": "auto"}}, "auto", "bf16.enabled = auto: bf16 where the GPU supports it, else fp32"),
        ({"fp16": {"enabled": "auto"}}, "auto", "fp16.enabled = auto: bf16 where the GPU supports it, else fp32"),
        ({"fp16": {"enabled": True}}, "bf16", "fp16.enabled = true"),
    ],
)
def test_precision(section, dtype, origin):
    conv = convert(section)
    assert conv.train["dtype"] == dtype and conv.origin["dtype"] == origin
    if dtype == "auto":
        which = "bf16" if "bf16" in section else "fp16"
        assert conv.auto == [(f"{which}.enabled", which, "dtype")]
    assert "dtype" not in convert({}).train  # no precision section: mltrain's default


def test_fp16_scaling_keys_reported_only_when_fp16_is_on():
    on = convert({"fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "hysteresis": 2}})
    assert [k for k, _ in on.unmapped] == ["fp16", "fp16.loss_scale", "fp16.initial_scale_power", "fp16.hysteresis"]
    assert "V100/T4" in on.unmapped[0][1] and on.unmapped[1][1] == "bf16 needs no loss scaling; drop it"
    off = convert({"fp16": {"enabled": False, "loss_scale": 0}})
    assert off.unmapped == []


def test_zero_stage_default_and_zero_zero():
    for z in ({}, {"stage": 0}):
        conv = convert({"zero_optimization": z})
        assert conv.train == {"parallel": "ddp"}
        assert conv.origin["parallel"] == "zero_optimization.stage = 0"
        assert conv.notes == [
            "ZeRO-0 -> ddp, what is lost: nothing is lost: ZeRO-0 is plain data parallelism",
            "no optimizer section: the HF Trainer's optimizer (AdamW by default) is used; mltrain uses AdamW",
        ]
    conv = convert({})
    assert conv.train == {"parallel": "ddp"}
    assert conv.origin["parallel"] == "no zero_optimization (plain data parallel)"
    assert convert({"zero_optimization": {"stage": 1}}).notes[0].startswith("ZeRO-1 -> ddp, what is lost: sharding")
    with pytest.raises(ConfigError, match=r"ds.json: zero_optimization: expected an object, got 3"):
        convert({"zero_optimization": 3}, "ds.json")
    with pytest.raises(ConfigError, match=r"zero_optimization.stage: expected 0, 1, 2 or 3, got 'auto'"):
        convert({"zero_optimization": {"stage": "auto"}})


@pytest.mark.parametrize("device", [None, "none", False])
def test_offload_switched_off_in_any_spelling_is_silent(device):
    conv = convert(
        {"zero_optimization": {"stage": 3, "offload_param": {"device": device}, "offload_optimizer": device}}
    )
    assert conv.unmapped == []


def test_zero_comm_tuning_and_unknown_keys():
    conv = convert({"zero_optimization": {"stage": 2, "overlap_comm": True, "reduce_bucket_size": 5e8, "zz_new": 1}})
    assert conv.unmapped == [
        ("zero_optimization.overlap_comm", fd.COMM_TUNING),
        ("zero_optimization.reduce_bucket_size", fd.COMM_TUNING),
        ("zero_optimization.zz_new", "unknown to this converter: check it by hand"),
    ]


def test_numbers_whole_numbers_and_bools():
    conv = convert({"train_micro_batch_size_per_gpu": 4.0, "gradient_clipping": 1})
    assert conv.train["micro_batch_size"] == 4 and type(conv.train["micro_batch_size"]) is int
    assert conv.train["grad_clip"] == 1.0 and type(conv.train["grad_clip"]) is float
    assert conv.origin["micro_batch_size"] == "train_micro_batch_size_per_gpu = 4.0"
    assert conv.origin["grad_clip"] == "gradient_clipping = 1"
    with pytest.raises(ConfigError, match=r"ds.json: gradient_accumulation_steps: expected a whole number, got 2.5"):
        convert({"gradient_accumulation_steps": 2.5}, "ds.json")
    with pytest.raises(ConfigError, match=r'gradient_clipping: expected a number or "auto", got True'):
        convert({"gradient_clipping": True})
    conv = convert({"gradient_clipping": " AUTO "})
    assert "grad_clip" not in conv.train and conv.auto == [("gradient_clipping", "max_grad_norm", "grad_clip")]


def test_train_batch_size_is_a_note_not_a_setting():
    conv = convert({"train_batch_size": 256})
    assert "train_batch_size = 256: mltrain derives the global batch" in conv.notes[0]
    assert set(conv.train) == {"parallel"}
    assert [k for k, _ in conv.unmapped] == []


def test_optimizer_details():
    conv = convert(
        {
            "optimizer": {
                "type": "Adam",
                "params": {"lr": 1e-4, "eps": 1e-6, "adam_w_mode": False, "torch_adam": True, "amsgrad": True},
            }
        }
    )
    assert conv.train["lr"] == 1e-4 and conv.origin["lr"] == "optimizer.params.lr = 0.0001"
    assert "adam_w_mode false (L2 decay)" in conv.notes[-1]
    assert conv.unmapped == [
        ("optimizer.params.eps", "mltrain's AdamW uses eps 1e-8; not configurable"),
        ("optimizer.params.amsgrad", "no equivalent in mltrain's AdamW; drop it"),
    ]
    for kind in ("AdamW", "FusedAdam", "CPUAdam", "DeepSpeedCPUAdam"):
        assert convert({"optimizer": {"type": kind, "params": {"eps": 1e-8}}}).unmapped == [], kind
    conv = convert({"optimizer": {"type": "AdamW", "params": {"betas": [0.8, 0.99]}}})
    assert (conv.train["beta1"], conv.train["beta2"]) == (0.8, 0.99)
    assert conv.origin["beta1"] == conv.origin["beta2"] == "optimizer.params.betas = [0.8, 0.99]"
    with pytest.raises(ConfigError, match=r"optimizer.params.betas: expected \[b1, b2\]"):
        convert({"optimizer": {"type": "AdamW", "params": {"betas": [0.9]}}})
    with pytest.raises(ConfigError, match=r"optimizer: expected an object"):
        convert({"optimizer": "adamw"})


@pytest.mark.parametrize(
    "kind, params, ratio",
    [
        ("WarmupLR", {}, 1.0),
        ("WarmupDecayLR", {"total_num_steps": 10}, 0.0),
        ("WarmupCosineLR", {}, 0.0001),
        ("WarmupCosineLR", {"cos_min_ratio": 0.1}, 0.1),
    ],
)
def test_scheduler_kinds(kind, params, ratio):
    conv = convert({"scheduler": {"type": kind, "params": params}})
    assert conv.train["min_lr_ratio"] == pytest.approx(ratio)
    assert any("warms up logarithmically" in n for n in conv.notes)  # DeepSpeed's default warmup_type
    linear = convert({"scheduler": {"type": kind, "params": {**params, "warmup_type": "linear"}}})
    assert not any("logarithmically" in n for n in linear.notes)


def test_scheduler_lr_warmup_min_and_precedence():
    conv = convert({"scheduler": {"type": "WarmupLR", "params": {"warmup_max_lr": 2e-4, "warmup_num_steps": 50}}})
    assert conv.train["lr"] == 2e-4 and conv.train["warmup_steps"] == 50
    conv = convert(
        {
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
            "scheduler": {"type": "WarmupLR", "params": {"warmup_max_lr": 2e-4, "warmup_min_lr": 1e-5}},
        }
    )
    assert conv.train["lr"] == 1e-3  # the optimizer's lr wins
    assert conv.unmapped == [("scheduler.params.warmup_min_lr", "mltrain warms up from 0")]
    for params in ({"warmup_min_lr": 0}, {"warmup_min_lr": "auto"}):
        assert convert({"scheduler": {"type": "WarmupLR", "params": params}}).unmapped == []
    conv = convert({"scheduler": {"type": "WarmupCosineLR", "params": {"warmup_min_ratio": 0.01}}})
    assert conv.unmapped == [("scheduler.params.warmup_min_ratio", "mltrain warms up from 0")]


def test_top_level_advice():
    conv = convert({"seed": 1, "steps_per_print": 10, "pipeline": {}, "brand_new": 1})
    assert conv.unmapped == [
        ("seed", "use the run config's top-level seed:"),
        ("steps_per_print", "use train.log_every"),
        ("pipeline", "pipeline parallelism: not in mltrain (parallel: ddp or fsdp)"),
        ("brand_new", "unknown to this converter: check it by hand"),
    ]


def test_render_layout():
    text = render(convert({"gradient_clipping": 1.0}), "my.json")
    assert text.splitlines() == [
        "# mltrain train: settings equivalent to my.json",
        "train:",
        "  grad_clip: 1.0  # gradient_clipping = 1.0",
        "  parallel: ddp  # no zero_optimization (plain data parallel)",
        "# notes:",
        "#   no optimizer section: the HF Trainer's optimizer (AdamW by default) is used; mltrain uses AdamW",
        "# every option was mapped",
    ]
    text = render(convert({"gradient_clipping": "auto", "seed": 3}), "my.json")
    assert "#   gradient_clipping = auto -> TrainingArguments max_grad_norm -> train.grad_clip" in text
    assert "# not mapped (1): what to do instead\n#   seed: use the run config's top-level seed:\n" in text


def test_activation_checkpointing_as_a_bare_true():
    conv = convert({"activation_checkpointing": True})
    assert conv.train["activation_checkpointing"] is True and conv.unmapped == []


def test_every_fp16_scaling_key_is_named():
    keys = ["loss_scale", "initial_scale_power", "loss_scale_window", "hysteresis", "min_loss_scale"]
    conv = convert({"fp16": {"enabled": True, **dict.fromkeys(keys, 1)}})
    assert [k for k, _ in conv.unmapped] == ["fp16", *(f"fp16.{k}" for k in keys)]


def test_zero_details_origin_offload_without_device_and_order():
    conv = convert({"zero_optimization": {"stage": 3}})
    assert conv.origin["parallel"] == "zero_optimization.stage = 3 (parameters, gradients, optimizer state sharded)"
    assert conv.notes == [
        "no optimizer section: the HF Trainer's optimizer (AdamW by default) is used; mltrain uses AdamW"
    ]  # ZeRO-3 -> fsdp loses nothing
    z = {"stage": 2, "offload_optimizer": {"pin_memory": True}, "offload_param": {"device": "none"}, "overlap_comm": 1}
    conv = convert({"zero_optimization": z})  # an offload with no device is off; later keys are still read
    assert conv.unmapped == [("zero_optimization.overlap_comm", fd.COMM_TUNING)]


def test_optimizer_edges():
    conv = convert({"optimizer": {"params": {"lr": 1e-3}}})  # no type: not an Adam, named as such
    assert conv.unmapped == [
        ("optimizer.type = ", "mltrain trains with AdamW only; its settings below come from train:")
    ]
    assert "lr" not in conv.train
    for opt in ({"type": "AdamW", "params": {"adam_w_mode": False}}, {"type": "Adam", "params": {}}):
        assert not any("adam_w_mode" in n for n in convert({"optimizer": opt}).notes), opt
    conv = convert({"optimizer": {"type": "Adam", "params": {"adam_w_mode": True}}})
    assert not any("adam_w_mode" in n for n in conv.notes)
    conv = convert(
        {
            "optimizer": {
                "type": "AdamW",
                "params": {"betas": "auto", "eps": "auto", "weight_decay": 0.1, "bias_correction": True},
            }
        }
    )
    assert conv.auto == [("optimizer.params.betas", "adam_beta1, adam_beta2", "beta1, beta2")]
    assert conv.unmapped == []  # eps auto, bias_correction: nothing to do
    assert conv.origin["weight_decay"] == "optimizer.params.weight_decay = 0.1"


def test_scheduler_edges():
    with pytest.raises(ConfigError, match=r"^ds.json: scheduler: expected an object, got 'WarmupLR'$"):
        convert({"scheduler": "WarmupLR"}, "ds.json")
    conv = convert({"scheduler": {"params": {}}})
    assert conv.unmapped == [
        ("scheduler.type = ", "mltrain's schedule is linear warmup then cosine to lr x min_lr_ratio")
    ]
    conv = convert(
        {
            "scheduler": {
                "type": "WarmupDecayLR",
                "params": {"warmup_num_steps": 50.0, "total_num_steps": 1000.0, "warmup_max_lr": 1e-3},
            }
        }
    )
    assert conv.train["warmup_steps"] == 50 and type(conv.train["warmup_steps"]) is int
    assert conv.train["max_steps"] == 1000 and type(conv.train["max_steps"]) is int
    assert conv.origin["warmup_steps"] == "scheduler.params.warmup_num_steps = 50.0"
    assert conv.origin["lr"] == "scheduler.params.warmup_max_lr = 0.001"
    assert conv.origin["min_lr_ratio"] == "WarmupDecayLR decays to 0"
    assert "WarmupDecayLR decays linearly; mltrain decays with a cosine (same end points)" in conv.notes
    with pytest.raises(ConfigError, match=r"scheduler.params.warmup_num_steps: expected a whole number"):
        convert({"scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 2.5}}})
    assert convert({"scheduler": {"type": "WarmupLR"}}).origin["min_lr_ratio"] == "WarmupLR: constant lr after warmup"
    conv = convert({"scheduler": {"type": "WarmupCosineLR", "params": {"cos_min_ratio": 0.05}}})
    assert conv.origin["min_lr_ratio"] == "WarmupCosineLR cos_min_ratio = 0.05"
    conv = convert({"scheduler": {"type": "WarmupCosineLR", "params": {"cos_min_ratio": "auto"}}})
    assert "min_lr_ratio" not in conv.train  # not a number: left for the user
    for value in (1, 1.0):
        conv = convert(
            {"scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": value, "warmup_min_ratio": value}}}
        )
        assert [k for k, _ in conv.unmapped] == ["scheduler.params.warmup_min_lr", "scheduler.params.warmup_min_ratio"]


def test_command_names_its_file(tmp_path):
    p = tmp_path / "ds.json"
    p.write_text('{"gradient_clipping": "x"}')
    with pytest.raises(ConfigError, match=rf"^{p}: gradient_clipping: expected a number"):
        from_deepspeed_command(p)
    p.write_text('{"gradient_clipping": 1}')
    assert from_deepspeed_command(p).startswith(f"# mltrain train: settings equivalent to {p}\ntrain:\n")
    with pytest.raises(ConfigError, match=rf"^{tmp_path}: cannot read: "):
        load_ds_config(tmp_path)  # a directory
    p.write_text("[1]")
    with pytest.raises(ConfigError, match=rf"^{p}: top level must be a JSON object, got list$"):
        load_ds_config(p)
