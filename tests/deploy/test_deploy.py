"""deploy/ is declarative, and these tests keep it honest without starting Ray or a container.

Every YAML parses; the cluster-launcher YAML validates against the schema shipped inside the
installed ray; every `cnnctl shard|train|tune` command line in deploy/, README.md and the manual's
pages (docs/*.md) passes `--dry-run` through the real Typer app; every relative link in those pages
resolves, to a file and, where it names one, to a heading, and every repository path they name in
backticks exists; the image tag is the package version everywhere; token auth is on for every node
and pod; the KubeRay dashboard stays inside the cluster; and the GPU shapes hold the training mesh (a
tower pair on one node).
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from typer.main import get_command
from typer.testing import CliRunner

from cnnctl.orchestrator.cli import app

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]  # the front door and the manual
IMAGE_HOME = "/home/ray/cnnctl"  # WORKDIR of deploy/docker/Dockerfile: the repository as the image holds it
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"cnnctl:{VERSION}"
YAMLS = sorted(DEPLOY.rglob("*.yaml"))
LAUNCHER = sorted((DEPLOY / "ray").glob("*.yaml"))
KUBERAY = sorted((DEPLOY / "kuberay").glob("*.yaml"))
DRY_RUN_COMMANDS = ("shard", "train", "tune")
SHELL_BREAKS = {"&&", "||", ";", "|", "&", "(", ")"}
runner = CliRunner()


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def strings(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return []


def command_lines(path: Path) -> list[str]:
    """The `cnnctl shard|train|tune ...` command lines in a file: a Markdown page's fenced code blocks; a
    YAML file's comments and string values (a RayJob's entrypoint). Shell continuations are joined.
    A mention inside backticks is prose, not a command line; `shard verify` and `shard info` only
    read, and have no dry run."""
    text = path.read_text()
    if path.suffix == ".md":
        chunks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
    else:
        comments = "\n".join(line.split("#", 1)[1] for line in text.splitlines() if line.lstrip().startswith("#"))
        chunks = [comments, *strings(yaml.safe_load(text))]
    found = []
    for chunk in chunks:
        for line in re.sub(r"\\\n", " ", chunk).splitlines():
            line = re.sub(r"(?:^|\s)#.*", "", line)  # a shell comment: prose again
            found += [m.group(0) for m in
                      re.finditer(r"(?<![\w/.`-])cnnctl\s+(?:shard(?!\s+(?:verify|info)\b)|train|tune)\b.*", line)]
    return found


def argv(line: str) -> list[str]:
    """A command line as the app's arguments: the shell's words up to the first operator, with the
    image's paths mapped to this checkout."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = []
    for word in lexer:
        if word in SHELL_BREAKS:
            break
        words.append(word.replace(IMAGE_HOME + "/", str(ROOT) + "/"))
    assert words[0] == "cnnctl", line
    return words[1:]


CASES = [(path, line) for path in [*YAMLS, *PAGES] for line in command_lines(path)]


