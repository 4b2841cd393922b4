"""Every flow compiles to an Argo Workflows template and to an AWS Step Functions state machine,
offline, with the shipped AWS profile (configs/metaflow/config_aws.json) and the deploy options
of docs/deploy.md; the GPU steps ask Kubernetes and AWS Batch for what the flow declares.

The S3 datastore, Step Functions and Batch are a real moto_server on 127.0.0.1: `create
--only-json` uploads the code package to S3, looks up an earlier deployment in Step Functions
and registers the Batch job definitions, so those are checked too. Nothing leaves the machine.

`create` stores a production token per flow in METAFLOW_HOME (`step-functions create` even with
--only-json), so every compile runs with a copy of the profile in a temporary METAFLOW_HOME of its
own: nothing is written into the checkout, and parallel compiles never share a token file.
"""

from __future__ import annotations

import ast
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import yaml

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.integration]
PROFILE = REPO / "configs" / "metaflow" / "config_aws.json"
FLOWS = [
    "train_classifier.py",
    "monitor_drift.py",
    "build_rag_index.py",
    "evaluate_rag.py",
    "finetune_llm.py",
]
MISSING = [f for f in FLOWS if not (REPO / "flows" / f).is_file()]
if MISSING:  # a renamed or removed flow fails here, it is never skipped
    raise FileNotFoundError(f"flows/{MISSING[0]} does not exist: FLOWS names every flow of flows/")
# the deploy options of docs/deploy.md: the registry and the llmops home on a shared volume
VOLUME_ENV = {"BENTOML_HOME": "/llmops/bentoml", "LLMOPS_HOME": "/llmops"}
EFS = "fs-0123456789abcdef0"
WITH_ENV = ("--with", "environment:vars=" + json.dumps(VOLUME_ENV))
WITH_EFS = ("--with", f"batch:efs_volumes={EFS}:/llmops")
# the scheduling recipes of docs/deploy.md: (flow file, import, decorator line)
RECIPES = {
    "schedule": ("monitor_drift.py", "schedule", "@schedule(hourly=True)"),
    "trigger": ("train_classifier.py", "trigger",
                '@trigger(event={"name": "llmops.retrain", "parameters": {"data": "data"}})'),
    "trigger_on_finish": ("evaluate_rag.py", "trigger_on_finish",
                          '@trigger_on_finish(flow="BuildRagIndexFlow")'),
}  # fmt: skip


def profile() -> dict[str, str]:
    return json.loads(PROFILE.read_text())


@pytest.fixture(scope="module")
def aws(s3_server):
    """boto3 clients on the moto server, and the Batch queue of the profile created there (Metaflow
    looks the queue up, and reads its compute environment's platform, when it compiles for Batch)."""
    endpoint = s3_server["METAFLOW_S3_ENDPOINT_URL"]
    options = {"endpoint_url": endpoint, "region_name": "us-east-1", "aws_access_key_id": "testing",
               "aws_secret_access_key": "testing"}  # fmt: skip
    iam, ec2, batch = (boto3.client(name, **options) for name in ("iam", "ec2", "batch"))
    service_role = iam.create_role(RoleName="llmops-batch-service", AssumeRolePolicyDocument="{}")["Role"][
        "Arn"
    ]
    iam.create_role(RoleName="llmops-batch-instance", AssumeRolePolicyDocument="{}")
    iam.create_instance_profile(InstanceProfileName="llmops-batch-instance")
    iam.add_role_to_instance_profile(
        InstanceProfileName="llmops-batch-instance", RoleName="llmops-batch-instance"
    )
    instance_profile = iam.get_instance_profile(InstanceProfileName="llmops-batch-instance")
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.0.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="llmops-batch", Description="llmops", VpcId=vpc)["GroupId"]
    compute = batch.create_compute_environment(
        computeEnvironmentName="llmops-gpu",
        type="MANAGED",
        serviceRole=service_role,
        computeResources={"type": "EC2", "minvCpus": 0, "maxvCpus": 64, "instanceTypes": ["g4dn.xlarge"],
                          "subnets": [subnet], "securityGroupIds": [group],
                          "instanceRole": instance_profile["InstanceProfile"]["Arn"]},
    )  # fmt: skip
    queue = profile()["METAFLOW_BATCH_JOB_QUEUE"].rsplit("/", 1)[1]
    order = [{"order": 1, "computeEnvironment": compute["computeEnvironmentArn"]}]
    batch.create_job_queue(jobQueueName=queue, state="ENABLED", priority=1, computeEnvironmentOrder=order)
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAFLOW_")}
    env |= s3_server | {
        "METAFLOW_PROFILE": "aws",  # METAFLOW_HOME: a copy of the profile per compile, see `compiled`
        "METAFLOW_DEFAULT_METADATA": "local",  # the profile's metadata service is a placeholder
        "METAFLOW_USER": "llmops",
        "AWS_ENDPOINT_URL_SFN": endpoint,
        "AWS_ENDPOINT_URL_BATCH": endpoint,
    }
    return {"env": env, "s3": boto3.client("s3", **options), "batch": batch}


