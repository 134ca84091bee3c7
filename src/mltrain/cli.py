"""The `mltrain` command. Each command is a thin call into a module; heavy imports (torch,
boto3, transformers, pcluster) happen inside the command so `mltrain --help` stays fast.

Library code raises `MltrainError`; `main()` turns it into one line on stderr and its exit code.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from mltrain.errors import MltrainError

err_console = Console(stderr=True)
console = Console()


def _plain_flags() -> None:
    """typer's help labels every flag `<bool>` although a flag takes no value: show nothing there
    (tests/unit/test_cli_help.py fails if a typer update brings the label back)."""
    try:
        from typer.core import TyperOption
    except ImportError:  # pragma: no cover - another typer layout: keep its labels
        return
    shown = TyperOption.display_type_rich

    def display_type_rich(self, ctx):  # type: ignore[no-untyped-def]
        return None if getattr(self, "is_flag", False) else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_plain_flags()

app = typer.Typer(
    help="Plan, provision, feed, train, launch, watch and recover LLM training "
    "(AWS ParallelCluster/Slurm, Kubernetes/EKS, or one machine).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect run configs.", no_args_is_help=True)
data_app = typer.Typer(help="Prepare and validate tokenized training data.", no_args_is_help=True)
cluster_app = typer.Typer(help="Render, validate, check and create AWS ParallelCluster clusters.", no_args_is_help=True)
fleet_app = typer.Typer(help="Run a planned fleet of models on one cluster.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
app.add_typer(cluster_app, name="cluster")
app.add_typer(fleet_app, name="fleet")

RunYaml = Annotated[Path, typer.Argument(help="run config YAML, e.g. configs/demo.yaml", show_default=False)]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set", "-s", metavar="KEY=VALUE", help="override a config key, e.g. --set train.max_steps=50 (repeatable)"
    ),
]
PLAN_SET_EXAMPLE = "constraints.deadline_days=12"  # tests/unit/test_cli_help.py runs it on the shipped fleet
PlanSetOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set",
        "-s",
        metavar="KEY=VALUE",
        help=f"override a fleet key, e.g. --set {PLAN_SET_EXAMPLE} or --set models.0.mfu=0.3 (repeatable)",
    ),
]
RunRef = Annotated[str, typer.Argument(help="run name (under ./runs or $MLTRAIN_BASE_DIR/runs) or run dir")]


def _run_config(path: Path, overrides: list[str] | None, script_ok: bool = False):
    """The run config; commands of the built-in trainer refuse a script run (script:) with one line."""
    from mltrain.config import load_run_config

    cfg = load_run_config(path, overrides or [])
    if not script_ok:
        _builtin_only(cfg, "this command", path)
    return cfg


# --------------------------------------------------------------------------- bring your own script (issue 12)


@config_app.command("from-deepspeed")
def config_from_deepspeed(
    ds_config: Annotated[Path, typer.Argument(help="DeepSpeed config JSON, e.g. ds_config.json", show_default=False)],
) -> None:
    """Print the mltrain train: settings equivalent to a DeepSpeed config, and what cannot be mapped."""
    from mltrain.integrations.from_deepspeed import from_deepspeed_command

    console.print(from_deepspeed_command(ds_config), end="", highlight=False, markup=False, soft_wrap=True)


def _builtin_only(cfg_or_yaml, what: str, source_or_overrides=None) -> None:
    """Commands of the built-in trainer refuse a script run (script: in the run config) with one line."""
    from mltrain.config import RunConfig, load_run_config, require_builtin

    if isinstance(cfg_or_yaml, RunConfig):
        require_builtin(cfg_or_yaml, what, source_or_overrides or "")
        return
    require_builtin(load_run_config(cfg_or_yaml, list(source_or_overrides or [])), what, cfg_or_yaml)


def _train_script(run_yaml: Path, overrides: list[str], nproc: int) -> int | None:
    """`mltrain train` of a script run: the user's script under torchrun (launch/script.py); None otherwise."""
    from mltrain.config import check_nproc, load_run_config

    cfg = load_run_config(run_yaml, overrides)
    if cfg.script is None:
        return None
    from mltrain.launch.script import run_script_local

    check_nproc(cfg, nproc, run_yaml)
    return run_script_local(cfg, run_yaml, nproc)


# --------------------------------------------------------------------------- end bring your own script


# --------------------------------------------------------------------------- config