@pytest.mark.parametrize("path", YAMLS, ids=rel)
def test_every_yaml_parses(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs and all(isinstance(d, dict) for d in docs)


@pytest.mark.parametrize("path", LAUNCHER, ids=rel)
def test_cluster_launcher_yaml_validates_against_rays_schema(path):
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(load(path), schema)


@pytest.mark.parametrize("path,line", CASES,
                         ids=[f"{rel(p)}::{' '.join(argv(line)[:1])}{i}" for i, (p, line) in enumerate(CASES)])
def test_every_command_line_passes_dry_run(path, line):
    args = argv(line)
    registered = get_command(app).commands
    assert args[0] in registered, (f"{rel(path)}: `cnnctl {args[0]}` is not a command of the app yet "
                                   f"({', '.join(sorted(registered))})")
    res = runner.invoke(app, args if "--dry-run" in args else [*args, "--dry-run"])
    assert res.exit_code == 0, f"{rel(path)}: {line}\n{res.output}"


def test_the_front_door_and_the_manual_hold_shard_train_and_tune_lines():
    """The dry runs above cover the pages only if the pages' command lines are found at all."""
    for pages in ([README], PAGES[1:]):
        kinds = {argv(line)[0] for path in pages for line in command_lines(path)}
        missing = sorted(set(DRY_RUN_COMMANDS) - kinds)
        assert not missing, f"{', '.join(rel(p) for p in pages)}: no cnnctl {' or '.join(missing)} line"


# --- links between README.md and docs/ ---------------------------------------------------------


def without_fences(text: str) -> str:
    return re.sub(r"^```[^\n]*\n.*?^```[^\n]*$", "", text, flags=re.M | re.S)


def prose(text: str) -> str:
    """A Markdown page without its fenced code blocks and code spans, where `#` and `](` are not Markdown."""
    return re.sub(r"`[^`\n]*`", "", without_fences(text))


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to hyphens,
    a repeated heading suffixed -1, -2, ..."""
    found, counts = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", without_fences(path.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        found.add(f"{slug}-{counts[slug]}" if counts.get(slug) else slug)
        counts[slug] = counts.get(slug, 0) + 1
    return found


def links(path: Path) -> list[str]:
    """The relative link targets of a page: `[text](target)` and `![alt](target)` outside code."""
    found = re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose(path.read_text()))
    return [t for t in found if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # http:, https:, mailto: leave the repository


LINKS = [(path, target) for path in PAGES for target in links(path)]


@pytest.mark.parametrize("path,target", LINKS, ids=[f"{rel(p)}->{t}" for p, t in LINKS])
def test_every_relative_link_resolves(path, target):
    file, _, anchor = target.partition("#")
    dest = (path.parent / file).resolve() if file else path
    assert dest.exists(), f"{rel(path)}: {target} names {file}, which does not exist"
    assert ROOT in dest.parents or dest == ROOT, f"{rel(path)}: {target} leaves the repository"
    if anchor:
        assert dest.suffix == ".md", f"{rel(path)}: {target}: an anchor into a file that is not a Markdown page"
        assert anchor in anchors(dest), f"{rel(path)}: {target}: no heading of {rel(dest)} has the anchor #{anchor}"


@pytest.mark.parametrize("path", PAGES, ids=rel)
def test_every_repository_path_a_page_names_exists(path):
    """A code span that is a path in the repository (`shards/location.py`, `deploy/ray/`, `models/__init__`)
    names a file or folder that exists, so a module that moves takes the manual's mentions with it."""
    top = "orchestrator|models|shards|configs|bench|tests|deploy|docs"
    named = set(re.findall(rf"`((?:{top})/[\w./-]*)`", path.read_text()))
    gone = sorted(p for p in named if not (ROOT / p).exists() and not (ROOT / f"{p}.py").exists())
    assert not gone, f"{rel(path)} names {', '.join(gone)}, not in the repository"


def test_the_link_check_reads_headings_and_links_as_github_does(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("""# Benchmarks
## Ray Train's step and its start-up
## 1. Bytes per step, counted (bench/comm.py)
## `cnnctl tune`: sweeps
## Notes
## Notes
```bash
# a shell comment, not a heading: [not](a-link.md)
```
See [a page](docs/a.md#notes-1), ![a plot](plot.png), [the web](https://example.org/x.md) and `[code](b.md)`.
""")
    assert anchors(page) == {"benchmarks", "ray-trains-step-and-its-start-up", "1-bytes-per-step-counted-benchcommpy",
                             "cnnctl-tune-sweeps", "notes", "notes-1"}
    assert links(page) == ["docs/a.md#notes-1", "plot.png"]
    assert any("#" in t for _, t in LINKS) and README in {p for p, _ in LINKS}


def test_the_manifests_hold_a_shard_train_and_tune_command_each():
    for path in [*LAUNCHER, *KUBERAY]:
        kinds = {argv(line)[0] for line in command_lines(path)}
        want = ({"train"} if path.name == "raycluster.yaml"
                else {path.stem.removeprefix("rayjob-")} if path.stem.startswith("rayjob-")
                else set(DRY_RUN_COMMANDS))
        assert want <= kinds, f"{rel(path)}: no cnnctl {', '.join(sorted(want - kinds))} line"
    for path in LAUNCHER:
        train = [argv(line) for line in command_lines(path) if argv(line)[0] == "train"]
        assert any("--nodes" in a and a[a.index("--address") + 1] == "auto"
                   for a in train if "--address" in a), rel(path)


def test_image_tag_is_the_package_version_everywhere():
    for path in [*DEPLOY.rglob("*"), ROOT / ".dockerignore", *PAGES]:
        if path.is_file():
            for tag in re.findall(r"\bcnnctl:([\w.-]+)", path.read_text()):
                assert tag == VERSION, f"{rel(path)}: cnnctl:{tag}, the package is {VERSION}"
    assert f"-t {IMAGE} " in (DEPLOY / "docker" / "Dockerfile").read_text()
    ours = re.compile(rf"(?:[\w.:-]+/)*{re.escape(IMAGE)}")  # cnnctl:0.1.0, or pushed as REGISTRY/cnnctl:0.1.0
    for path in LAUNCHER:
        assert ours.fullmatch(load(path)["docker"]["image"]), rel(path)
    for path in KUBERAY:
        images = {c["image"] for tpl in pod_templates(load(path)) for c in tpl["spec"]["containers"]}
        assert images and all(ours.fullmatch(i) for i in images), f"{rel(path)}: {images}"


def test_dockerfile_builds_on_ray_and_torch_as_pinned_and_runs_as_non_root():
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    major_minor = ".".join(ray.__version__.split(".")[:2])
    assert re.search(rf"^FROM rayproject/ray:{re.escape(major_minor)}\.\d+-py311-cu\d+\s*$", text, re.M)
    assert "pip install torch==2.13.0" in text
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", ".dockerignore should be an allow-list, so .venv, data and runs stay out of the context"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    for sources in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+\s*$", text, re.M):
        for src in sources.split():
            assert src in allowed, f"Dockerfile copies {src}, which .dockerignore leaves out of the context"


# --- KubeRay ---------------------------------------------------------------------------------


def cluster_specs(doc: dict) -> list[dict]:
    return [doc["spec"]] if doc["kind"] == "RayCluster" else [doc["spec"]["rayClusterSpec"]]


def pod_templates(doc: dict) -> list[dict]:
    templates = []
    for spec in cluster_specs(doc):
        templates += [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]
    if doc["kind"] == "RayJob":
        templates.append(doc["spec"]["submitterPodTemplate"])  # the default submitter would carry no token
    return templates


def token_env(env: list[dict]) -> bool:
    by_name = {e["name"]: e for e in env}
    return by_name.get("RAY_AUTH_MODE", {}).get("value") == "token" and bool(
        by_name.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {}).get("name"))