def compile_flow(env: dict[str, str], path: Path, engine: str, home: Path) -> subprocess.CompletedProcess:
    """`create --only-json` with METAFLOW_HOME at `home`, which holds a copy of the profile."""
    options = (*WITH_ENV, *WITH_EFS) if engine == "step-functions" else WITH_ENV
    return subprocess.run(
        [sys.executable, str(path), "--no-pylint", *options, engine, "create", "--only-json"],
        cwd=REPO, env=env | {"METAFLOW_HOME": str(home)}, capture_output=True, text=True, timeout=240,
    )  # fmt: skip


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """{file name: (size, mtime_ns)} of a folder."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def with_recipe(flow: str, name: str, decorator: str, folder: Path) -> Path:
    """The flow file with one flow decorator added, as docs/deploy.md tells a user to do."""
    flow_class = FLOW_CLASSES[flow]
    source = (REPO / "flows" / flow).read_text()
    header = f"\nclass {flow_class}(FlowSpec):"
    assert header in source, f"flows/{flow}: no line 'class {flow_class}(FlowSpec):'"
    source = source.replace(
        "\nfrom metaflow import", f"\nfrom metaflow import {name}\nfrom metaflow import", 1
    )
    source = source.replace(header, f"\n{decorator}{header}")
    target = folder / flow
    target.write_text(source)
    return target


@dataclass
class Compiled:
    results: dict[tuple[str, str], subprocess.CompletedProcess]  # {(flow or recipe, engine): create}
    homes: dict[tuple[str, str], Path]  # the METAFLOW_HOME each compile ran with
    checkout: tuple[dict, dict]  # snapshot() of configs/metaflow before and after the compiles


@pytest.fixture(scope="module")
def compiled(aws, tmp_path_factory) -> Compiled:
    """Every flow for both engines and the recipes for Argo, in parallel, each with its own METAFLOW_HOME."""
    jobs = {
        (flow, engine): REPO / "flows" / flow
        for flow in FLOWS
        for engine in ("argo-workflows", "step-functions")
    }
    for recipe, (flow, name, decorator) in RECIPES.items():
        jobs[(recipe, "argo-workflows")] = with_recipe(flow, name, decorator, tmp_path_factory.mktemp(recipe))
    homes = {}
    for key in jobs:
        homes[key] = tmp_path_factory.mktemp("metaflow-home")
        shutil.copy(PROFILE, homes[key] / PROFILE.name)
    before = snapshot(PROFILE.parent)
    with ThreadPoolExecutor(4) as pool:
        done = pool.map(lambda key: compile_flow(aws["env"], jobs[key], key[1], homes[key]), jobs)
        results = dict(zip(jobs, done, strict=True))
    return Compiled(results, homes, (before, snapshot(PROFILE.parent)))


def document(compiled: Compiled, key) -> dict:
    result = compiled.results[key]
    assert result.returncode == 0, f"{key}: {result.stderr[-3000:]}"
    return json.loads(result.stdout)


# ---- what the flow files declare --------------------------------------------------------------


def flow_class(flow: str) -> ast.ClassDef:
    tree = ast.parse((REPO / "flows" / flow).read_text())
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and any(
        isinstance(b, ast.Name) and b.id == "FlowSpec" for b in n.bases))  # fmt: skip


FLOW_CLASSES = {flow: flow_class(flow).name for flow in FLOWS}


def decorator_name(node: ast.expr) -> str:
    return (node.func if isinstance(node, ast.Call) else node).id


def steps(flow: str) -> list[str]:
    return [
        item.name
        for item in flow_class(flow).body
        if isinstance(item, ast.FunctionDef) and any(decorator_name(d) == "step" for d in item.decorator_list)
    ]


def declared_resources(flow: str) -> dict[str, dict[str, float]]:
    """{step: {cpu, gpu, memory}} from each @resources(...), with config_expr("name.a.b") read from
    the default file of the flow's Config("name", default=...)."""
    cls = flow_class(flow)
    configs = {}
    for item in cls.body:
        if (
            isinstance(item, ast.Assign)
            and isinstance(item.value, ast.Call)
            and decorator_name(item.value) == "Config"
        ):
            default = next(k.value.value for k in item.value.keywords if k.arg == "default")
            configs[item.value.args[0].value] = yaml.safe_load((REPO / default).read_text())

    def value(node: ast.expr) -> float:
        if isinstance(node, ast.Constant):
            return float(node.value)
        name, *path = node.args[0].value.split(".")  # config_expr("training.resources.gpu")
        found = configs[name]
        for key in path:
            found = found[key]
        return float(found)

    declared = {}
    for item in cls.body:
        for deco in getattr(item, "decorator_list", []):
            if isinstance(deco, ast.Call) and decorator_name(deco) == "resources":
                declared[item.name] = {k.arg: value(k.value) for k in deco.keywords}
    return declared


