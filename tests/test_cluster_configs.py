"""The cluster configs in cluster/ are valid for the tools that consume them.

- Launcher YAMLs (cluster/aws-gpu.yaml, cluster/gcp-gpu.yaml): Ray's own schema
  (ray/autoscaler/ray-schema.json through prepare_config + validate_config, as `ray up` does),
  autoscaler v2's reading of the node types and its scheduler, and for AWS the EC2 RunInstances
  parameter shapes from botocore. All offline, no cloud credentials.
- KubeRay manifests (cluster/kuberay/): a hand-written SUBSET of the KubeRay v1 CRD schemas
  (tests/schemas/), with the embedded Kubernetes types checked against Kubernetes' own strict schema
  (kubernetes-validate), plus Ray's derivation of an autoscaling config from the RayCluster.
- Semantic checks: image tags and rayVersion follow the Ray pin in pyproject.toml, the head runs no
  model work, GPU groups scale from 0 and request GPUs through limits, the job's actor options fit
  the GPU capacity, the job API is closed (token auth, no public service), and no credentials.
- Broken copies (misspelled keys, wrong types) fail, which shows that the checks bite.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shlex
from functools import lru_cache
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
LAUNCHER_YAMLS = {"aws": CLUSTER / "aws-gpu.yaml", "gcp": CLUSTER / "gcp-gpu.yaml"}
K8S_DEFS_URI = "https://kubernetes.io/api/_definitions.json"
# Kubernetes version whose strict schemas check the pod templates (falls back to the newest the
# installed kubernetes-validate has if this one is not shipped any more).
K8S_VERSION = "1.31"
ENTRYPOINT_MODULE = "jobs.pseudo_label"
# The job's Ray options (jobs/pseudo_label.py): GPU share per actor, CPUs per actor (default 1),
# and the actor pool MIN:MAX that Ray Data autoscales within.
GPUS_OPT, CPUS_OPT, ACTORS_OPT = "--gpus-per-actor", "--cpus-per-actor", "--actors"
# What docs/running-at-scale.md promises as MAX of --actors MIN:MAX at --gpus-per-actor 0.5.
DOCUMENTED_MAX_ACTORS_AT_HALF_GPU = {"aws": 32, "gcp": 28, "kuberay": 16}
SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"(?<![A-Z0-9])(AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"),
    "AWS secret key assignment": re.compile(r"(?i)aws_secret_access_key\s*[:=]\s*\S"),
    "private key block": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "service-account key JSON": re.compile(r'"private_key(_id)?"\s*:'),
    "Google API key": re.compile(r"AIza[0-9A-Za-z_\-]{35}"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    "literal Ray token": re.compile(r"RAY_AUTH_TOKEN\s*=\s*[\"']?[A-Za-z0-9]{16,}"),
}
SECRET_ENV_NAME = re.compile(r"(?i)(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_KEY|ACCESS_KEY)")


# ---------------------------------------------------------------------------------------------
# helpers


def _pyproject() -> str:
    return (ROOT / "pyproject.toml").read_text()


def ray_pin() -> str:
    m = re.search(r'"ray(?:\[[^\]]*\])?==([0-9][0-9A-Za-z.]*)"', _pyproject())
    assert m, "pyproject.toml must pin ray exactly (ray[...]==X)"
    return m.group(1)


def _requires_python():
    from packaging.specifiers import SpecifierSet

    m = re.search(r'requires-python\s*=\s*"([^"]+)"', _pyproject())
    assert m, "pyproject.toml has no requires-python"
    return SpecifierSet(m.group(1))


def check_ray_image(image: str) -> str:
    """rayproject/ray:<pin>-py3XX-gpu with 3.XX allowed by requires-python; returns 'py3XX'."""
    m = re.fullmatch(r"rayproject/ray:(?P<ver>[^-]+)-(?P<py>py3\d+)-gpu", image)
    assert m, f"{image!r} is not a rayproject/ray:<version>-py3XX-gpu image"
    assert "ray-ml" not in image
    assert m["ver"] == ray_pin(), f"image {image} does not match the pin ray=={ray_pin()}"
    py = f"3.{m['py'][3:]}"
    assert _requires_python().contains(py), f"{image}: Python {py} is outside requires-python"
    return m["py"]


def load_launcher(name: str) -> dict:
    return yaml.safe_load(LAUNCHER_YAMLS[name].read_text())


def ray_launcher_validate(config: dict) -> dict:
    """What `ray up` does to a config before it talks to the cloud: fill in the provider
    defaults, merge commands, check Docker and node-type limits, then validate against
    ray/autoscaler/ray-schema.json. Raises on an invalid config."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def schedule_actors(autoscaling_config: dict, n_actors: int, gpus_per_actor: float, cpus_per_actor: float = 1.0,
                    unavailable=()):
    """Run autoscaler v2's scheduler on an empty cluster for n Ray Data GPU actors, each asking
    for {GPU: F, CPU: C} (the job's --gpus-per-actor / --cpus-per-actor, default 1). Returns
    ({node_type: count to launch}, number of actors left infeasible)."""
    from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig
    from ray.autoscaler.v2.scheduler import ResourceDemandScheduler, SchedulingRequest
    from ray.autoscaler.v2.utils import ResourceRequestUtil
    from ray.core.generated.autoscaler_pb2 import ResourceRequestByCount

    cfg = AutoscalingConfig(copy.deepcopy(autoscaling_config), skip_content_hash=True)
    avail = {t: 0.0 for t in unavailable}
    request = SchedulingRequest(
        disable_launch_config_check=True,
        node_type_configs=cfg.get_node_type_configs(),
        # No head instance is simulated, so cap the workers alone.
        max_num_nodes=cfg.get_max_num_worker_nodes(),
        resource_requests=[
            ResourceRequestByCount(
                request=ResourceRequestUtil.make({"CPU": cpus_per_actor, "GPU": gpus_per_actor}), count=n_actors
            )
        ],
        cloud_resource_availabilities=avail,
        recoverable_resource_availabilities=avail,
    )
    reply = ResourceDemandScheduler(None).schedule(request)
    launched: dict[str, int] = {}
    for launch in reply.to_launch:
        launched[launch.instance_type] = launched.get(launch.instance_type, 0) + launch.count
    return launched, len(reply.infeasible_resource_requests)