@pytest.mark.parametrize("path", KUBERAY, ids=rel)
def test_kuberay_token_auth_on_every_pod_and_object_store_keys_from_a_secret(path):
    doc = load(path)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in ("RayCluster", "RayJob")
    for tpl in pod_templates(doc):
        for c in tpl["spec"]["containers"]:
            assert token_env(c.get("env", [])), (f"{rel(path)}: {c['name']} lacks RAY_AUTH_MODE=token "
                                                 f"or the token from a Secret")
    for spec in cluster_specs(doc):
        if spec.get("enableInTreeAutoscaling"):  # the autoscaler sidecar is a Ray client of the GCS too
            autoscaler_env = spec.get("autoscalerOptions", {}).get("env", [])
            assert token_env(autoscaler_env), f"{rel(path)}: the autoscaler has no token"
        for tpl in [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]:
            for c in tpl["spec"]["containers"]:
                assert any(s.get("secretRef", {}).get("name") for s in c.get("envFrom", [])), (
                    f"{rel(path)}: {c['name']} has no object-store Secret")
                literal = {e["name"] for e in c.get("env", []) if "value" in e}
                assert not literal & {"AWS_SECRET_ACCESS_KEY", "RAY_AUTH_TOKEN"}, "a literal secret"


@pytest.mark.parametrize("path", KUBERAY, ids=rel)
def test_kuberay_dashboard_is_not_exposed_outside_the_cluster(path):
    doc = load(path)
    for spec in cluster_specs(doc):
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", rel(path)
        assert not head.get("enableIngress", False), rel(path)
    values = strings(doc)
    assert not {"LoadBalancer", "NodePort", "Ingress"} & set(values), rel(path)


def dry_run_config(args: list[str]) -> dict:
    res = runner.invoke(app, [*args, "--dry-run"])
    assert res.exit_code == 0, res.output
    return yaml.safe_load(res.stdout)


def gpus(container: dict) -> int:
    return int(container["resources"].get("limits", {}).get("nvidia.com/gpu", 0))


def test_kuberay_train_job_keeps_tower_pairs_on_one_pod():
    doc = load(DEPLOY / "kuberay" / "rayjob-train.yaml")
    cfg = dry_run_config(argv(doc["spec"]["entrypoint"]))["parallel"]
    assert cfg["gpus"] and cfg["mp"] == 2 and cfg["nodes"] == 4
    groups = [g for g in doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
              if gpus(g["template"]["spec"]["containers"][0])]
    assert groups, "no GPU worker group"
    for g in groups:
        c = g["template"]["spec"]["containers"][0]
        assert gpus(c) >= max(cfg["workers_per_node"], cfg["mp"]), (
            f"{g['groupName']}: {gpus(c)} GPU(s) per pod for {cfg['workers_per_node']} workers")
        assert float(c["resources"]["limits"]["cpu"]) >= cfg["workers_per_node"] * cfg["cpus_per_worker"]
        assert gpus(c) == int(c["resources"]["requests"]["nvidia.com/gpu"])
    assert sum(g.get("minReplicas", g["replicas"]) for g in groups) >= cfg["nodes"]
    head = doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["resources"]["limits"].get("nvidia.com/gpu") is None