@config_app.command("show")
def config_show(run_yaml: RunYaml, set_: SetOpt = None) -> None:
    """Print the resolved run config (presets expanded, overrides applied, defaults filled)."""
    from mltrain.config import dump_yaml

    console.print(dump_yaml(_run_config(run_yaml, set_, script_ok=True)), end="", highlight=False, markup=False)


# --------------------------------------------------------------------------- data


@data_app.command("prepare")
def data_prepare(
    run_yaml: RunYaml,
    set_: SetOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="rewrite data that finished runs resume from (they then cannot)")
    ] = False,
) -> None:
    """Tokenize the sources, pack fixed-size token shards and write manifest.json."""
    from mltrain.data.prepare import prepare_data

    prepare_data(_run_config(run_yaml, set_), console=console, force=force)


@data_app.command("validate")
def data_validate(
    target: Annotated[Path, typer.Argument(help="a prepared data dir, or a run config YAML")],
    set_: SetOpt = None,
) -> None:
    """Re-check every shard (checksum, header, token ids, counts). Exit 1 on any problem."""
    from mltrain.data.validate import validate_data_dir

    data_dir = target
    vocab_size = None
    if target.suffix in (".yaml", ".yml"):
        cfg = _run_config(target, set_)
        data_dir, vocab_size = Path(cfg.data.dir), cfg.model.vocab_size
    ok = validate_data_dir(data_dir, model_vocab_size=vocab_size, console=console)
    raise typer.Exit(0 if ok else 1)


# --------------------------------------------------------------------------- train


@app.command()
def train(
    run_yaml: RunYaml,
    set_: SetOpt = None,
    nproc: Annotated[int, typer.Option(help="processes on this machine; >1 launches torchrun")] = 1,
) -> None:
    """Train (or resume) a run on this machine: one process, or torchrun with --nproc N."""
    from mltrain.launch.local import train_local

    script_rc = _train_script(run_yaml, set_ or [], nproc)
    raise typer.Exit(train_local(run_yaml, set_ or [], nproc=nproc) if script_rc is None else script_rc)


@app.command()
def report(run: RunRef) -> None:
    """Write report.png (loss, val loss, tokens/s over steps) and print a summary."""
    from mltrain.report import write_report
    from mltrain.rundir import resolve_run

    write_report(resolve_run(run), console=console)


@app.command()
def export(
    run: RunRef,
    hf: Annotated[
        Path, typer.Option("-o", "--out", "--hf", help="output directory in Hugging Face format (--hf: old name)")
    ],
    step: Annotated[Optional[int], typer.Option(help="checkpoint step; default the newest")] = None,
    dtype: Annotated[str, typer.Option(help="bf16 | fp16 | fp32")] = "bf16",
    max_shard_gb: Annotated[float, typer.Option(help="split model.safetensors above this size")] = 5.0,
    force: Annotated[bool, typer.Option("--force", help="replace an existing export directory")] = False,
) -> None:
    """Export a checkpoint as a Hugging Face model directory (config, safetensors, tokenizer)."""
    from mltrain.model.hf import export_run
    from mltrain.rundir import resolve_run

    _builtin_only(resolve_run(run) / "config.yaml", "mltrain export")
    out = export_run(resolve_run(run), hf, step=step, dtype=dtype, overwrite=force, max_shard_gb=max_shard_gb)
    console.print(f"exported to {out}")


# --------------------------------------------------------------------------- eval / sample (issue 16)

EVAL_HELP = """Mean cross-entropy (nats/token) and perplexity of a checkpoint on any text.

Method: each document of the --data files (a .txt file is one document; .jsonl/.parquet one per record) \
is encoded with the run's tokenizer and followed by EOS, and the documents are concatenated into one \
stream of N tokens, as training data is packed. The stream is cut into non-overlapping windows of the \
run's train.seq_len T: window k reads tokens kT..kT+T-1 and is scored on the next token of each. The \
last window is shorter when N-1 is not a multiple of T, so every token except the first is scored \
exactly once; context restarts at each window and crosses document boundaries, as in training.

Loss = summed token losses / scored tokens; perplexity = exp(loss). Weights in fp32, on the GPU when \
there is one (--device)."""


