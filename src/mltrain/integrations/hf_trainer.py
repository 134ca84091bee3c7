"""`MltrainCallback`: a Hugging Face Trainer script gets mltrain's stop-checkpoint-requeue cycle and metrics.

    from mltrain import runtime
    from mltrain.integrations.hf_trainer import MltrainCallback

    args = TrainingArguments(output_dir=str(runtime.checkpoint_dir()), ...)
    trainer = Trainer(..., args=args, callbacks=[MltrainCallback(tokens_per_step=...)])
    trainer.train(resume_from_checkpoint=runtime.latest_checkpoint(args.output_dir))

- metrics.jsonl in the trainer's format: "start" (with the resumed step), "train" (loss, lr, grad_norm,
  tokens_per_s, step_time_s), "eval" (val_loss, val_ppl) and "exit" records, so `mltrain status`,
  goodput and `mltrain report` work as for the built-in trainer;
- a stop request (SIGUSR1/SIGTERM, or <run>/control/stop) seen by any rank makes every rank save a
  checkpoint at the end of the current step and stop; the callback then leaves with exit code 75 from
  on_train_end, so the code after trainer.train() runs only when training really finished;
- the checkpoint gets a MLTRAIN_COMPLETE marker once every rank has saved: runtime.latest_checkpoint()
  prefers such checkpoints and skips one that was cut short;
- a relaunch of a finished run (resumed at max_steps) says so and exits 0 before the Trainer's loop, which
  would otherwise train one step past max_steps and save checkpoint-<max_steps + 1>;
- ranks that do not train as one group of WORLD_SIZE ranks (an HF Trainer on CPU without use_cpu=True trains
  as N separate world-size-1 main processes, each on all the data) raise a ConfigError at train begin:
  the per-rank wrapper prints it in one line and exits 2, so the run is never restarted.

transformers (and torch) are imported when this module is imported, never by `import mltrain`.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from mltrain import exit_codes, runtime
from mltrain.errors import ConfigError


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


class MltrainCallback(TrainerCallback):
    """See the module docstring. `tokens_per_step`: tokens of one optimizer step over all ranks (for
    tokens/s when the Trainer does not count tokens: include_num_input_tokens_seen); `check_every`: steps
    between stop checks (each check is one tiny all-reduce); `exit_on_stop`: leave with 75 after the stop
    checkpoint (False: the script calls runtime.exit_for_requeue() itself when `callback.stopped`)."""

    def __init__(
        self,
        tokens_per_step: int | None = None,
        check_every: int = 1,
        exit_on_stop: bool = True,
        install_signal_handler: bool = True,
    ) -> None:
        self.tokens_per_step = tokens_per_step
        self.check_every = max(1, int(check_every))
        self.exit_on_stop = exit_on_stop
        self.stopped = False
        self.stop_step: int | None = None
        self._t_last = 0.0  # end of the previous step, or of the last save/eval (their time is not step time)
        self._window_s = 0.0
        self._window_steps = 0
        self._tokens_seen_at_log = 0
        if install_signal_handler:
            runtime.install_stop_handler()

    # ------------------------------------------------------------------ records

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from mltrain import startup

        startup.settle()  # the script's imports are done: the GC is on for the training (mltrain/startup.py)
        check_process_group(args)
        if state.max_steps and state.global_step >= state.max_steps > 0:
            self._already_finished(args, state)
        if state.is_world_process_zero:
            runtime.log_start(
                int(state.global_step),
                max_steps=int(state.max_steps or 0) or None,
                resumed_from=runtime.latest_checkpoint(args.output_dir) if state.global_step else None,
            )
        self._t_last = time.perf_counter()
        self._tokens_seen_at_log = int(getattr(state, "num_input_tokens_seen", 0) or 0)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        now = time.perf_counter()
        self._window_s += now - self._t_last
        self._window_steps += 1
        self._t_last = now
        if state.global_step % self.check_every == 0 and self._stop_agreed(args):
            self.stopped = True
            self.stop_step = int(state.global_step)
            control.should_save = True
            control.should_training_stop = True
            if state.is_world_process_zero:
                why = runtime.stop_signal() or "control/stop"
                print(f"[mltrain] stop requested ({why}) at step {state.global_step}: saving, then exit 75", flush=True)
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not logs or "loss" not in logs or not state.is_world_process_zero:
            return
        steps = max(1, self._window_steps)
        step_time = self._window_s / steps if self._window_steps else None
        seen = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        if seen > self._tokens_seen_at_log and self._window_s > 0:
            tps: float | None = (seen - self._tokens_seen_at_log) / self._window_s
        elif self.tokens_per_step and step_time:
            tps = self.tokens_per_step / step_time
        else:
            tps = None
        runtime.log(
            int(state.global_step),
            loss=float(logs["loss"]),
            lr=logs.get("learning_rate"),
            grad_norm=logs.get("grad_norm"),
            tokens_per_s=tps,
            step_time_s=step_time,
            epoch=logs.get("epoch"),
        )
        self._window_s, self._window_steps, self._tokens_seen_at_log = 0.0, 0, seen

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        self._t_last = time.perf_counter()
        if not metrics or not state.is_world_process_zero or "eval_loss" not in metrics:
            return
        val = float(metrics["eval_loss"])
        runtime.log_eval(int(state.global_step), val_loss=val, val_ppl=math.exp(min(val, 50.0)))

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Every rank has returned from the Trainer's save (optimizer shards included, under ZeRO) once
        the barrier passes: only then does rank 0 mark the checkpoint complete."""
        dist = _dist()
        if dist is not None:
            dist.barrier()
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                (ckpt / runtime.CHECKPOINT_COMPLETE).write_text(f"{state.global_step}\n")
        self._t_last = time.perf_counter()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        reason = exit_codes.REASON_PREEMPTED if self.stopped else exit_codes.REASON_DONE
        if state.is_world_process_zero:
            runtime.log_exit(int(state.global_step), reason)
        if self.stopped and self.exit_on_stop:
            runtime.exit_for_requeue()

    def _already_finished(self, args: Any, state: Any) -> None:
        """Resumed at (or past) max_steps: nothing is left to train. The Trainer's loop has no check before
        its first step, so leave here (exit 0 on every rank: each resumed the same state), with no records:
        the run's last "exit" record (done) still stands and no restart is counted."""
        if state.is_world_process_zero:
            ckpt = runtime.latest_checkpoint(args.output_dir)
            where = f" ({Path(ckpt).name})" if ckpt else ""
            name = os.environ.get(runtime.ENV_RUN_NAME) or "this run"
            print(
                f"[mltrain] {name} already finished: step {state.global_step} of {state.max_steps}{where}; "
                "nothing to train (raise --max_steps or start a new run to train further)",
                flush=True,
            )
        raise SystemExit(exit_codes.DONE)

    # ------------------------------------------------------------------ stop agreement

    def _stop_agreed(self, args: Any) -> bool:
        """True on every rank when any rank saw a stop request (one all-reduce of one number)."""
        local = runtime.stop_requested()
        dist = _dist()
        if dist is None:
            return local
        import torch

        device = args.device if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([1.0 if local else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)


def check_process_group(args: Any) -> None:
    """Raise ConfigError unless this rank trains as one of WORLD_SIZE ranks (torchrun's count): in one process
    group of that size, and with the Trainer in its distributed mode (DDP, DeepSpeed, FSDP).

    Otherwise each rank trains alone on all the data (no DDP wrapper, no gradient all-reduce) and nothing
    fails. Seen with an HF Trainer on CPU without use_cpu=True: the process group of 2 exists, but accelerate
    sets up no distributed type, so the Trainer runs "not parallel" on every rank."""
    want = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if want <= 1:
        return
    dist = _dist()
    group = dist.get_world_size() if dist is not None else None
    mode = getattr(args, "parallel_mode", None)
    mode = str(getattr(mode, "value", mode))
    if group == want and mode == "distributed":
        return
    if group is None:
        how = "joined no process group"
    elif group != want:
        how = f"joined a process group of {group}"
    else:
        how = f"is in the process group, but its Trainer does not use it (parallel mode {mode})"
    raise ConfigError(
        f"rank {runtime.rank()}: torchrun started WORLD_SIZE={want} ranks but this one {how}: each rank would "
        "train alone on all the data; on CPU set TrainingArguments(use_cpu=True, ddp_backend='gloo')"
    )


def resume_point(output_dir: str | os.PathLike[str]) -> str | None:
    """The newest complete checkpoint under the Trainer's output_dir: pass it to resume_from_checkpoint."""
    return runtime.latest_checkpoint(output_dir)