def pod_name(step: str) -> str:
    """Argo template names have no underscores."""
    return step.replace("_", "-")


def megabytes(quantity: str) -> float:
    assert quantity.endswith("M"), quantity
    return float(quantity[:-1])


def states(machine: dict) -> dict[str, dict]:
    """Every state of a state machine, those inside Map iterators (foreach bodies) included."""
    found = {}
    for name, state in machine["States"].items():
        found[name] = state
        for nested in ("Iterator", "ItemProcessor"):
            if nested in state:
                found |= states(state[nested])
    return found


# ---- Argo Workflows ------------------------------------------------------------------------------


@pytest.mark.parametrize("flow", FLOWS)
def test_every_flow_compiles_to_an_argo_workflow_template_with_the_profile(compiled, aws, flow):
    template = document(compiled, (flow, "argo-workflows"))
    settings = profile()
    assert template["kind"] == "WorkflowTemplate"
    assert template["metadata"]["namespace"] == settings["METAFLOW_KUBERNETES_NAMESPACE"]
    containers = {t["name"]: t for t in template["spec"]["templates"] if "container" in t}
    assert {pod_name(s) for s in steps(flow)} <= set(containers), sorted(containers)
    code_urls = set()
    for step in steps(flow):
        pod = containers[pod_name(step)]
        env = {e["name"]: e.get("value") for e in pod["container"]["env"]}
        assert pod["serviceAccountName"] == settings["METAFLOW_KUBERNETES_SERVICE_ACCOUNT"]
        assert pod["container"]["image"] == settings["METAFLOW_DEFAULT_CONTAINER_IMAGE"]
        assert env["METAFLOW_DEFAULT_DATASTORE"] == "s3"
        assert {k: env.get(k) for k in VOLUME_ENV} == VOLUME_ENV
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        mounts = {m["name"]: m["mountPath"] for m in pod["container"]["volumeMounts"]}
        assert claims == {"llmops-home": "llmops-home"} and mounts["llmops-home"] == "/llmops"
        code_urls.add(env["METAFLOW_CODE_URL"])
    # one code package for the whole flow, uploaded to the bucket, holding the flow and the extension
    (url,) = code_urls
    bucket, key = url.removeprefix("s3://").split("/", 1)
    assert key.startswith(f"metaflow/{FLOW_CLASSES[flow]}/data/")
    package = aws["s3"].get_object(Bucket=bucket, Key=key)["Body"].read()
    names = tarfile.open(fileobj=io.BytesIO(package)).getnames()
    assert flow in names
    assert ".mf_code/metaflow_extensions/llmops/plugins/gate_decorator.py" in names
    # the llmops library and the shipped data travel too (@package_sources): remote tasks import
    # the deployed code and read the default inputs at the paths a laptop run uses
    assert {"llmops/gates.py", "llmops/llm/finetune.py", "datasets/llmops_instructions.jsonl",
            "evals/rag_golden.yaml", "prompts/rag_answer.yaml", "docs/rag.md"} <= set(names)  # fmt: skip
    assert not [n for n in names if n.endswith(".pyc")]