@app.command("eval", help=EVAL_HELP)
def eval_cmd(
    run: RunRef,
    data: Annotated[list[str], typer.Option("--data", help="text files to evaluate on (.txt/.jsonl/.parquet)")],
    more: Annotated[Optional[list[str]], typer.Argument(help="more files (--data A B C)", show_default=False)] = None,
    step: Annotated[Optional[int], typer.Option(help="checkpoint step; default the newest")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    batch_size: Annotated[int, typer.Option(help="windows per forward pass")] = 8,
) -> None:
    import json

    from mltrain.infer.eval import eval_run, result_dict
    from mltrain.rundir import resolve_run

    r = eval_run(
        resolve_run(run), [*data, *(more or [])], step=step, device=device, batch_size=batch_size, console=err_console
    )
    if json_out:
        print(json.dumps(result_dict(r), indent=2))
        return
    console.print(
        f"{r.run} step {r.step} on {', '.join(r.files)}: {r.documents} documents, {r.scored_tokens:,} scored tokens "
        f"in {r.windows} windows of {r.seq_len}\n"
        f"loss {r.loss:.4f} nats/token, perplexity {r.perplexity:.3f}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


@app.command()
def sample(
    run: RunRef,
    prompt: Annotated[str, typer.Option(help="text the sample continues (may be empty)")] = "",
    step: Annotated[Optional[int], typer.Option(help="checkpoint step; default the newest")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="tokens to generate at most (EOS stops earlier)")] = 200,
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.8,
    top_k: Annotated[int, typer.Option(help="sample among the k most likely tokens; 0 = all")] = 0,
    top_p: Annotated[float, typer.Option(help="nucleus sampling mass; 1 = off")] = 1.0,
    seed: Annotated[int, typer.Option(help="same seed, same tokens")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
) -> None:
    """Continue --prompt with the run's model (KV cache; context capped at train.seq_len)."""
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


# --------------------------------------------------------------------------- launch


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(
    ctx: typer.Context,
    run_yaml: Annotated[
        Optional[Path], typer.Argument(help="run config YAML, e.g. configs/demo.yaml", show_default=False)
    ] = None,
    cluster: Annotated[Path, typer.Option(help="cluster spec YAML, e.g. configs/clusters/p5e-80.yaml")] = ...,
    nodes: Annotated[Optional[int], typer.Option(help="nodes for this job; default all of the cluster's")] = None,
    time: Annotated[
        Optional[str],
        typer.Option(
            help="time limit in any Slurm form: minutes (90), MM:SS, HH:MM:SS, D-HH[:MM[:SS]]; default the cluster's"
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the sbatch script, submit nothing")] = False,
    set_: SetOpt = None,
    script: Annotated[
        Optional[Path],
        typer.Option(help="your training script instead of RUN_YAML: submit --script train.py --cluster C -- ARGS"),
    ] = None,
) -> None:
    """Render the sbatch script into the run dir and submit it to Slurm (the built-in trainer or the run's script:)."""
    from mltrain.launch.slurm import generated_script_run, submit_run

    if script is None:
        import click

        unknown = [a for a in ctx.args if a.startswith("-") and a != "--"]
        if unknown:  # unknown options are let through for --script's ARGS; without --script they are typos
            raise click.NoSuchOption(unknown[0], ctx=ctx)
        if ctx.args:
            raise click.UsageError(f"unexpected extra argument(s): {' '.join(ctx.args)}", ctx=ctx)
        if run_yaml is None:
            raise typer.BadParameter("give one RUN_YAML (or --script train.py -- ARGS)")
        submit_run(run_yaml, cluster, overrides=set_ or [], nodes=nodes, time=time, dry_run=dry_run, console=console)
        return
    # with --script every argument after `--` is the script's (click hands the first one over as RUN_YAML)
    with generated_script_run(script, [*([str(run_yaml)] if run_yaml else []), *ctx.args]) as gen:
        submit_run(gen, cluster, overrides=set_ or [], nodes=nodes, time=time, dry_run=dry_run, console=console)


@app.command()
def status(
    runs: Annotated[Optional[list[str]], typer.Argument(help="run names or dirs; default all runs")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """State and progress of runs: step, loss, ETA, goodput, restarts, checkpoint, nodes, stragglers, why it stopped."""
    from mltrain.launch.status import show_status

    show_status(runs or None, console=console, json_out=json_out)


@app.command()
def logs(
    run: RunRef,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")] = False,
) -> None:
    """Print the run's newest log (local run or Slurm job; -f interleaves stdout and stderr by time)."""
    from mltrain.launch.logs import show_logs

    show_logs(run, follow_=follow, console=console)


@app.command()
def cancel(run: RunRef) -> None:
    """Cancel the run's Slurm job (no requeue)."""
    from mltrain.launch.slurm import cancel_run

    cancel_run(run, console=console)


# --------------------------------------------------------------------------- stop (run-dir lease)


@app.command()
def stop(run: RunRef) -> None:
    """Ask a running trainer to checkpoint at its next step boundary and exit 75; train again to resume."""
    from mltrain.launch.local import stop_run

    stop_run(run, console=console)


# --------------------------------------------------------------------------- plan / cluster


@app.command()
def plan(
    fleet_yaml: Annotated[Path, typer.Argument(help="fleet YAML, e.g. configs/fleets/seven-models.yaml")],
    json_out: Annotated[bool, typer.Option("--json", help="print the plan as JSON")] = False,
    yaml_out: Annotated[bool, typer.Option("--yaml", help="print the plan as YAML")] = False,
    set_: PlanSetOpt = None,
) -> None:
    """Nodes, days, node-hours and dollars for every model of a fleet, and the node split."""
    from mltrain.cluster.plan_cli import plan_command

    plan_command(fleet_yaml, json_out=json_out, yaml_out=yaml_out, console=console, overrides=set_ or [])


@fleet_app.command("submit")
def fleet_submit(
    fleet_yaml: Annotated[Path, typer.Argument(help="fleet YAML")],
    cluster: Annotated[Path, typer.Option(help="cluster spec YAML")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the scripts, submit nothing")] = False,
) -> None:
    """Submit one Slurm job per model of the fleet, each with its planned node count."""
    from mltrain.cluster.plan_cli import fleet_submit_command

    fleet_submit_command(fleet_yaml, cluster, dry_run=dry_run, console=console)


@cluster_app.command("render")
def cluster_render(
    cluster_yaml: Annotated[Path, typer.Argument(help="cluster spec YAML")],
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="write here instead of stdout")] = None,
) -> None:
    """Render a ParallelCluster 3 config from a cluster spec."""
    from mltrain.cluster.pcluster import render_command

    render_command(cluster_yaml, out, console=console)


@cluster_app.command("validate")
def cluster_validate(
    pcluster_yaml: Annotated[Path, typer.Argument(help="ParallelCluster 3 config YAML")],
) -> None:
    """Validate a ParallelCluster config offline: the official schema plus semantic checks."""
    from mltrain.cluster.pcluster import validate_command

    raise typer.Exit(validate_command(pcluster_yaml, console=console))


# --------------------------------------------------------------------------- k8s (EKS: Kubeflow PyTorchJob / TrainJob)

k8s_app = typer.Typer(help="Run on Kubernetes/EKS: Kubeflow PyTorchJob or Trainer v2 TrainJob.", no_args_is_help=True)
app.add_typer(k8s_app, name="k8s")
EksOpt = Annotated[
    Path, typer.Option("--cluster", help="EKS spec YAML (kind: eks), e.g. configs/clusters/eks-p5-2.yaml")
]
KindOpt = Annotated[str, typer.Option("--kind", help="pytorchjob (kubeflow.org/v1) or trainjob (Trainer v2)")]
K8sRun = Annotated[str, typer.Argument(help="run config YAML or run name")]


@k8s_app.command("render")
def k8s_render(
    run_yaml: RunYaml,
    cluster: EksOpt,
    kind: KindOpt = "pytorchjob",
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="write here instead of stdout")] = None,
    set_: SetOpt = None,
) -> None:
    """Render the run as a PyTorchJob, or a TrainJob with its TrainingRuntime."""
    from mltrain.launch.k8s.client import render_command

    _builtin_only(run_yaml, "mltrain k8s render", set_)
    render_command(run_yaml, cluster, kind, out, set_ or [], console=console)


@k8s_app.command("submit")
def k8s_submit(run_yaml: RunYaml, cluster: EksOpt, kind: KindOpt = "pytorchjob", set_: SetOpt = None) -> None:
    """Create the job in the cluster's namespace (kubeconfig or in-cluster credentials)."""
    from mltrain.launch.k8s.client import submit

    _builtin_only(run_yaml, "mltrain k8s submit", set_)
    submit(run_yaml, cluster, kind, set_ or [], console=console)


@k8s_app.command("status")
def k8s_status(run: K8sRun, cluster: EksOpt, kind: KindOpt = "pytorchjob") -> None:
    """Job state and pods from the API; step, loss and restarts from the run dir on the shared volume."""
    from mltrain.launch.k8s.client import status as k8s_status_

    k8s_status_(run, cluster, kind, console=console)


@k8s_app.command("logs")
def k8s_logs(
    run: K8sRun,
    cluster: EksOpt,
    kind: KindOpt = "pytorchjob",
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")] = False,
) -> None:
    """Print the rank-0 pod's log."""
    from mltrain.launch.k8s.client import logs as k8s_logs_

    k8s_logs_(run, cluster, kind, follow, console=console)


@k8s_app.command("cancel")
def k8s_cancel(run: K8sRun, cluster: EksOpt, kind: KindOpt = "pytorchjob") -> None:
    """Delete the job: pods get SIGTERM, the trainer checkpoints; no restart."""
    from mltrain.launch.k8s.client import cancel as k8s_cancel_

    k8s_cancel_(run, cluster, kind, console=console)


# --------------------------------------------------------------------------- end k8s
# --------------------------------------------------------------------------- cluster: AWS foundation + pcluster CLI
# (network template, preflight checks, create/update/delete/status through the real `pcluster`)

ClusterYaml = Annotated[Path, typer.Argument(help="cluster spec YAML, e.g. configs/clusters/p5e-80.yaml")]
ConfigOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--config", help="where to write the rendered config; default ./<name>.pcluster.yaml (not on --dry-run)"
    ),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="print the exact commands; call nothing, write nothing unless --config")
]


