"""A small Hugging Face Trainer script of the usual kind (causal LM, Trainer, optional DeepSpeed config),
made restartable by mltrain with three lines: the callback, the checkpoint dir, and the resume point.

    mltrain train examples/hf_trainer/run.yaml --nproc 2      # torchrun, 2 processes
    kill -USR1 <mltrain pid>   (or: touch runs/hf-tiny/control/stop)  -> checkpoint, exit 75
    mltrain train examples/hf_trainer/run.yaml --nproc 2      # resumes from that checkpoint

It needs no download: a tiny random Llama/Qwen2 model and a byte-level "tokenizer" over WikiText-like
text the script generates. Replace `build_model` and `build_dataset` with your own.
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from mltrain import runtime
from mltrain.integrations.hf_trainer import MltrainCallback

WORDS = [
    "the",
    "river",
    "valley",
    "town",
    "church",
    "army",
    "king",
    "war",
    "song",
    "album",
    "film",
    "game",
    "season",
    "league",
    "county",
    "station",
    "railway",
    "school",
    "species",
    "island",
    "empire",
    "battle",
    "ship",
    "record",
    "band",
    "tour",
    "century",
    "government",
    "village",
    "was",
    "is",
    "were",
    "built",
    "released",
    "founded",
    "named",
    "played",
    "located",
    "described",
    "known",
    "became",
    "won",
    "formed",
]


def wikitext_like(n_articles: int, seed: int = 0) -> str:
    """Articles shaped like WikiText-2: ' = Title = ' headings, sub-headings and sentences."""
    rng = random.Random(seed)
    out = []
    for a in range(n_articles):
        out.append(f" = {rng.choice(WORDS).title()} {rng.choice(WORDS).title()} {a} = \n")
        for s in range(3):
            out.append(f" = = {rng.choice(WORDS).title()} {s} = = \n")
            for _ in range(4):
                words = [rng.choice(WORDS) for _ in range(rng.randint(8, 20))]
                out.append(" " + " ".join(words).capitalize() + " . \n")
    return "".join(out)


class ByteBlocks(Dataset):
    """Fixed-length blocks of UTF-8 bytes (vocab 256): input_ids and labels for a causal LM."""

    def __init__(self, text: str, seq_len: int) -> None:
        data = torch.tensor(list(text.encode()), dtype=torch.long)
        n = len(data) // seq_len
        self.blocks = data[: n * seq_len].view(n, seq_len)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}


def build_model(kind: str, seq_len: int) -> torch.nn.Module:
    """A tiny random model of a real architecture (no weights downloaded)."""
    shape = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=seq_len,
    )
    if kind == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        return Qwen2ForCausalLM(Qwen2Config(**shape))
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**shape))


class SlowSteps(TrainerCallback):
    """--slow_step_s: pretend each step takes longer (demos and tests of stop/resume on a tiny model)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        time.sleep(self.seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["llama", "qwen2"], default="llama")
    p.add_argument("--max_steps", type=int, default=60)
    p.add_argument("--save_steps", type=int, default=20)
    p.add_argument("--seq_len", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=4, help="per device")
    p.add_argument("--grad_accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval_steps", type=int, default=0, help="0: evaluate only at the end")
    p.add_argument("--deepspeed", default=None, help="a DeepSpeed config JSON, e.g. ds_config.json")
    p.add_argument("--slow_step_s", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args()
    # Seed before anything random is built: the model's initial weights come from this seed, so a fresh run
    # starts where the last fresh run started (the Trainer seeds again at __init__, after the model exists).
    set_seed(args.seed)

    cuda = torch.cuda.is_available()
    out_dir = runtime.checkpoint_dir()
    text = wikitext_like(60)
    split = int(len(text) * 0.9)
    train_ds, eval_ds = ByteBlocks(text[:split], args.seq_len), ByteBlocks(text[split:], args.seq_len)
    world = int(torch.distributed.get_world_size() if torch.distributed.is_initialized() else 0) or int(
        __import__("os").environ.get("WORLD_SIZE", "1")
    )
    targs = TrainingArguments(
        output_dir=str(out_dir),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,
        warmup_steps=max(1, args.max_steps // 10),
        lr_scheduler_type="cosine",
        weight_decay=0.1,
        max_grad_norm=1.0,
        logging_steps=1,
        save_steps=args.save_steps,
        save_total_limit=2,
        eval_strategy="steps" if args.eval_steps else "no",
        eval_steps=args.eval_steps or None,
        use_cpu=not cuda,
        ddp_backend=None if cuda else "gloo",
        ddp_find_unused_parameters=False,
        deepspeed=args.deepspeed,
        report_to=[],
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=args.seed,
    )
    callbacks: list[TrainerCallback] = [MltrainCallback(tokens_per_step=args.batch_size * args.seq_len * world)]
    if args.slow_step_s:
        callbacks.append(SlowSteps(args.slow_step_s))
    trainer = Trainer(
        model=build_model(args.model, args.seq_len),
        args=targs,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        callbacks=callbacks,
    )
    # None on the first start; after a stop (exit 75) the newest complete checkpoint.
    trainer.train(resume_from_checkpoint=runtime.latest_checkpoint(out_dir))
    trainer.evaluate()  # the callback writes an "eval" record: val_loss, val_ppl
    trainer.save_model(str(runtime.run_dir() / "final"))


if __name__ == "__main__":
    main()