def test_kuberay_tune_job_runs_on_small_gpu_pods():
    doc = load(DEPLOY / "kuberay" / "rayjob-tune.yaml")
    counts = [gpus(g["template"]["spec"]["containers"][0]) for g in doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]]
    assert counts and all(0 < n < 8 for n in counts)


# --- Ray cluster launcher ----------------------------------------------------------------------


@pytest.mark.parametrize("path", LAUNCHER, ids=rel)
def test_launcher_token_auth_on_every_node(path):
    cfg = load(path)
    options = " ".join(cfg["docker"]["run_options"])
    assert "--env RAY_AUTH_MODE=token" in options
    token_path = re.search(r"--env RAY_AUTH_TOKEN_PATH=(\S+)", options).group(1)
    assert str(Path(token_path).parent) in cfg["file_mounts"], "the token file is not copied to the nodes"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in cfg[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), f"{key}: ray start without RAY_AUTH_MODE=token"
    for name, node in cfg["available_node_types"].items():
        docker = node.get("docker", {})
        assert "image" not in docker and "worker_image" not in docker, f"{name}: another image"


@pytest.mark.parametrize("path", LAUNCHER, ids=rel)
def test_launcher_gpu_types_hold_the_training_mesh_and_storage_is_an_object_store(path):
    cfg = load(path)
    workers = {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}
    assert not cfg["available_node_types"][cfg["head_node_type"]]["resources"].get("GPU")
    big = {k for k, v in workers.items() if v["resources"].get("GPU", 0) == 8}
    small = {k for k, v in workers.items() if 0 < v["resources"].get("GPU", 0) < 8}
    assert len(big) >= 2 and small, f"want 8-GPU A100 and H100 types and a small GPU type, got {sorted(workers)}"
    scheme = {"aws": "s3://", "gcp": "gs://"}[cfg["provider"]["type"]]
    for line in command_lines(path):
        args = argv(line)
        if args[0] == "train":
            p = dry_run_config(args)
            assert p["data"]["root"].startswith(scheme) and p["run"]["storage"].startswith(scheme), line
            p = p["parallel"]
            for k in big:
                r = workers[k]["resources"]
                assert r["GPU"] >= p["workers_per_node"] and r["CPU"] >= p["workers_per_node"] * p["cpus_per_worker"]
                assert workers[k]["max_workers"] >= p["nodes"]
        if args[0] == "shard":
            assert args[2].startswith(scheme), line


# --- `cnnctl shard --dry-run`, which the shard manifests rely on -------------------------------


def test_shard_dry_run_resolves_and_writes_nothing(tmp_path):
    dest = tmp_path / "out"
    res = runner.invoke(app, ["shard", "fashion-mnist", str(dest), "--shard-bytes", "1MB", "--dry-run"])
    assert res.exit_code == 0, res.output
    plan = yaml.safe_load(res.stdout)
    assert plan["layout"] == "fashion-mnist" and plan["splits"] == ["train", "test"]
    assert plan["destination"] == str(dest)
    options = plan["options"]
    assert options["image_format"] == "png" and options["shard_bytes"] == 2**20 and options["shard_size"] is None
    assert not dest.exists()


def test_shard_dry_run_of_a_source_elsewhere_and_its_errors(tmp_path):
    res = runner.invoke(app, ["shard", str(tmp_path / "imagenet"), "s3://bucket/shards", "--address",
                              "auto", "--dry-run"])
    assert res.exit_code == 0, res.output
    plan = yaml.safe_load(res.stdout)
    assert plan["layout"].startswith("auto (") and plan["options"]["resize"] == 256 and "auto" in plan["runs_on"]
    assert runner.invoke(app, ["shard", "fashion-mnist", "pipe:cat", "--dry-run"]).exit_code == 1
    assert runner.invoke(app, ["shard", "fashion-mnist", str(tmp_path), "--resize", "big", "--dry-run"]).exit_code == 1
    assert runner.invoke(app, ["shard", "fashion-mnist", str(tmp_path), "--layout", "nope", "--dry-run"]).exit_code == 1