@cluster_app.command("network")
def cluster_network(
    cluster_yaml: ClusterYaml,
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="write here instead of stdout")] = None,
    stack: Annotated[
        Optional[str], typer.Option("--stack", help="print the aws: keys from this deployed stack's outputs instead")
    ] = None,
) -> None:
    """Render the CloudFormation template of the cluster's VPC, subnets, NAT, S3 endpoint, security groups."""
    from mltrain.cluster.network import network_command

    network_command(cluster_yaml, out, stack=stack, console=console)


@cluster_app.command("preflight")
def cluster_preflight(
    cluster_yaml: ClusterYaml,
    json_out: Annotated[bool, typer.Option("--json", help="print the checks as JSON")] = False,
) -> None:
    """Read-only AWS checks before creating: instance type, AZ, reservation, subnets, EFA rule, buckets, quota."""
    from mltrain.cluster.preflight import preflight_command

    raise typer.Exit(preflight_command(cluster_yaml, json_out=json_out, console=console))


def _cluster_action(
    action, cluster_yaml, config, dry_run, skip_preflight=False, wait=True, poll_s=30.0, timeout_min=120.0
):
    from mltrain.cluster.create import cluster_action

    cluster_action(
        action,
        cluster_yaml,
        config_path=config,
        dry_run=dry_run,
        preflight=not skip_preflight,
        wait=wait,
        poll_s=poll_s,
        timeout_min=timeout_min,
        console=console,
    )


