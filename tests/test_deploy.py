"""deploy/ and jobs/: files parse, commands are real, names agree, jobqueue config loads."""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import click
import pytest
import yaml

from digitbatch import jobs
from digitbatch.cli import main

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
JOBS = REPO / "jobs"
YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
TOML_FILES = sorted([*JOBS.glob("*.toml"), *DEPLOY.rglob("*.toml")])
TEXT_FILES = sorted(p for p in [*DEPLOY.rglob("*"), *JOBS.glob("*")]
                    if p.is_file() and p not in YAML_FILES and "__pycache__" not in p.parts)
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"digitbatch:{VERSION}"
SEPARATORS = re.compile(r"\s*(?:&&|\|\||;|\||>>?|2>&1)\s*")
# a command starts a shell segment, or follows `docker run ... IMAGE` / `compose run --rm job`
COMMAND = re.compile(r"^(?:.*?(?:\bdigitbatch:\S+|\brun --rm job)\s+)?(digitbatch(?:\s.*)?)$")


def _yaml(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _walk(node):
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def _shell_commands(line: str) -> list[list[str]]:
    """``digitbatch ...`` commands in a (possibly commented) shell or Markdown line."""
    line = line.strip().lstrip("#").strip().removeprefix("$ ")
    found = []
    spans = re.findall(r"`(digitbatch [^`]*)`", line) or SEPARATORS.split(line)
    for part in spans:
        m = COMMAND.match(part.strip())
        if m:
            part = re.sub(r"\s+#.*$", "", m.group(1))  # a trailing comment
            argv = shlex.split(part)
            # shell variables become placeholders: they are values, not options
            found.append([re.sub(r"\$\{?\w+(:-[^}]*)?\}?", "X", a) for a in argv])
    return found


def _logical_lines(text: str):
    buf = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            buf += line[:-1].rstrip().lstrip("#") + " "
            continue
        yield buf + line.strip().lstrip("#") if buf else line
        buf = ""


def commands() -> list[tuple[str, list[str]]]:
    """Every digitbatch command line in deploy/ and jobs/, with the file it is in."""
    out = []
    for path in YAML_FILES:
        for doc in _yaml(path):
            for node in _walk(doc):
                if isinstance(node, list) and node and node[0] == "digitbatch" \
                        and all(isinstance(a, str) for a in node):
                    out.append((path.name, node))
                elif isinstance(node, str) and "digitbatch " in node:
                    out += [(path.name, c) for line in node.splitlines()
                            for c in _shell_commands(line)]
        out += [(path.name, c) for line in path.read_text().splitlines()
                if line.lstrip().startswith("#") for c in _shell_commands(line)]
    for path in TEXT_FILES:
        out += [(path.name, c) for line in _logical_lines(path.read_text())
                for c in _shell_commands(line)]
    return out


def _command_index(group: click.Group, args: list[str]) -> int | None:
    """Where the subcommand is in ``args``: after the group's options (and their values)."""
    takes_value = {o for p in group.params if isinstance(p, click.Option)
                   and not p.is_flag and not p.count for o in p.opts}
    i = 0
    while i < len(args):
        if not args[i].startswith("-"):
            return i
        i += 2 if args[i] in takes_value else 1
    return None


def parse_cli(argv: list[str]) -> click.Context:
    """Parse ``argv`` with the real CLI (unknown options and commands fail), running nothing."""
    assert argv[0] == "digitbatch"
    cmd, ctx, name, args = main, None, "digitbatch", list(argv[1:])
    while isinstance(cmd, click.Group):
        i = _command_index(cmd, args)
        assert i is not None, f"no command in {argv}"
        ctx = cmd.make_context(name, args[:i + 1], parent=ctx, resilient_parsing=False)
        name, args = args[i], args[i + 1:]
        sub = cmd.get_command(ctx, name)
        assert sub is not None, f"{argv}: no command {name!r}"
        cmd = sub
    return cmd.make_context(name, args, parent=ctx, resilient_parsing=False)


@pytest.mark.parametrize("path", YAML_FILES + TOML_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_yaml_and_toml_file_parses(path):
    if path.suffix == ".toml":
        assert tomllib.loads(path.read_text())
    else:
        assert _yaml(path)


def test_command_lines_are_found_where_expected():
    found = {(f, c[1] if len(c) > 1 else "") for f, c in commands()}
    for expected in [("compose.yaml", "run"), ("cronjob.yaml", "run"),
                     ("run_nightly.sbatch", "run"), ("README.md", "run"),
                     ("Dockerfile", "run"), ("quickstart.toml", "run")]:
        assert expected in found, (expected, sorted(found))


@pytest.mark.parametrize("where, argv", commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_command_line_is_a_real_command(where, argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # files that options require to exist, as empty stand-ins
    for opt, value in zip(argv, argv[1:]):
        if opt.startswith("--tls-") and not Path(value).is_absolute():
            (tmp_path / value).touch()
    try:
        ctx = parse_cli(argv)
    except click.UsageError as exc:
        pytest.fail(f"{where}: {shlex.join(argv)}: {exc.format_message()}")
    if ctx.command.name == "run" and re.search(r"[a-z]", Path(ctx.params["job"]).stem):
        # a real spec (not a placeholder such as JOB.toml): it is one of jobs/, and the
        # --set items name its real keys with values of the right types
        spec = JOBS / Path(ctx.params["job"]).name
        assert spec.exists(), f"{where}: {ctx.params['job']} is not one of jobs/"
        assert jobs.load_job(spec, ctx.params["overrides"], check_files=False).steps


@pytest.mark.parametrize("spec", sorted(JOBS.glob("*.toml")), ids=lambda p: p.name)
def test_job_specs_follow_the_schema(spec):
    job = jobs.load_job(spec, check_files=False)
    assert job.name == spec.stem
    assert "score" in job.steps


def _compose() -> dict:
    return _yaml(DEPLOY / "docker" / "compose.yaml")[0]


def _k8s(name: str) -> dict:
    return _yaml(DEPLOY / "kubernetes" / name)[0]


def _containers(doc: dict) -> list[dict]:
    return [n for node in _walk(doc) if isinstance(node, dict) and isinstance(
        node.get("containers"), list) for n in node["containers"]]


def test_image_names_agree_across_dockerfile_compose_and_kubernetes():
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert f"-t {IMAGE} " in dockerfile  # the documented build command
    assert dockerfile.splitlines()[[i for i, l in enumerate(dockerfile.splitlines())
                                    if l.startswith("FROM")][0]] == "FROM python:3.11-slim"
    services = _compose()["services"]
    assert {s["image"] for s in services.values()} == {IMAGE}
    images = {c["image"] for f in ("daskcluster.yaml", "cronjob.yaml")
              for c in _containers(_k8s(f))}
    assert images == {IMAGE}
    assert re.search(r"EXPOSE .*\b8786\b.*\b8787\b", dockerfile)


def test_compose_services_and_addresses_agree():
    services = _compose()["services"]
    assert {"scheduler", "worker", "job"} <= set(services)
    sched = services["scheduler"]["command"]
    port = sched[sched.index("--port") + 1]
    worker = services["worker"]["command"]
    assert worker[:2] == ["dask", "worker"] and worker[2] == f"tcp://scheduler:{port}"
    assert services["worker"]["deploy"]["replicas"] == 2
    job = services["job"]["command"]
    assert f"cluster.scheduler=tcp://scheduler:{port}" in job
    assert any(v.endswith(":/jobs:ro") for v in services["job"]["volumes"])
    assert (JOBS / Path(job[2]).name).exists()
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))


def test_kubernetes_names_agree():
    cluster, cron, pvc = _k8s("daskcluster.yaml"), _k8s("cronjob.yaml"), _k8s("pvc.yaml")
    assert cluster["kind"] == "DaskCluster"
    assert cluster["apiVersion"].startswith("kubernetes.dask.org/")
    assert cron["kind"] == "CronJob" and cron["apiVersion"] == "batch/v1"
    name = cluster["metadata"]["name"]
    ports = {p["name"]: p["port"] for p in cluster["spec"]["scheduler"]["service"]["ports"]}
    assert {"tcp-comm", "http-dashboard"} <= set(ports)
    assert cluster["spec"]["scheduler"]["service"]["selector"]["dask.org/cluster-name"] == name
    (job,) = _containers(cron)
    assert f"cluster.scheduler=tcp://{name}-scheduler:{ports['tcp-comm']}" in job["command"]
    for c in _containers(cluster) + _containers(cron):
        assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]
    claims = {n["persistentVolumeClaim"]["claimName"] for doc in (cluster, cron)
              for n in _walk(doc) if isinstance(n, dict) and "persistentVolumeClaim" in n}
    assert claims == {pvc["metadata"]["name"]}
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    (configmap,) = [n["configMap"]["name"] for n in _walk(cron)
                    if isinstance(n, dict) and "configMap" in n]
    cron_text = (DEPLOY / "kubernetes" / "cronjob.yaml").read_text()
    assert f"kubectl create configmap {configmap} " in cron_text
    assert (JOBS / Path(job["command"][2]).name).exists()


def _launcher():
    spec = importlib.util.spec_from_file_location("launch_cluster",
                                                  DEPLOY / "slurm" / "launch_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_jobqueue_config_loads_in_dask_jobqueue_and_renders_a_job_script():
    pytest.importorskip("dask_jobqueue")
    launcher = _launcher()
    config = yaml.safe_load((DEPLOY / "slurm" / "jobqueue.yaml").read_text())["jobqueue"]["slurm"]
    with launcher.slurm_cluster(scheduler_options={"host": "127.0.0.1",
                                                   "dashboard_address": "127.0.0.1:0"}) as cluster:
        script = cluster.job_script()
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
    assert script.startswith("#!/usr/bin/env bash")
    assert f"#SBATCH -J {config['name']}" in script
    assert f"#SBATCH --cpus-per-task={config['cores']}" in script
    assert f"#SBATCH -t {config['walltime']}" in script
    assert "--nthreads 1" in script and f"--nworkers {config['processes']}" in script
    assert "OMP_NUM_THREADS=1" in script


def test_slurm_scripts_are_valid_shell_and_cron():
    bash = shutil.which("bash")
    if bash:
        subprocess.run([bash, "-n", str(DEPLOY / "slurm" / "run_nightly.sbatch")], check=True)
    (line,) = [l for l in (DEPLOY / "slurm" / "crontab").read_text().splitlines()
               if l.strip() and not l.startswith("#")]
    fields = line.split()
    assert len(fields) > 5 and all(re.fullmatch(r"[\d*/,-]+", f) for f in fields[:5])
    assert "sbatch deploy/slurm/run_nightly.sbatch" in line
    sbatch = (DEPLOY / "slurm" / "run_nightly.sbatch").read_text()
    assert "launch_cluster.py" in sbatch and "--address-file" in sbatch
    launcher = _launcher()
    assert launcher.flat({"jobqueue": {"slurm": {"cores": 4, "job-extra-directives": []}}}) == \
        {"jobqueue.slurm.cores": 4, "jobqueue.slurm.job-extra-directives": []}
