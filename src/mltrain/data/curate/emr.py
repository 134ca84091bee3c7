"""Sample EMR configs for running `curate` on AWS Graviton: an `aws emr create-cluster` command (m8g
primary, r8g core nodes, a bootstrap that installs mltrain), and an EMR Serverless application +
job run (ARM64). Placeholders in CAPITALS are the account's own (bucket, role ARN, subnet).

The job is the packaged entry point (mltrain/data/curate/job.py) run by spark-submit with the run
config uploaded beside it; on EMR the work dir is on HDFS (step outputs written by Spark, resumable
within the cluster's life) and the corpus and output are s3:// (read and written with boto3).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from mltrain.errors import DataError
from mltrain.fsutil import atomic_write

EMR_RELEASE = "emr-7.9.0"  # Spark 3.5 on Amazon Linux 2023, Graviton (m8g/r8g/c8g) supported
JOB_FILE = "curate_job.py"
BOOTSTRAP_FILE = "bootstrap-mltrain.sh"
# what the curate job needs on the nodes (EMR ships Spark/pyspark itself; torch is not needed there)
NODE_PACKAGES = (
    "pydantic>=2.6",
    "PyYAML>=6",
    "rich>=13",
    "typer>=0.12",
    "xxhash>=3.4",
    "numpy>=1.26",
    "pyarrow>=14",
    "boto3>=1.34",
    "tokenizers>=0.19",
)


@dataclass(frozen=True)
class EmrPlan:
    s3_prefix: str = "s3://YOUR-BUCKET/mltrain"
    core_nodes: int = 4
    core_type: str = "r8g.4xlarge"  # 16 vCPU, 128 GiB: shuffles of MinHash buckets want memory
    primary_type: str = "m8g.xlarge"
    release: str = EMR_RELEASE
    wheel: str = "mltrain-0.1.0-py3-none-any.whl"


def bootstrap_script(plan: EmrPlan) -> str:
    pkgs = " ".join(shlex.quote(p) for p in NODE_PACKAGES)
    return f"""#!/bin/bash
# EMR bootstrap action: mltrain (without its training dependencies) on every node's python3.
set -euo pipefail
aws s3 cp {plan.s3_prefix}/{plan.wheel} /tmp/{plan.wheel}
sudo python3 -m pip install --quiet {pkgs}
sudo python3 -m pip install --quiet --no-deps /tmp/{plan.wheel}
"""


def create_cluster_command(plan: EmrPlan, config_name: str) -> str:
    step_args = ",".join(
        [
            "spark-submit", "--deploy-mode", "client",
            "--conf", "spark.executorEnv.PYSPARK_PYTHON=python3",
            "--conf", "spark.sql.shuffle.partitions=" + str(max(8, plan.core_nodes * 16 * 2)),
            f"{plan.s3_prefix}/{JOB_FILE}", f"{plan.s3_prefix}/{config_name}",
        ]
    )  # fmt: skip
    groups = (
        f"InstanceGroupType=MASTER,InstanceCount=1,InstanceType={plan.primary_type} "
        f"InstanceGroupType=CORE,InstanceCount={plan.core_nodes},InstanceType={plan.core_type}"
    )
    lines = [
        "aws emr create-cluster",
        "--name mltrain-curate",
        f"--release-label {plan.release}",
        "--applications Name=Spark Name=Hadoop",
        f"--instance-groups {groups}",
        "--ec2-attributes SubnetId=YOUR-SUBNET-ID",
        "--use-default-roles",
        f"--log-uri {plan.s3_prefix}/emr-logs/",
        f"--bootstrap-actions Path={plan.s3_prefix}/{BOOTSTRAP_FILE},Name=install-mltrain",
        f"--steps Type=CUSTOM_JAR,Name=mltrain-curate,ActionOnFailure=TERMINATE_CLUSTER,Jar=command-runner.jar,"
        f"Args=[{step_args}]",
        "--auto-terminate",
    ]
    return " \\\n  ".join(lines) + "\n"


def serverless_files(plan: EmrPlan, config_name: str) -> tuple[str, dict]:
    """(create-application command, start-job-run JSON) for EMR Serverless on ARM64 (Graviton)."""
    app = (
        "aws emr-serverless create-application --type SPARK --name mltrain-curate "
        f"--release-label {plan.release} --architecture ARM64\n"
    )
    job = {
        "applicationId": "YOUR-APPLICATION-ID",
        "executionRoleArn": "arn:aws:iam::YOUR-ACCOUNT:role/YOUR-EMR-SERVERLESS-JOB-ROLE",
        "name": "mltrain-curate",
        "jobDriver": {
            "sparkSubmit": {
                "entryPoint": f"{plan.s3_prefix}/{JOB_FILE}",
                "entryPointArguments": [f"{plan.s3_prefix}/{config_name}"],
                "sparkSubmitParameters": " ".join(
                    [
                        f"--conf spark.archives={plan.s3_prefix}/mltrain-venv.tar.gz#environment",
                        "--conf spark.emr-serverless.driverEnv.PYSPARK_DRIVER_PYTHON=./environment/bin/python",
                        "--conf spark.emr-serverless.driverEnv.PYSPARK_PYTHON=./environment/bin/python",
                        "--conf spark.executorEnv.PYSPARK_PYTHON=./environment/bin/python",
                        "--conf spark.executor.cores=4 --conf spark.executor.memory=16g",
                    ]
                ),
            }
        },
        "configurationOverrides": {
            "monitoringConfiguration": {"s3MonitoringConfiguration": {"logUri": f"{plan.s3_prefix}/emr-logs/"}}
        },
    }
    return app, job


def render_emr(out_dir: Path, config_path: Path, plan: EmrPlan | None = None) -> list[Path]:
    """Write the EMR files into `out_dir`; return their paths."""
    from mltrain.data.curate import job

    plan = plan or EmrPlan()
    name = config_path.name
    app, job_run = serverless_files(plan, name)
    files = {
        "emr-create-cluster.sh": "#!/bin/bash\n# upload first: aws s3 cp "
        f"{JOB_FILE} {BOOTSTRAP_FILE} {name} dist/{plan.wheel} {plan.s3_prefix}/\n"
        + create_cluster_command(plan, name),
        BOOTSTRAP_FILE: bootstrap_script(plan),
        JOB_FILE: Path(job.__file__).read_text(),
        "emr-serverless-application.sh": "#!/bin/bash\n" + app,
        "emr-serverless-job.json": json.dumps(job_run, indent=2) + "\n",
        name: config_path.read_text(),
    }
    written = []
    try:
        for fname, text in files.items():
            mode = 0o755 if fname.endswith(".sh") else None
            written.append(atomic_write(out_dir / fname, text, mode=mode))
    except OSError as e:
        raise DataError(f"--render-emr {out_dir}: cannot write: {e.strerror or e}") from None
    return written
