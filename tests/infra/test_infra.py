"""infra/ and prefect.yaml parse-checked (Docker and Kubernetes are not available here).

Each file is loaded as its tool would load it (YAML documents, Dockerfile instructions,
bash syntax), and what ties the files together is checked: image names, the Spark master
URL, the rendezvous endpoint against the Service and pod names, the torchrun arguments
against torchrun's own parser, the deployment's entrypoint and parameters against the flow.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from torch.distributed.run import get_args_parser

import embedpipe
from embedpipe.corpus.registry import STAGES
from embedpipe.corpus.spark.submit import JOB_FILE
from embedpipe.train.launch import TORCHRUN_ENV

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
IMAGE = "embedpipe:0.1"


def torchrun_args(text: str, values: dict[str, str]) -> object:
    """torchrun's parsed arguments from a shell command running `-m torch.distributed.run`,
    its shell variables replaced by `values` (as the shell would on one node)."""
    text = re.sub(r'"\$\{@:\d+\}"', "", text)
    text = re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], text)
    words = shlex.split(text)
    start = words.index("torch.distributed.run") + 1
    return get_args_parser().parse_args(words[start:])


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        current += stripped.removesuffix("\\").strip() + " "
        if not stripped.endswith("\\"):
            logical.append(current.strip())
            current = ""
    assert not current, "a continuation line runs off the end"
    return [(s.split(None, 1)[0], s.split(None, 1)[1] if " " in s else "") for s in logical]


def test_dockerfile_has_java_the_package_and_a_torch_switch() -> None:
    instructions = dockerfile_instructions((INFRA / "Dockerfile").read_text())
    known = {"FROM", "ARG", "ENV", "RUN", "WORKDIR", "COPY", "USER", "ENTRYPOINT", "CMD",
             "LABEL", "EXPOSE"}  # fmt: skip
    assert {i for i, _ in instructions} <= known
    first = [i for i, _ in instructions if i != "ARG"][0]
    assert first == "FROM"  # only ARGs may come before FROM
    args = {a.split("=")[0]: a.split("=", 1)[1] for i, a in instructions if i == "ARG" and "=" in a}
    assert args["TORCH_VARIANT"] == "cpu" and args["TORCH_VERSION"] == "2.13.0"
    runs = " ".join(a for i, a in instructions if i == "RUN")
    assert "openjdk-17-jre-headless" in runs
    assert '"${TORCH_INDEX}/${TORCH_VARIANT}"' in runs and '"torch==${TORCH_VERSION}"' in runs
    # the package itself, with the pipeline extra, at the versions CI tests
    assert re.search(r"pip install [^&]*-c constraints\.txt '\.\[pipeline\]'", runs), runs
    copied = {src for i, a in instructions if i == "COPY" for src in a.split()[:-1]}
    assert {"pyproject.toml", "constraints.txt", "src", "flows", "prefect.yaml"} <= copied
    for path in copied:
        assert (ROOT / path).exists(), path  # the build context holds every source
    pinned = re.search(r"^torch==([\d.]+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert pinned and pinned.group(1) == args["TORCH_VERSION"]  # the image's torch meets it
    # The image names the package's job file where pip installs it, and checks it is there.
    env = dict(a.split("=", 1) for i, a in instructions if i == "ENV" and " " not in a)
    installed = JOB_FILE.relative_to(Path(embedpipe.__file__).resolve().parents[1])
    assert env["EMBEDPIPE_JOB_FILE"].endswith(f"/site-packages/{installed.as_posix()}")
    assert 'test -f "$EMBEDPIPE_JOB_FILE"' in runs
    entry = next(a for i, a in instructions if i == "ENTRYPOINT")
    assert "spark-k8s-entrypoint.sh" in entry


@pytest.mark.parametrize(
    "script",
    ["spark-standalone.sh", "prefect-worker.sh", "spark-k8s-entrypoint.sh", "slurm/train.sbatch"],
)
def test_shell_scripts_parse(script: str) -> None:
    done = subprocess.run(["bash", "-n", str(INFRA / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_compose_runs_a_spark_cluster_and_prefect() -> None:
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {
        "spark-master", "spark-worker-1", "spark-worker-2", "prefect-server", "prefect-worker",
    }  # fmt: skip
    assert {s["image"] for s in services.values()} == {IMAGE}
    master = services["spark-master"]["command"]
    assert master[:2] == ["spark-class", "org.apache.spark.deploy.master.Master"]
    url = f"spark://spark-master:{master[master.index('--port') + 1]}"
    for name in ("spark-worker-1", "spark-worker-2"):
        command = services[name]["command"]
        assert command[1] == "org.apache.spark.deploy.worker.Worker" and command[-1] == url
    server = services["prefect-server"]["command"]
    port = server[server.index("--port") + 1]
    worker = services["prefect-worker"]
    assert worker["environment"]["PREFECT_API_URL"] == f"http://prefect-server:{port}/api"
    pool = worker["command"][worker["command"].index("--pool") + 1]
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    assert {d["work_pool"]["name"] for d in deployments} == {pool}
    compose_run = next(d for d in deployments if d["name"] == "nightly-compose")
    assert f"spark.master={url}" in compose_run["parameters"]["overrides"]
    assert compose["x-image"]["build"]["dockerfile"] == "infra/Dockerfile"


def load_flow():  # noqa: ANN201 - the flow object flows/pretrain.py re-exports
    spec = importlib.util.spec_from_file_location("flow_for_infra", ROOT / "flows/pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from embedpipe.flows.pretrain import pretrain_embeddings

    assert module.pretrain_embeddings is pretrain_embeddings  # the package's flow, re-exported
    return module.pretrain_embeddings


def test_prefect_yaml_deploys_the_flow_on_a_schedule() -> None:
    from prefect.client.schemas.schedules import CronSchedule

    project = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    step = project["pull"][0]["prefect.deployments.steps.set_working_directory"]
    assert step["directory"] == "{{ $EMBEDPIPE_HOME }}"
    flow = load_flow()
    for deployment in project["deployments"]:
        path, name = deployment["entrypoint"].split(":")
        assert (ROOT / path).is_file() and name == flow.fn.__name__
        for schedule in deployment["schedules"]:
            CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])  # valid cron
        # The deployment's parameters validate against the flow's signature and the config.
        parameters = flow.validate_parameters(deployment["parameters"])
        from embedpipe.orchestration import resolve_config

        config = resolve_config(**parameters)
        assert config.name == "wordnet-sample"
    compose = next(d for d in project["deployments"] if d["name"] == "nightly-compose")
    config = resolve_config(**flow.validate_parameters(compose["parameters"]))
    assert config.spark.submit and config.store == "/data/artefacts"


def documents(name: str) -> list[dict]:
    return list(yaml.safe_load_all((INFRA / "k8s" / name).read_text()))


def test_kubernetes_training_is_an_indexed_job_meeting_at_pod_zero() -> None:
    service, job = documents("training.yaml")
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert job["kind"] == "Job" and job["spec"]["completionMode"] == "Indexed"
    spec = job["spec"]
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    args = torchrun_args(container["args"][0], {"JOB_COMPLETION_INDEX": "1"})
    assert int(args.nnodes) == spec["completions"] == spec["parallelism"]
    assert args.rdzv_backend == "c10d" and args.max_restarts >= 1
    host, port = args.rdzv_endpoint.split(":")
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert int(port) == service["spec"]["ports"][0]["port"]
    assert "$JOB_COMPLETION_INDEX" in container["args"][0]  # each pod's node rank
    env = {e["name"]: e["value"] for e in container["env"]}
    assert (
        TORCHRUN_ENV["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"]
        == env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"]
    )
    assert args.module and args.training_script == "embedpipe.train"
    claim = pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim in {d["metadata"]["name"] for d in documents("base.yaml")}


def test_kubernetes_corpus_job_submits_every_stage_to_the_api_server() -> None:
    (job,) = documents("corpus-job.yaml")
    pod = job["spec"]["template"]["spec"]
    base = {(d["kind"], d["metadata"]["name"]) for d in documents("base.yaml")}
    assert ("ServiceAccount", pod["serviceAccountName"]) in base
    script = pod["containers"][0]["args"][0]
    stages = re.search(r"for stage in ([\w ]+); do", script).group(1).split()
    assert stages == list(STAGES)
    words = shlex.split(script.split("spark-submit", 1)[1].split("done")[0])
    # The image's job file (infra/Dockerfile sets the variable), the stage its first argument.
    assert words[words.index("$EMBEDPIPE_JOB_FILE") + 1] == "$stage"
    confs = dict(words[k + 1].split("=", 1) for k, w in enumerate(words) if w == "--conf")
    assert words[words.index("--master") + 1].startswith("k8s://")
    assert confs["spark.kubernetes.container.image"] == IMAGE
    assert confs["spark.kubernetes.authenticate.driver.serviceAccountName"] == "spark"
    assert confs["spark.kubernetes.namespace"] == job["metadata"]["namespace"]


def test_slurm_script_starts_one_torchrun_per_node() -> None:
    text = (INFRA / "slurm" / "train.sbatch").read_text()
    directives = dict(
        line.removeprefix("#SBATCH --").split("=", 1)
        for line in text.splitlines()
        if line.startswith("#SBATCH --")
    )
    assert directives["ntasks-per-node"] == "1" and int(directives["nodes"]) >= 2
    command = text.split("bash -c '", 1)[1].split("'", 1)[0].replace("\\\n", " ")
    values = {"0": "python", "1": "node-a", "2": "4", "3": "run.toml", "SLURM_NNODES": "2",
              "SLURM_NODEID": "1", "SLURM_JOB_ID": "7"}  # fmt: skip
    args = torchrun_args(command, values)
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 1, "4")
    assert args.rdzv_endpoint == "node-a:29500"
    assert "export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in text  # as launch.TORCHRUN_ENV
    assert args.rdzv_backend == "c10d" and args.max_restarts == 1
    assert args.training_script == "embedpipe.train"