SkipPreflightOpt = Annotated[bool, typer.Option("--skip-preflight", help="do not run the AWS checks first")]
WaitOpt = Annotated[bool, typer.Option("--wait/--no-wait", help="follow describe-cluster until done")]
PollOpt = Annotated[float, typer.Option("--poll-s", help="seconds between describe-cluster calls")]
TimeoutOpt = Annotated[float, typer.Option("--timeout-min", help="give up waiting after this many minutes")]


@cluster_app.command("create")
def cluster_create(
    cluster_yaml: ClusterYaml,
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
    skip_preflight: SkipPreflightOpt = False,
    wait: WaitOpt = True,
    poll_s: PollOpt = 30.0,
    timeout_min: TimeoutOpt = 120.0,
) -> None:
    """Render the config, run preflight, then `pcluster create-cluster` and follow it to CREATE_COMPLETE."""
    _cluster_action("create", cluster_yaml, config, dry_run, skip_preflight, wait, poll_s, timeout_min)


@cluster_app.command("update")
def cluster_update(
    cluster_yaml: ClusterYaml,
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
    skip_preflight: SkipPreflightOpt = False,
    wait: WaitOpt = True,
    poll_s: PollOpt = 30.0,
    timeout_min: TimeoutOpt = 120.0,
) -> None:
    """Render the config, run preflight, then `pcluster update-cluster` and follow it to UPDATE_COMPLETE."""
    _cluster_action("update", cluster_yaml, config, dry_run, skip_preflight, wait, poll_s, timeout_min)


