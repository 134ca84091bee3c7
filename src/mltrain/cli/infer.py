"""`mltrain export|eval|sample`: a trained checkpoint written as a Hugging Face model, scored on text,
or asked to continue a prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mltrain.cli.common import DeviceOpt, RunRef, StepOpt, builtin_only, console, err_console, print_plain
from mltrain.startup import heavy_imports

commands = typer.Typer()

EVAL_HELP = """Mean cross-entropy (nats/token) and perplexity of a checkpoint on any text.

Method: each document of the --data files (a .txt file is one document; .jsonl/.parquet one per record) \
is encoded with the run's tokenizer and followed by EOS, and the documents are concatenated into one \
stream of N tokens, as training data is packed. The stream is cut into non-overlapping windows of the \
run's train.seq_len T: window k reads tokens kT..kT+T-1 and is scored on the next token of each. The \
last window is shorter when N-1 is not a multiple of T, so every token except the first is scored \
exactly once; context restarts at each window and crosses document boundaries, as in training.

Loss = summed token losses / scored tokens; perplexity = exp(loss). Weights in fp32, on the GPU when \
there is one (--device)."""


@commands.command()
def export(
    run: RunRef,
    hf: Annotated[
        Path, typer.Option("-o", "--out", "--hf", help="output directory in Hugging Face format (--hf: old name)")
    ],
    step: StepOpt = None,
    dtype: Annotated[str, typer.Option(help="bf16 | fp16 | fp32")] = "bf16",
    max_shard_gb: Annotated[float, typer.Option(help="split model.safetensors above this size")] = 5.0,
    force: Annotated[bool, typer.Option("--force", help="replace an existing export directory")] = False,
) -> None:
    """Export a checkpoint as a Hugging Face model directory (config, safetensors, tokenizer)."""
    with heavy_imports():  # torch: see mltrain/startup.py
        from mltrain.infer.export import export_run
    from mltrain.rundir import resolve_run

    builtin_only(resolve_run(run) / "config.yaml", "mltrain export")
    out = export_run(resolve_run(run), hf, step=step, dtype=dtype, overwrite=force, max_shard_gb=max_shard_gb)
    console.print(f"exported to {out}")


@commands.command("eval", help=EVAL_HELP)
def eval_cmd(
    run: RunRef,
    data: Annotated[list[str], typer.Option("--data", help="text files to evaluate on (.txt/.jsonl/.parquet)")],
    more: Annotated[Optional[list[str]], typer.Argument(help="more files (--data A B C)", show_default=False)] = None,
    step: StepOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    device: DeviceOpt = "auto",
    batch_size: Annotated[int, typer.Option(help="windows per forward pass")] = 8,
) -> None:
    import json

    with heavy_imports():  # torch: see mltrain/startup.py
        from mltrain.infer.eval import eval_run, result_dict
    from mltrain.rundir import resolve_run

    r = eval_run(
        resolve_run(run), [*data, *(more or [])], step=step, device=device, batch_size=batch_size, console=err_console
    )
    if json_out:
        print(json.dumps(result_dict(r), indent=2))
        return
    print_plain(
        f"{r.run} step {r.step} on {', '.join(r.files)}: {r.documents} documents, {r.scored_tokens:,} scored tokens "
        f"in {r.windows} windows of {r.seq_len}\n"
        f"loss {r.loss:.4f} nats/token, perplexity {r.perplexity:.3f}"
    )


@commands.command()
def sample(
    run: RunRef,
    prompt: Annotated[str, typer.Option(help="text the sample continues (may be empty)")] = "",
    step: StepOpt = None,
    max_new_tokens: Annotated[int, typer.Option(help="tokens to generate at most (EOS stops earlier)")] = 200,
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.8,
    top_k: Annotated[int, typer.Option(help="sample among the k most likely tokens; 0 = all")] = 0,
    top_p: Annotated[float, typer.Option(help="nucleus sampling mass; 1 = off")] = 1.0,
    seed: Annotated[int, typer.Option(help="same seed, same tokens")] = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Continue --prompt with the run's model (KV cache; context capped at train.seq_len)."""
    with heavy_imports():  # torch: see mltrain/startup.py
        from mltrain.infer.sample import sample_run
    from mltrain.rundir import resolve_run

    r = sample_run(
        resolve_run(run),
        prompt,
        step=step,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        device=device,
        console=err_console,
    )
    print(r.prompt + r.text)  # verbatim: no wrapping, markup or emoji codes