def kuberay_docs() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(KUBERAY.glob("*.y*ml")):
        docs += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def kuberay_doc(kind: str) -> dict:
    found = [d for _, d in kuberay_docs() if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in cluster/kuberay/, found {len(found)}"
    return found[0]


def cluster_specs() -> list[tuple[str, dict]]:
    """Every RayCluster spec: the RayCluster's own and the one embedded in the RayJob."""
    return [
        ("RayCluster", kuberay_doc("RayCluster")["spec"]),
        ("RayJob.rayClusterSpec", kuberay_doc("RayJob")["spec"]["rayClusterSpec"]),
    ]


def _k8s_definitions():
    """Kubernetes' strict JSON schema definitions (from kubernetes-validate), or None."""
    try:
        import kubernetes_validate.utils as kvu
    except ImportError:
        return None
    versions = kvu.all_versions()
    version = next((v for v in versions if kvu.major_minor(v) == K8S_VERSION), versions[-1])
    return kvu.schema_contents(f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version)


_K8S_DEFS = _k8s_definitions()
needs_k8s_schema = pytest.mark.skipif(
    _K8S_DEFS is None, reason="kubernetes-validate not installed (strict Kubernetes pod schema)"
)


def _crd_schemas() -> dict:
    return {
        kind: json.loads((SCHEMAS / f"{kind.lower()}.ray.io_v1.subset.json").read_text())
        for kind in ("RayCluster", "RayJob")
    }


@lru_cache(maxsize=None)
def crd_validator(kind: str) -> jsonschema.Draft202012Validator:
    from referencing import Registry, Resource

    schemas = _crd_schemas()
    k8s = _K8S_DEFS
    if k8s is None:
        # Without kubernetes-validate the embedded Kubernetes types are only checked to be objects.
        names = set()
        for s in schemas.values():
            names |= set(re.findall(re.escape(K8S_DEFS_URI) + r"#/\$defs/([\w.]+)", json.dumps(s)))
        k8s = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": K8S_DEFS_URI,
            "$defs": {n: {"type": "object"} for n in names},
        }
    registry = Registry().with_resources(
        [(K8S_DEFS_URI, Resource.from_contents(k8s))]
        + [(s["$id"], Resource.from_contents(s)) for s in schemas.values()]
    )
    return jsonschema.Draft202012Validator(schemas[kind], registry=registry)


def crd_errors(doc: dict) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in crd_validator(doc["kind"]).iter_errors(doc)
    ]