@cluster_app.command("delete")
def cluster_delete(
    cluster_yaml: ClusterYaml,
    dry_run: DryRunOpt = False,
    wait: WaitOpt = True,
    poll_s: PollOpt = 30.0,
    timeout_min: TimeoutOpt = 120.0,
) -> None:
    """`pcluster delete-cluster` and follow it until the cluster is gone (FSx: aws.fsx.deletion_policy, Retain by default)."""
    _cluster_action("delete", cluster_yaml, None, dry_run, True, wait, poll_s, timeout_min)


@cluster_app.command("status")
def cluster_status(cluster_yaml: ClusterYaml, dry_run: DryRunOpt = False) -> None:
    """`pcluster describe-cluster`: status, stack, compute fleet, head node address, failures."""
    _cluster_action("status", cluster_yaml, None, dry_run)


# --------------------------------------------------------------------------- data on S3 (storage/)

EndpointOpt = Annotated[
    Optional[str], typer.Option("--endpoint-url", help="S3-compatible endpoint; default boto3's (AWS_ENDPOINT_URL)")
]
ProfileOpt = Annotated[Optional[str], typer.Option("--profile", help="AWS profile; default boto3's chain")]
RegionOpt = Annotated[Optional[str], typer.Option("--region", help="AWS region; default boto3's chain")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print a JSON summary on stdout (progress goes to stderr)")]
ConcurrencyOpt = Annotated[int, typer.Option("--concurrency", min=1, help="parallel requests")]
PartOpt = Annotated[int, typer.Option("--part-size-mib", min=5, help="multipart part size and threshold")]
ChecksumOpt = Annotated[str, typer.Option("--checksum", help="sha256 | crc64nvme | auto (crc64nvme with awscrt)")]


UnlistedOpt = Annotated[
    bool,
    typer.Option(
        "--unlisted",
        help="also download objects the manifest does not list (checked against S3's stored checksum, "
        "by size where it stores none); without it they are skipped and named",
    ),
]


def _transfer(
    src: str,
    dst: str,
    endpoint_url,
    profile,
    region,
    concurrency,
    part_mib,
    checksum,
    delete,
    yes,
    json_out,
    to_s3=None,
    unlisted=False,
):
    import json

    from mltrain.storage.client import S3Options
    from mltrain.storage.transfer import TransferSettings, sync
    from mltrain.storage.url import StorageError, is_s3

    if to_s3 is not None and (is_s3(dst) != to_s3 or is_s3(src) == to_s3):
        usage = "upload LOCAL s3://bucket/prefix" if to_s3 else "download s3://bucket/prefix LOCAL"
        raise StorageError(f"{src} -> {dst}: expected `mltrain data {usage}`")

    opts = S3Options(endpoint_url, profile, region, max_pool_connections=max(10, concurrency + 4))
    mib = part_mib << 20
    settings = TransferSettings(concurrency=concurrency, part_size=mib, threshold=mib, checksum=checksum)
    summary = sync(src, dst, opts, settings, delete=delete, yes=yes, console=err_console, unlisted=unlisted)
    if json_out:
        console.print(json.dumps(summary.as_dict()), highlight=False, markup=False, soft_wrap=True)
        return
    console.print(summary.line(), highlight=False, markup=False, soft_wrap=True)


@data_app.command("upload")
def data_upload(
    local: Annotated[str, typer.Argument(help="a file or directory")],
    dest: Annotated[str, typer.Argument(help="s3://bucket/prefix")],
    endpoint_url: EndpointOpt = None,
    profile: ProfileOpt = None,
    region: RegionOpt = None,
    concurrency: ConcurrencyOpt = 16,
    part_size_mib: PartOpt = 16,
    checksum: ChecksumOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Upload to S3 (parallel multipart, S3 checksums, manifest written last). A rerun sends only what is missing."""
    _transfer(
        local, dest, endpoint_url, profile, region, concurrency, part_size_mib, checksum, False, False, json_out, True
    )


@data_app.command("download")
def data_download(
    src: Annotated[str, typer.Argument(help="s3://bucket/prefix (or one object)")],
    local: Annotated[str, typer.Argument(help="local directory")],
    endpoint_url: EndpointOpt = None,
    profile: ProfileOpt = None,
    region: RegionOpt = None,
    concurrency: ConcurrencyOpt = 16,
    part_size_mib: PartOpt = 16,
    unlisted: UnlistedOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Download what the manifest lists; every file is hashed against it before it replaces anything."""
    _transfer(
        src,
        local,
        endpoint_url,
        profile,
        region,
        concurrency,
        part_size_mib,
        "auto",
        False,
        False,
        json_out,
        False,
        unlisted,
    )


@data_app.command("sync")
def data_sync(
    src: Annotated[str, typer.Argument(help="local dir or s3://bucket/prefix")],
    dst: Annotated[str, typer.Argument(help="s3://bucket/prefix or local dir")],
    delete: Annotated[
        bool, typer.Option("--delete", help="delete what the source does not have (needs --yes)")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="really delete what --delete lists")] = False,
    endpoint_url: EndpointOpt = None,
    profile: ProfileOpt = None,
    region: RegionOpt = None,
    concurrency: ConcurrencyOpt = 16,
    part_size_mib: PartOpt = 16,
    checksum: ChecksumOpt = "auto",
    unlisted: UnlistedOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Copy only changed files (size + checksum) in either direction; --delete lists, --yes deletes."""
    _transfer(
        src,
        dst,
        endpoint_url,
        profile,
        region,
        concurrency,
        part_size_mib,
        checksum,
        delete,
        yes,
        json_out,
        None,
        unlisted,
    )


@data_app.command("verify")
def data_verify(
    url: Annotated[str, typer.Argument(help="s3://bucket/prefix that `data upload` wrote")],
    deep: Annotated[bool, typer.Option("--deep", help="also download and sha256 every object")] = False,
    endpoint_url: EndpointOpt = None,
    profile: ProfileOpt = None,
    region: RegionOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Check every object against the manifest. Exit 1 naming every missing, extra or mismatched object."""
    import json

    from mltrain.storage.client import S3Options, make_client
    from mltrain.storage.url import parse_s3_url
    from mltrain.storage.verify import verify_prefix

    s3url = parse_s3_url(url)
    client = make_client(S3Options(endpoint_url, profile, region), validate_responses=False)  # --deep hashes itself
    rep = verify_prefix(client, s3url, deep=deep, console=err_console)
    if json_out:
        console.print(json.dumps(rep.as_dict()), highlight=False, markup=False, soft_wrap=True)
    else:
        for rel in rep.missing:
            console.print(f"MISSING   {rel}", highlight=False, markup=False)
        for rel in rep.extra:
            console.print(f"EXTRA     {rel}", highlight=False, markup=False)
        for line in rep.mismatched:
            console.print(f"MISMATCH  {line}", highlight=False, markup=False)
        what = "downloaded and hashed" if deep else "size + S3 checksum"
        verdict = (
            "OK"
            if rep.ok
            else f"FAILED: {len(rep.missing)} missing, {len(rep.extra)} extra, {len(rep.mismatched)} mismatched"
        )
        console.print(
            f"{url}: {rep.checked} objects, {rep.bytes / 2**20:.1f} MiB checked ({what}): {verdict}",
            highlight=False,
            markup=False,
        )
    raise typer.Exit(0 if rep.ok else 1)


storage_app = typer.Typer(help="Create and configure the S3 buckets a cluster uses.", no_args_is_help=True)
app.add_typer(storage_app, name="storage")


@storage_app.command("init")
def storage_init(
    cluster_yaml: Annotated[Path, typer.Argument(help="cluster spec YAML")],
    abort_multipart_days: Annotated[
        int, typer.Option(min=1, help="abort incomplete multipart uploads after N days")
    ] = 7,
    endpoint_url: EndpointOpt = None,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create the cluster's data and checkpoint buckets if missing; versioning and lifecycle rules (idempotent)."""
    import json

    from mltrain.storage.buckets import init_storage

    actions = init_storage(cluster_yaml, endpoint_url=endpoint_url, profile=profile, abort_days=abort_multipart_days)
    if json_out:
        console.print(json.dumps(actions), highlight=False, markup=False, soft_wrap=True)
    else:
        for a in actions:
            console.print(
                f"s3://{a['bucket']} ({a['role']}, {a['region']}): {'; '.join(a['actions'])}",
                highlight=False,
                markup=False,
            )


# --------------------------------------------------------------------------- end of data on S3
# --------------------------------------------------------------------------- operate (doctor, health, bench)
# Pre-flight and node checks (src/mltrain/ops/). Kept in one block so other commands' diffs stay apart.

bench_app = typer.Typer(help="Measure the interconnect and devices.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@app.command()
def doctor(
    config: Annotated[Optional[Path], typer.Option(help="run config YAML (base_dir, S3 sources)")] = None,
    bucket: Annotated[Optional[str], typer.Option(help="s3://bucket to check with the configured credentials")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Pre-flight: versions, GPUs, EFA, run dir, S3, Slurm/Pyxis, harmful env. Exit 1 on any FAIL."""
    from mltrain.ops.doctor import doctor_command

    raise typer.Exit(doctor_command(config, bucket, json_out, console))


@bench_app.command("collectives")
def bench_collectives(
    nproc: Annotated[
        Optional[int], typer.Option(help="ranks on this machine, at least 2 (torchrun is started); default one per GPU")
    ] = None,
    ops: Annotated[str, typer.Option(help="comma-separated: all_reduce,all_gather,reduce_scatter")] = (
        "all_reduce,all_gather,reduce_scatter"
    ),
    max_bytes: Annotated[
        Optional[str], typer.Option(help="largest message, e.g. 64M, 4G; default 4G GPU, 8M CPU")
    ] = None,
    iters: Annotated[Optional[int], typer.Option(help="timed calls per size; default 20 GPU, 3 CPU")] = None,
    warmup: Annotated[Optional[int], typer.Option(help="untimed calls per size; default 5 GPU, 1 CPU")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    instance_type: Annotated[Optional[str], typer.Option(help="reference to compare with, e.g. p5.48xlarge")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    out: Annotated[Optional[Path], typer.Option(help="also write the JSON result here")] = None,
) -> None:
    """All-reduce / all-gather / reduce-scatter time, algbw and busbw (nccl-tests' definitions), 1 MB doubling."""
    from mltrain.ops.collectives import collectives_command

    raise typer.Exit(
        collectives_command(
            nproc=nproc,
            ops=ops,
            max_bytes=max_bytes,
            iters=iters,
            warmup=warmup,
            device=device,
            instance_type=instance_type,
            json_out=json_out,
            out=out,
            console=console,
        )
    )


@app.command()
def health(
    burn_in_s: Annotated[float, typer.Option(help="seconds of matmul burn-in on every GPU; 0 skips it")] = 10.0,
    tolerance: Annotated[float, typer.Option(help="fail a GPU this fraction below the node median")] = 0.10,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    slurm_prolog: Annotated[
        bool, typer.Option("--slurm-prolog", help="one line per node (prolog / HealthCheckProgram)")
    ] = False,
    record: Annotated[Optional[str], typer.Option(help="append the verdict as a JSON line to this file")] = None,
    drain: Annotated[bool, typer.Option("--drain", help="on FAIL, drain this node with scontrol")] = False,
    failed_hosts: Annotated[
        Optional[str], typer.Option(help="print the FAIL hosts of a --record file, comma-separated")
    ] = None,
    job: Annotated[Optional[str], typer.Option(help="with --failed-hosts: only this Slurm job's records")] = None,
    attempt: Annotated[
        Optional[int], typer.Option(help="with --failed-hosts: only this attempt's records (SLURM_RESTART_COUNT)")
    ] = None,
    expect_hosts: Annotated[
        Optional[str], typer.Option(help="with --failed-hosts: comma-separated hosts; one without a record fails")
    ] = None,
) -> None:
    """GPU health through NVML (ECC, remapped rows, XIDs, throttling) and a burn-in vs the node median. Exit 1 on FAIL."""
    if failed_hosts is not None:
        from mltrain.ops.health import failed_hosts as read_failed

        expected = [h for h in (expect_hosts or "").split(",") if h]
        print(",".join(read_failed(failed_hosts, job, attempt, expected)))
        raise typer.Exit(0)
    from mltrain.ops.health import health_command

    raise typer.Exit(
        health_command(
            burn_in_s=burn_in_s,
            tolerance=tolerance,
            json_out=json_out,
            slurm_prolog=slurm_prolog,
            record=record,
            drain=drain,
            console=console,
        )
    )


def main() -> None:
    """Entry point: user errors become one line and an exit code, never a traceback."""
    if next((a for a in sys.argv[1:] if not a.startswith("-")), None) == "train":
        from mltrain.train.host_alloc import reexec_for_hugepages

        reexec_for_hugepages(sys.argv[1:])  # glibc reads its tunables only at process start
    try:
        rc = app(standalone_mode=False)  # click returns Exit codes instead of raising in this mode
        sys.exit(rc if isinstance(rc, int) else 0)
    except MltrainError as e:
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as e:  # usage errors (typer's own click copy or click) arrive here
        if type(e).__name__ == "Abort":
            sys.exit(1)
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