@pytest.mark.parametrize("flow", [f for f in FLOWS if declared_resources(f)])
def test_argo_pods_ask_for_the_resources_each_step_declares(compiled, flow):
    template = document(compiled, (flow, "argo-workflows"))
    pods = {t["name"]: t["container"]["resources"] for t in template["spec"]["templates"] if "container" in t}
    declared = declared_resources(flow)
    for step in steps(flow):
        asked = pods[pod_name(step)]
        want = declared.get(step)
        if want is None:
            assert "nvidia.com/gpu" not in (asked["limits"] or {}), (
                f"{step} asks for a GPU it does not declare"
            )
            continue
        assert float(asked["requests"]["cpu"]) == want.get("cpu", 1), step
        assert megabytes(asked["requests"]["memory"]) == want.get("memory", 4096), step
        if want.get("gpu"):
            assert float(asked["limits"]["nvidia.com/gpu"]) == want["gpu"], step  # GPUs go in limits
        else:
            assert "nvidia.com/gpu" not in (asked["limits"] or {}), step


def test_the_finetune_gpu_steps_ask_kubernetes_for_the_gpu_and_memory_of_the_training_config(compiled):
    wanted = yaml.safe_load((REPO / "configs" / "finetune.yaml").read_text())["resources"]
    template = document(compiled, ("finetune_llm.py", "argo-workflows"))
    pods = {t["name"]: t["container"]["resources"] for t in template["spec"]["templates"] if "container" in t}
    for step in ("train", "evaluate"):
        assert float(pods[step]["limits"]["nvidia.com/gpu"]) == wanted["gpu"]
        assert megabytes(pods[step]["requests"]["memory"]) == wanted["memory"]
        assert float(pods[step]["requests"]["cpu"]) == wanted["cpu"]
    assert not any("nvidia.com/gpu" in (pods[s]["limits"] or {}) for s in ("start", "promote", "end"))


def test_the_scheduling_recipes_of_the_deploy_guide_compile(compiled):
    annotations = {recipe: document(compiled, (recipe, "argo-workflows"))["metadata"]["annotations"]
                   for recipe in RECIPES}  # fmt: skip
    assert json.loads(annotations["schedule"]["metaflow/cron"])["schedule"] == "0 * * * ?"  # hourly
    assert json.loads(annotations["trigger"]["metaflow/triggers"]) == [
        {"name": "llmops.retrain", "type": "event"}
    ]
    (on_finish,) = json.loads(annotations["trigger_on_finish"]["metaflow/triggers"])
    assert on_finish["type"] == "run" and "BuildRagIndexFlow" in on_finish["name"], on_finish


# ---- AWS Step Functions + AWS Batch --------------------------------------------------------------