def ray_cr_autoscaling_config(spec: dict) -> dict:
    """Ray's own translation of a RayCluster into the autoscaler config (what the in-tree
    autoscaler reads at run time); it validates the result against ray-schema.json."""
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    cr = {"metadata": {"name": "vos-pseudolabel", "namespace": "default"}, "spec": copy.deepcopy(spec)}
    return _derive_autoscaling_config_from_ray_cr(cr)


def pod_templates(spec: dict) -> list[tuple[str, dict]]:
    out = [("head", spec["headGroupSpec"]["template"])]
    out += [(g["groupName"], g["template"]) for g in spec.get("workerGroupSpecs", [])]
    return out


def gpu_limit(container: dict) -> int:
    return int(str(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", "0")))


def parse_entrypoint(entrypoint: str) -> tuple[str, list[str], dict[str, str]]:
    argv = shlex.split(entrypoint)
    assert argv[:2] == ["python", "-m"], f"entrypoint must be `python -m <module> ...`: {entrypoint}"
    module, rest = argv[2], argv[3:]
    opts: dict[str, str] = {}
    i = 0
    while i < len(rest):
        assert rest[i].startswith("--"), f"unexpected positional {rest[i]!r} in {entrypoint}"
        if i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            opts[rest[i]] = rest[i + 1]
            i += 2
        else:
            opts[rest[i]] = ""
            i += 1
    return module, rest, opts


def actor_options(opts: dict[str, str]) -> tuple[float, float, int, int]:
    """(gpus per actor, cpus per actor, MIN, MAX) from the job options. On an autoscaling cluster
    the pool must be an explicit MIN:MAX: `--actors auto` sizes it from the GPUs present at start."""
    f = float(opts[GPUS_OPT])
    c = float(opts.get(CPUS_OPT, 1.0))
    m = re.fullmatch(r"(\d+):(\d+)", opts.get(ACTORS_OPT, ""))
    assert m, f"{ACTORS_OPT} must be MIN:MAX on an autoscaling cluster, got {opts.get(ACTORS_OPT)!r}"
    lo, hi = int(m[1]), int(m[2])
    assert 1 <= lo <= hi
    assert 0 < f <= 1 and (1 / f).is_integer(), f"{GPUS_OPT} should divide a GPU evenly"
    return f, c, lo, hi


def scale_section() -> str:
    """docs/running-at-scale.md, the page README.md links for running on clusters."""
    path = ROOT / "docs" / "running-at-scale.md"
    assert path.is_file(), "docs/running-at-scale.md is missing"
    text = path.read_text()
    assert text.startswith("# Running at scale\n"), "docs/running-at-scale.md lost its title"
    return text


def readme_commands() -> list[str]:
    """`python -m jobs.pseudo_label ...` command lines from docs/running-at-scale.md (continuations joined)."""
    text = scale_section().replace("\\\n", " ")
    return [
        line[line.index("python -m") :].strip()
        for line in text.splitlines()
        if f"python -m {ENTRYPOINT_MODULE}" in line
    ]


def check_module_and_options(module: str, args: list[str]) -> None:
    """The entrypoint names the real job module; once jobs/pseudo_label.py exists, its own
    argument parser must accept the options (names and types) the configs pass."""
    assert module == ENTRYPOINT_MODULE, f"entrypoint runs {module}, not {ENTRYPOINT_MODULE}"
    package, _, name = module.rpartition(".")
    pkg_dir = ROOT.joinpath(*package.split("."))
    assert (pkg_dir / "__init__.py").is_file(), f"{package} is not a package in the repository"
    source = pkg_dir / f"{name}.py"
    if not source.is_file():
        return
    import importlib

    job = importlib.import_module(module)
    if hasattr(job, "build_parser"):
        try:
            job.build_parser().parse_args(args)
        except SystemExit as e:  # argparse printed the reason to stderr
            pytest.fail(f"{source.relative_to(ROOT)} rejects the options {args}: exit {e.code}")
    else:
        text = source.read_text()
        missing = [a for a in args if a.startswith("--") and a not in text]
        assert not missing, f"{source.relative_to(ROOT)} does not define {missing}"


def scan_for_secrets(text: str) -> list[str]:
    return [name for name, pat in SECRET_PATTERNS.items() if pat.search(text)]


def _walk(node, path=()):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, path + (i,))


def plaintext_secret_env(doc: dict) -> list[str]:
    """Env vars with secret-looking names that carry a literal value instead of valueFrom."""
    bad = []
    for path, node in _walk(doc):
        if path and path[-1] == "env" and isinstance(node, list):
            for var in node:
                if SECRET_ENV_NAME.search(var.get("name", "")) and "value" in var:
                    bad.append("/".join(map(str, path)) + "/" + var["name"])
    return bad


# ---------------------------------------------------------------------------------------------
# version pins


def test_installed_ray_matches_pin():
    import ray

    assert ray.__version__ == ray_pin(), (
        f"installed ray {ray.__version__} != pyproject pin {ray_pin()}: the configs are checked "
        "against the installed Ray's schema"
    )


@pytest.mark.parametrize("name", sorted(LAUNCHER_YAMLS))
def test_launcher_image_matches_pin(name):
    docker = load_launcher(name)["docker"]
    assert set(docker) & {"head_image", "worker_image"} == set(), "one image for head and workers"
    check_ray_image(docker["image"])


def test_all_images_agree_with_pin():
    py_tags = {check_ray_image(load_launcher(n)["docker"]["image"]) for n in LAUNCHER_YAMLS}
    m = re.search(r"^ARG RAY_IMAGE=(\S+)$", (CLUSTER / "Dockerfile").read_text(), re.M)
    assert m, "cluster/Dockerfile must take its base from ARG RAY_IMAGE=..."
    py_tags.add(check_ray_image(m.group(1)))
    assert len(py_tags) == 1, f"launcher YAMLs and Dockerfile disagree on Python: {py_tags}"
    (py,) = py_tags
    images = set()
    for _, spec in cluster_specs():
        assert spec["rayVersion"] == ray_pin()
        for _, template in pod_templates(spec):
            images |= {c["image"] for c in template["spec"]["containers"]}
    # The KubeRay pods run cluster/Dockerfile's image; its tag names the Ray image it is built on.
    assert len(images) == 1, f"one image for all Ray pods, got {images}"
    (image,) = images
    version = re.search(r'^version\s*=\s*"([^"]+)"', _pyproject(), re.M).group(1)
    tag = f"{version}-ray{ray_pin()}-{py}-gpu"
    assert image.endswith(f"/vos-pseudolabel:{tag}"), f"{image}: expected tag {tag} (project version, Ray pin)"


# ---------------------------------------------------------------------------------------------
# cluster launcher


@pytest.mark.parametrize("name", sorted(LAUNCHER_YAMLS))
def test_launcher_yaml_passes_ray_schema(name):
    prepared = ray_launcher_validate(load_launcher(name))
    assert prepared["provider"]["type"] == name


@pytest.mark.parametrize("name", sorted(LAUNCHER_YAMLS))
def test_launcher_head_runs_no_model_work(name):
    cfg = load_launcher(name)
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "head must advertise CPU: 0 (no tasks or actors)"
    assert head["resources"].get("GPU", 0) == 0
    assert head.get("max_workers", 0) == 0 and head.get("min_workers", 0) == 0
    node = head["node_config"]
    if name == "aws":
        assert not re.match(r"(g|p)\d", node["InstanceType"]), f"GPU instance as head: {node}"
    else:
        assert "guestAccelerators" not in node
        assert not re.match(r"(g2|a2|a3|a4)-", node["machineType"]), f"GPU machine as head: {node}"


@pytest.mark.parametrize("name", sorted(LAUNCHER_YAMLS))
def test_launcher_gpu_workers_scale_from_zero(name):
    cfg = load_launcher(name)
    assert cfg["idle_timeout_minutes"] > 0
    workers = {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}
    assert workers
    for node_type, spec in workers.items():
        assert spec["resources"].get("GPU", 0) >= 1, f"{node_type} is not a GPU type"
        assert spec.get("min_workers", 0) == 0, f"{node_type} must scale from 0"
        assert spec["max_workers"] >= 1
    spot = [
        k
        for k, v in workers.items()
        if v["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
        or v["node_config"].get("scheduling", {}).get("provisioningModel") == "SPOT"
    ]
    assert spot, "at least one spot GPU type"
    # Spot types are preferred (autoscaler v2 priority) over every on-demand type.
    assert min(workers[k]["priority"] for k in spot) > max(
        v.get("priority", 0) for k, v in workers.items() if k not in spot
    )


@pytest.mark.parametrize("name", sorted(LAUNCHER_YAMLS))
def test_launcher_scheduling(name):
    """Autoscaler v2 (the default for `ray up` since Ray 2.50) places the job's GPU actors on the
    preferred spot type, falls back when it fails, never uses the head, and the cluster's capacity
    equals the MAX of `--actors MIN:MAX` documented in docs/running-at-scale.md."""
    prepared = ray_launcher_validate(load_launcher(name))
    workers = {k: v for k, v in prepared["available_node_types"].items() if k != prepared["head_node_type"]}
    by_priority = sorted(workers, key=lambda k: -workers[k].get("priority", 0))

    launched, infeasible = schedule_actors(prepared, 2, 0.5)
    assert (launched, infeasible) == ({by_priority[0]: 1}, 0)
    launched, infeasible = schedule_actors(prepared, 2, 0.5, unavailable=[by_priority[0]])
    assert (launched, infeasible) == ({by_priority[1]: 1}, 0)

    cap = DOCUMENTED_MAX_ACTORS_AT_HALF_GPU[name]
    launched, infeasible = schedule_actors(prepared, cap, 0.5)
    assert infeasible == 0 and prepared["head_node_type"] not in launched
    assert schedule_actors(prepared, cap + 1, 0.5)[1] == 1, f"capacity at F=0.5 is not {cap}"


@pytest.mark.parametrize("name", sorted(LAUNCHER_YAMLS))
def test_launcher_installs_project_and_uses_token_auth(name):
    cfg = load_launcher(name)
    mounts = cfg["file_mounts"]
    project_remote = [r for r, l in mounts.items() if l in (".", "./")]
    assert len(project_remote) == 1, "the repository (.) must be mounted on the nodes"
    remote = project_remote[0].replace("~", "$HOME", 1)
    setup = cfg["setup_commands"]
    assert any("pip install" in c and remote in c for c in setup), f"setup must pip install {remote}"

    token_dirs = [r for r, l in mounts.items() if "auth" in r]
    assert len(token_dirs) == 1
    local = Path(os.path.expanduser(mounts[token_dirs[0]]))
    assert local.is_absolute() and ROOT not in local.parents, "the token must come from outside the repo"
    token_path = token_dirs[0].replace("~", "$HOME", 1) + "/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(cfg[key])
        assert "RAY_AUTH_MODE=token" in start, f"{key} must enable token auth"
        assert f"RAY_AUTH_TOKEN_PATH={token_path}" in start, f"{key} must read the mounted token"


def test_aws_node_configs_are_valid_run_instances_params():
    """Ray passes node_config to EC2 RunInstances: check it against botocore's EC2 model."""
    import botocore.session
    from botocore.validate import ParamValidator

    op = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances")
    instance_types = set(op.input_shape.members["InstanceType"].enum)
    for node_type, spec in load_launcher("aws")["available_node_types"].items():
        params = {**spec["node_config"], "MinCount": 1, "MaxCount": 1}
        report = ParamValidator().validate(params, op.input_shape)
        assert not report.has_errors(), f"{node_type}: {report.generate_report()}"
        assert params["InstanceType"] in instance_types, f"{node_type}: unknown {params['InstanceType']}"


@pytest.mark.parametrize(
    "name,mutate",
    [
        ("aws", lambda c: c.update(idle_timeout_minute=c.pop("idle_timeout_minutes"))),
        ("gcp", lambda c: c.update(max_worker=c.pop("max_workers"))),
        ("aws", lambda c: c["available_node_types"]["gpu_spot_l4"].update(
            min_worker=c["available_node_types"]["gpu_spot_l4"].pop("min_workers"))),
        ("aws", lambda c: c["docker"].update(pull_befor_run=c["docker"].pop("pull_before_run"))),
        ("gcp", lambda c: c["available_node_types"]["gpu_spot_l4"].update(resources={"GPU": 0.5})),
        ("aws", lambda c: c.update(max_workers="16")),
        ("aws", lambda c: c.update(head_node_type="ray.head.default")),
        ("gcp", lambda c: c["auth"].update(ssh_usr="ubuntu")),
    ],
    ids=[
        "top-level-typo",
        "max_worker-typo",
        "node-type-key-typo",
        "docker-key-typo",
        "fractional-node-resource",
        "string-max-workers",
        "unknown-head-type",
        "auth-key-typo",
    ],
)
def test_broken_launcher_copy_fails(name, mutate):
    broken = load_launcher(name)
    mutate(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_launcher_validate(broken)


def test_broken_aws_node_config_fails_botocore():
    import botocore.session
    from botocore.validate import ParamValidator

    op = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances")
    node = copy.deepcopy(load_launcher("aws")["available_node_types"]["gpu_spot_l4"]["node_config"])
    node["InstanceMarketOption"] = node.pop("InstanceMarketOptions")
    assert ParamValidator().validate({**node, "MinCount": 1, "MaxCount": 1}, op.input_shape).has_errors()


# ---------------------------------------------------------------------------------------------
# KubeRay


def test_kuberay_dir_holds_only_raycluster_and_rayjob():
    kinds = sorted(d["kind"] for _, d in kuberay_docs())
    assert kinds == ["RayCluster", "RayJob"], kinds


def test_kuberay_manifests_match_crd_subset():
    for path, doc in kuberay_docs():
        assert doc["apiVersion"] == "ray.io/v1"
        errors = crd_errors(doc)
        assert not errors, f"{path.relative_to(ROOT)}:\n" + "\n".join(errors)


def test_crd_subset_schemas_are_valid_json_schema():
    for kind, schema in _crd_schemas().items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert "SUBSET" in schema["title"] and "SUBSET" in schema["$comment"], kind


def _raycluster_spec(doc):
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def _worker(doc):
    return _raycluster_spec(doc)["workerGroupSpecs"][0]


@pytest.mark.parametrize(
    "kind,mutate",
    [
        ("RayCluster", lambda d: d["spec"].update(enableInTreeAutoScaling=d["spec"].pop("enableInTreeAutoscaling"))),
        ("RayCluster", lambda d: _worker(d).update(minReplica=_worker(d).pop("minReplicas"))),
        ("RayCluster", lambda d: d["spec"]["autoscalerOptions"].update(version="v3")),
        ("RayCluster", lambda d: d["spec"]["authOptions"].update(mode="none")),
        ("RayCluster", lambda d: _worker(d).update(maxReplicas="8")),
        ("RayCluster", lambda d: d["spec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0})),
        ("RayJob", lambda d: d["spec"].update(shutdownAfterJobFinish=d["spec"].pop("shutdownAfterJobFinishes"))),
        ("RayJob", lambda d: d["spec"].update(submissionMode="K8sJob")),
        ("RayJob", lambda d: _raycluster_spec(d).update(workerGroupSpec=_raycluster_spec(d).pop("workerGroupSpecs"))),
        ("RayJob", lambda d: d.update(apiVersion="ray.io/v1alpha1")),
    ],
    ids=[
        "spec-key-typo",
        "minReplica-typo",
        "autoscaler-version-enum",
        "auth-mode-enum",
        "string-maxReplicas",
        "non-string-rayStartParam",
        "rayjob-key-typo",
        "submissionMode-enum",
        "embedded-spec-typo",
        "old-apiVersion",
    ],
)
def test_broken_kuberay_copy_fails(kind, mutate):
    broken = copy.deepcopy(kuberay_doc(kind))
    mutate(broken)
    assert crd_errors(broken), "a broken manifest passed the CRD schema"


@needs_k8s_schema
@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c.update(resource=c.pop("resources")),
        lambda c: c["resources"].update(limit=c["resources"].pop("limits")),
        lambda c: c["volumeMounts"][0].update(mountpath=c["volumeMounts"][0].pop("mountPath")),
        lambda c: c.update(imagePullPolicy=["IfNotPresent"]),
    ],
    ids=["container-resource-typo", "limit-typo", "volumeMount-typo", "wrong-type"],
)
def test_broken_pod_template_fails(mutate):
    """The pod templates go through Kubernetes' own strict schema, as the CRD embeds PodTemplateSpec."""
    broken = copy.deepcopy(kuberay_doc("RayCluster"))
    mutate(_worker(broken)["template"]["spec"]["containers"][0])
    assert crd_errors(broken)


def test_rayjob_embeds_the_raycluster_spec():
    assert kuberay_doc("RayJob")["spec"]["rayClusterSpec"] == kuberay_doc("RayCluster")["spec"], (
        "cluster/kuberay/rayjob.yaml's rayClusterSpec drifted from raycluster.yaml's spec"
    )


@pytest.mark.parametrize("where,spec", cluster_specs(), ids=[w for w, _ in cluster_specs()])
def test_kuberay_autoscaling_v2(where, spec):
    assert spec["enableInTreeAutoscaling"] is True
    opts = spec["autoscalerOptions"]
    assert opts["version"] == "v2"
    assert opts["idleTimeoutSeconds"] > 0
    head = spec["headGroupSpec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in head["containers"][0].get("env", [])}
    assert env.get("RAY_enable_autoscaler_v2") == "1"
    for group, template in pod_templates(spec):
        assert template["spec"].get("restartPolicy") == "Never", f"{where}/{group}: autoscaler v2 needs restartPolicy Never"


@pytest.mark.parametrize("where,spec", cluster_specs(), ids=[w for w, _ in cluster_specs()])
def test_kuberay_head_and_gpu_groups(where, spec):
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    for c in head["template"]["spec"]["containers"]:
        for section in ("limits", "requests"):
            assert not any(k.endswith("/gpu") for k in c.get("resources", {}).get(section, {})), "head has a GPU"
    gpu_groups = [g for g in spec["workerGroupSpecs"] if gpu_limit(g["template"]["spec"]["containers"][0]) > 0]
    assert gpu_groups, "no worker group requests nvidia.com/gpu through limits"
    for g in spec["workerGroupSpecs"]:
        assert g["minReplicas"] == 0 and g.get("replicas", 0) == 0, f"{g['groupName']} must scale from 0"
        assert g["maxReplicas"] >= 1
        assert g in gpu_groups, f"{g['groupName']} has no GPU limit (requests alone are not enough)"

    # Ray's own reading of the CR: what the autoscaler will see.
    derived = ray_cr_autoscaling_config(spec)
    types = derived["available_node_types"]
    assert types["headgroup"]["resources"]["CPU"] == 0 and "GPU" not in types["headgroup"]["resources"]
    for g in gpu_groups:
        node_type = types[g["groupName"]]
        assert node_type["resources"]["GPU"] == gpu_limit(g["template"]["spec"]["containers"][0])
        assert node_type["min_workers"] == 0


@pytest.mark.parametrize("where,spec", cluster_specs(), ids=[w for w, _ in cluster_specs()])
def test_kuberay_object_store_fits_shm(where, spec):
    groups = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
    for g in groups:
        store = int(g["rayStartParams"]["object-store-memory"])
        assert store <= 4 * 2**30, "object store should stay small: frames stream, actors write rows"
        volumes = {v["name"]: v for v in g["template"]["spec"].get("volumes", [])}
        mounts = {m["mountPath"]: m["name"] for m in g["template"]["spec"]["containers"][0]["volumeMounts"]}
        shm = volumes[mounts["/dev/shm"]]["emptyDir"]
        assert shm["medium"] == "Memory"
        size = shm["sizeLimit"]
        assert size.endswith("Gi") and int(size[:-2]) * 2**30 >= store, f"/dev/shm {size} < object store"


@pytest.mark.parametrize("where,spec", cluster_specs(), ids=[w for w, _ in cluster_specs()])
def test_kuberay_access_is_closed(where, spec):
    assert spec["authOptions"]["mode"] == "token", "token authentication for dashboard and job API"
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert head.get("enableIngress", False) is False
    assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"


def test_no_public_services_or_ingress():
    for path, doc in kuberay_docs():
        assert doc["kind"] not in ("Ingress", "Route", "Gateway", "HTTPRoute"), path
        for p, node in _walk(doc):
            if p and p[-1] in ("type", "serviceType") and isinstance(node, str):
                assert node not in ("LoadBalancer", "NodePort"), f"{path}: {'/'.join(map(str, p))}"


def test_rayjob_runs_the_job_and_shuts_down():
    spec = kuberay_doc("RayJob")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert "clusterSelector" not in spec, "shutdownAfterJobFinishes needs the job's own rayClusterSpec"
    assert spec.get("submissionMode", "K8sJobMode") == "K8sJobMode"
    module, args, opts = parse_entrypoint(spec["entrypoint"])
    check_module_and_options(module, args)
    for required in ("--manifest", "--output", "--checkpoint"):
        assert opts.get(required), f"entrypoint lacks {required}"


def test_rayjob_actor_options_fit_gpu_group():
    """MAX of --actors = maxReplicas x GPUs per pod / --gpus-per-actor, and the actors of one pod
    (--cpus-per-actor each) fit its CPUs with one to spare. Autoscaler v2's scheduler, run on Ray's
    own reading of the CR, agrees: MAX actors fit, MAX + 1 do not, MIN start ceil(MIN*F/GPUs) pods."""
    spec = kuberay_doc("RayJob")["spec"]
    _, _, opts = parse_entrypoint(spec["entrypoint"])
    f, c, lo, hi = actor_options(opts)
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    container = group["template"]["spec"]["containers"][0]
    gpus = gpu_limit(container)
    assert hi == group["maxReplicas"] * gpus / f, "MAX actors must equal the GPU group's actor capacity"
    if f == 0.5:
        assert hi == DOCUMENTED_MAX_ACTORS_AT_HALF_GPU["kuberay"], "docs/running-at-scale.md states another number"
    cpus = float(container["resources"]["limits"]["cpu"])
    assert gpus / f * c <= cpus - 1, "each pod needs --cpus-per-actor per actor plus one to spare"

    derived = ray_cr_autoscaling_config(spec["rayClusterSpec"])
    assert schedule_actors(derived, hi, f, c)[1] == 0
    assert schedule_actors(derived, hi + 1, f, c)[1] == 1
    launched, _ = schedule_actors(derived, lo, f, c)
    assert launched == {group["groupName"]: math.ceil(lo * f / gpus)}


def test_readme_commands_use_real_module_and_fit_clusters():
    commands = readme_commands()
    assert len(commands) >= 2
    seen_max = set()
    for cmd in commands:
        module, args, opts = parse_entrypoint(cmd)
        check_module_and_options(module, args)
        if ACTORS_OPT in opts:
            f, _, _, hi = actor_options(opts)
            assert f == 0.5
            seen_max.add(hi)
    assert seen_max and seen_max <= set(DOCUMENTED_MAX_ACTORS_AT_HALF_GPU.values()), seen_max
    text = scale_section()
    for needle in ("ray up -y cluster/aws-gpu.yaml", "ray get-auth-token", "RAY_AUTH_TOKEN",
                   "kubectl apply -f cluster/kuberay/", "kubectl port-forward", "fps per GPU",
                   "videos × 300 / fps / 3600"):
        assert needle in text, f"docs/running-at-scale.md lacks {needle!r}"


# ---------------------------------------------------------------------------------------------
# credentials


def _cluster_files():
    return [p for p in sorted(CLUSTER.rglob("*")) if p.is_file()]


def test_no_credentials_in_cluster_files():
    hits = {str(p.relative_to(ROOT)): s for p in _cluster_files() if (s := scan_for_secrets(p.read_text()))}
    assert not hits, f"credential-like content: {hits}"
    for path, doc in kuberay_docs():
        assert doc["kind"] != "Secret", f"{path}: no Secret manifests with data in the repository"
        assert not plaintext_secret_env(doc), f"{path}: {plaintext_secret_env(doc)} must use valueFrom"
    for name in LAUNCHER_YAMLS:
        cfg = load_launcher(name)
        assert "ssh_private_key" not in cfg.get("auth", {}), "no key paths in the launcher YAML"
        assert not set(cfg["provider"]) & {"gcp_credentials", "aws_credentials"}
        commands = json.dumps({k: v for k, v in cfg.items() if k.endswith("commands")})
        assert "RAY_AUTH_TOKEN=" not in commands, "the token comes from a mounted file, not the YAML"
        assert not re.search(r"AWS_(SECRET_)?ACCESS_KEY|GOOGLE_APPLICATION_CREDENTIALS", commands)


def test_credential_checks_bite():
    assert scan_for_secrets("aws_access_key_id = AKIA" + "ABCDEFGHIJKLMNOP")
    assert scan_for_secrets("-----BEGIN RSA PRIVATE KEY-----")
    assert scan_for_secrets("export RAY_AUTH_TOKEN=" + "0123456789abcdef0123")
    container = {"name": "ray-worker", "env": [{"name": "RAY_AUTH_TOKEN", "value": "x" * 32}]}
    doc = {"spec": {"workerGroupSpecs": [{"template": {"spec": {"containers": [container]}}}]}}
    assert plaintext_secret_env(doc)
    container["env"] = [
        {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "vos-pseudolabel", "key": "auth_token"}}}
    ]
    assert not plaintext_secret_env(doc)