@pytest.mark.parametrize("flow", FLOWS)
def test_every_flow_compiles_to_a_step_functions_state_machine_on_the_profile_queue(compiled, aws, flow):
    machine = document(compiled, (flow, "step-functions"))
    settings = profile()
    tasks = {name: s for name, s in states(machine).items() if s.get("Type") == "Task"}
    assert set(steps(flow)) <= set(tasks), sorted(tasks)
    definitions = set()
    for step in steps(flow):
        submit = tasks[step]["Parameters"]
        assert tasks[step]["Resource"].endswith(":states:::batch:submitJob.sync")
        assert submit["JobQueue"] == settings["METAFLOW_BATCH_JOB_QUEUE"]
        env = {e["Name"]: e.get("Value") for e in submit["ContainerOverrides"]["Environment"]}
        assert {k: env.get(k) for k in VOLUME_ENV} == VOLUME_ENV
        definitions.add(submit["JobDefinition"])
    # the job definitions are registered in Batch: the profile's image and role, the EFS volume
    for found in aws["batch"].describe_job_definitions(jobDefinitions=sorted(definitions))["jobDefinitions"]:
        container = found["containerProperties"]
        assert container["image"] == settings["METAFLOW_DEFAULT_CONTAINER_IMAGE"]
        assert container["jobRoleArn"] == settings["METAFLOW_ECS_S3_ACCESS_IAM_ROLE"]
        assert container["mountPoints"] == [{"containerPath": "/llmops", "sourceVolume": f"efs_{EFS}"}]
        assert container["volumes"][0]["efsVolumeConfiguration"]["fileSystemId"] == EFS


@pytest.mark.parametrize("flow", [f for f in FLOWS if declared_resources(f)])
def test_batch_jobs_ask_for_the_resources_each_step_declares(compiled, flow):
    machine = document(compiled, (flow, "step-functions"))
    tasks = states(machine)
    declared = declared_resources(flow)
    for step in steps(flow):
        overrides = tasks[step]["Parameters"]["ContainerOverrides"]["ResourceRequirements"]
        asked = {r["Type"]: float(r["Value"]) for r in overrides}
        want = declared.get(step, {})
        assert asked["VCPU"] == want.get("cpu", 1), step
        assert asked["MEMORY"] == want.get("memory", 4096), step
        assert asked.get("GPU", 0) == want.get("gpu", 0), step


def test_the_finetune_gpu_steps_ask_batch_for_the_gpu_and_memory_of_the_training_config(compiled):
    wanted = yaml.safe_load((REPO / "configs" / "finetune.yaml").read_text())["resources"]
    tasks = states(document(compiled, ("finetune_llm.py", "step-functions")))
    for step in ("train", "evaluate"):
        overrides = tasks[step]["Parameters"]["ContainerOverrides"]["ResourceRequirements"]
        asked = {r["Type"]: float(r["Value"]) for r in overrides}
        assert asked == {"VCPU": wanted["cpu"], "GPU": wanted["gpu"], "MEMORY": wanted["memory"]}


def test_the_aws_profile_names_only_metaflow_settings_and_holds_no_secret():
    import metaflow.metaflow_config as config

    settings = profile()
    unknown = [k for k in settings if not hasattr(config, k.removeprefix("METAFLOW_"))]
    assert not unknown, f"not Metaflow settings: {unknown}"
    assert not [k for k in settings if any(w in k for w in ("SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY"))]


@pytest.mark.parametrize("flow", FLOWS)
def test_create_stores_its_production_token_in_metaflow_home_and_never_in_the_checkout(compiled, flow):
    """The reason docs/deploy.md has users copy the profile rather than point METAFLOW_HOME at the
    repository: `create` writes `<METAFLOW_HOME>/<flow name, lowercased>` with the production token
    (Argo's `create --only-json` uses a placeholder token and stores none; Step Functions' stores it)."""
    key = (flow, "step-functions")
    document(compiled, key)  # the compile succeeded
    home = compiled.homes[key]
    token_file = home / FLOW_CLASSES[flow].lower()
    assert token_file.is_file(), f"{key}: no token file in {home}: {sorted(os.listdir(home))}"
    assert json.loads(token_file.read_text())["production_token"].startswith(FLOW_CLASSES[flow].lower())
    before, after = compiled.checkout
    assert after == before, f"the compiles wrote into {PROFILE.parent}: {sorted(set(after) ^ set(before))}"
