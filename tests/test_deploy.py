"""deploy/ checked without a container runtime (issue 13 §5): the Kubernetes manifests against the
Kubernetes schemas (kubernetes-validate, strict) and KubeRay's RayCluster / RayJob against a labelled
subset schema (deploy/schemas/README.md) with their pod templates validated as core PodTemplates; the
compose file against the compose-spec schema; and every `curation` / `ray start` command, repository
path and environment variable in them against the code itself. Plus the PgBouncer contract: transaction
pooling, and nothing in the code that needs a session."""

from __future__ import annotations

import configparser
import json
import re
import shlex
from collections.abc import Iterator

import jsonschema
import kubernetes_validate
import pytest
import yaml

from curation.config import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
KUBE_VERSION = "1.37.0"  # the newest schemas kubernetes-validate 1.37.0 ships
CODE_DIRS = ("curation", "workers", "models", "training")
# variables the images or libraries read, not our code: the postgres image's, boto3's
IMAGE_ENV = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "PGDATA"}
BOTO3_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_SESSION_TOKEN"}


def kube_docs() -> Iterator[tuple[str, dict]]:
    for path in sorted((DEPLOY / "kuberay").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def pod_templates(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    if doc["kind"] == "RayCluster":
        return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec.get("workerGroupSpecs", [])]
    if doc["kind"] == "RayJob":
        return [spec["submitterPodTemplate"]] if "submitterPodTemplate" in spec else []
    if doc["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
        return [spec["template"]]
    return []


def containers(doc: dict) -> list[dict]:
    return [c for t in pod_templates(doc) for c in t["spec"].get("containers", []) + t["spec"].get("initContainers", [])]


def kube_validate(doc: dict) -> None:
    kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def ray_validator() -> jsonschema.Validator:
    schema = json.loads((DEPLOY / "schemas" / "kuberay-v1-subset.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def compose_validator() -> jsonschema.Validator:
    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
    return jsonschema.Draft201909Validator(schema, format_checker=jsonschema.FormatChecker())


# --- schemas ----------------------------------------------------------------------------------------


def test_kubernetes_manifests_validate():
    ray = ray_validator()
    kinds = set()
    for name, doc in kube_docs():
        kinds.add(doc["kind"])
        if doc["apiVersion"].startswith("ray.io/"):
            errors = [f"{e.json_path}: {e.message[:200]}" for e in ray.iter_errors(doc)]
            assert not errors, f"{name} {doc['kind']}: {errors}"
            for template in pod_templates(doc):
                kube_validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template})
        else:
            kube_validate(doc)
    assert {"RayCluster", "RayJob", "StatefulSet", "Deployment", "Service", "Secret", "ConfigMap", "Job"} <= kinds


def test_the_raycluster_has_cpu_and_gpu_groups_and_the_rayjob_targets_it():
    docs = {doc["kind"]: doc for _, doc in kube_docs() if doc["apiVersion"].startswith("ray.io/")}
    cluster, job = docs["RayCluster"], docs["RayJob"]
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu_limits = [c["resources"]["limits"] for c in groups["gpu"]["template"]["spec"]["containers"]]
    assert all("nvidia.com/gpu" in lim for lim in gpu_limits)
    assert not any("nvidia.com/gpu" in c["resources"].get("limits", {}) for c in groups["cpu"]["template"]["spec"]["containers"])
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    # the supervisor reaches the head service KubeRay creates for this cluster
    supervisor = next(d for _, d in kube_docs() if d["metadata"]["name"] == "curation-supervisor")
    assert f"ray://{cluster['metadata']['name']}-head-svc:10001" in containers(supervisor)[0]["command"]


def test_the_validators_catch_mistakes():
    """Not vacuous: a misspelt field fails each of the three checks."""
    deployment = next(d for _, d in kube_docs() if d["kind"] == "Deployment")
    bad = json.loads(json.dumps(deployment))
    bad["spec"]["replicass"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kube_validate(bad)
    cluster = next(d for _, d in kube_docs() if d["kind"] == "RayCluster")
    bad = json.loads(json.dumps(cluster))
    bad["spec"]["workerGroupSpecs"][0]["rayStartParams"] = {"num-cpus": 4}  # must be a string
    assert list(ray_validator().iter_errors(bad))
    bad = json.loads(json.dumps(cluster))
    bad["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kube_validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                       "template": bad["spec"]["headGroupSpec"]["template"]})
    bad = compose()
    bad["services"]["postgres"]["helthcheck"] = bad["services"]["postgres"].pop("healthcheck")
    assert list(compose_validator().iter_errors(bad))


def test_compose_file_matches_the_compose_spec():
    errors = [f"{e.json_path}: {e.message[:200]}" for e in compose_validator().iter_errors(compose())]
    assert not errors


# --- against the repository ---------------------------------------------------------------------------


def _commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every command the deploy files run; shell strings are split into their `&&` parts."""
    out: list[tuple[str, list[str]]] = []

    def add(where: str, cmd) -> None:
        if isinstance(cmd, list) and cmd[:2] in (["bash", "-c"], ["sh", "-c"]):
            cmd = cmd[2]
        if isinstance(cmd, str):
            for part in re.split(r"&&|;|\|\|", cmd):
                argv = shlex.split(part)
                out.append((where, argv[1:] if argv[:1] == ["exec"] else argv))
        elif cmd:
            out.append((where, list(cmd)))

    for name, svc in compose()["services"].items():
        add(f"compose {name}", svc.get("command"))
        add(f"compose {name} entrypoint", svc.get("entrypoint"))
    for name, doc in kube_docs():
        for c in containers(doc):
            if not c.get("command") and c.get("args") and c["image"].startswith("pgvector/"):
                add(f"{name} {c['name']}", ["postgres"] + c["args"])  # the image's entrypoint is postgres
            else:
                add(f"{name} {c['name']}", (c.get("command") or []) + (c.get("args") or []))
        if doc["kind"] == "RayJob":
            add(f"{name} entrypoint", doc["spec"]["entrypoint"])
    return [(w, a) for w, a in out if a]


def _check_click(cmd, argv: list[str], where: str) -> None:
    """Walk ``argv`` down the click command tree of ``cmd``; every option must exist where it is used.
    (Duck-typed: typer and ray each bring their own click.)"""
    path = [cmd.name or "?"]
    args = list(argv)
    is_group = lambda c: hasattr(c, "list_commands")
    while is_group(cmd) and args and not args[0].startswith("-"):
        sub = cmd.get_command(cmd.make_context(path[-1], [], resilient_parsing=True), args[0])
        assert sub is not None, f"{where}: `{' '.join(path)} {args[0]}` is not a command"
        cmd, path = sub, path + [args.pop(0)]
    assert not is_group(cmd), f"{where}: `{' '.join(path)}` needs a subcommand"
    known = {o for p in cmd.params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
    for arg in args:
        if arg.startswith("--"):
            assert arg.split("=", 1)[0] in known, f"{where}: `{' '.join(path)}` has no option {arg.split('=', 1)[0]}"
    ctx = cmd.make_context(path[-1], args)  # the arguments parse (types, counts)
    ctx.close()


def test_every_command_exists():
    import typer

    from curation.cli import app

    cli = typer.main.get_command(app)
    from ray.scripts.scripts import cli as ray_cli

    seen = set()
    for where, argv in _commands():
        seen.add(argv[0])
        if argv[0] == "curation":
            _check_click(cli, argv[1:], where)
        elif argv[0] == "ray":
            _check_click(ray_cli, argv[1:], where)
        else:
            assert argv[0] in ("postgres", "mini"), f"{where}: unexpected program {argv[0]}"
    assert {"curation", "ray"} <= seen
    # the curation subcommands the deploy files rely on
    used = {tuple(a[1:3]) for _, a in _commands() if a[0] == "curation"}
    assert {("db", "upgrade"), ("worker", "--address"), ("run", "/etc/curation/jobs/photos.yaml")} <= used


def test_every_repository_path_exists():
    c = compose()
    for name, svc in c["services"].items():
        build = svc.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert context == REPO_ROOT, f"compose {name}: builds from {context}, not the repository"
            assert (context / build["dockerfile"]).is_file()
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"compose {name}: {source} does not exist"
            else:
                assert source in c.get("volumes", {}), f"compose {name}: named volume {source} not declared"
    # the Dockerfile copies the repository root (compose's and the README's build context) and checks
    # the imports the workloads need
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "COPY --chown=ray:users . /app" in dockerfile and "pip install --no-cache-dir -e /app" in dockerfile
    assert (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "db" / "migrations").is_dir()
    # paths named in the deploy docs and comments
    texts = [p for p in DEPLOY.rglob("*") if p.suffix in (".md", ".yaml", ".ini", ".sh") or p.name == "Dockerfile"]
    named = set()
    for p in texts:
        for m in re.finditer(r"(?<![\w/.-])((?:deploy|curation|workers|db|tests|docs|scripts|examples)/[\w./-]*\w)",
                             p.read_text()):
            named.add((p.relative_to(REPO_ROOT), m.group(1)))
    missing = [f"{where}: {path}" for where, path in named if not (REPO_ROOT / path).exists()]
    assert not missing, missing
    assert len(named) >= 10


def _code_env_names() -> set[str]:
    names = set()
    for folder in CODE_DIRS:
        for py in (REPO_ROOT / folder).rglob("*.py"):
            names |= set(re.findall(r"[\"'](CURATION_[A-Z0-9_]+|AWS_[A-Z0-9_]+)[\"']", py.read_text()))
    return names


def _deploy_env() -> list[tuple[str, str, str | None]]:
    """(where, NAME, value or None) of every environment variable the deploy files set."""
    out = []
    c = compose()
    for name, svc in c["services"].items():
        for k, v in (svc.get("environment") or {}).items():
            out.append((f"compose {name}", k, v))
    maps = {}
    for fname, doc in kube_docs():
        if doc["kind"] in ("ConfigMap", "Secret"):
            maps[doc["metadata"]["name"]] = doc.get("data") or doc.get("stringData") or {}
    for fname, doc in kube_docs():
        for ctr in containers(doc):
            for e in ctr.get("env", []):
                value = e.get("value")
                if "valueFrom" in e:
                    ref = e["valueFrom"].get("secretKeyRef") or e["valueFrom"].get("configMapKeyRef")
                    assert ref["key"] in maps[ref["name"]], f"{fname}: {ref} does not exist"
                    value = maps[ref["name"]][ref["key"]]
                out.append((f"{fname} {ctr['name']}", e["name"], value))
            for src in ctr.get("envFrom", []):
                ref = src.get("secretRef") or src.get("configMapRef")
                for k, v in maps[ref["name"]].items():
                    out.append((f"{fname} {ctr['name']} from {ref['name']}", k, v))
    return out


def test_every_environment_variable_is_one_the_code_reads():
    code = _code_env_names()
    assert {"CURATION_DATABASE_URL", "CURATION_READER_DATABASE_URL", "AWS_ENDPOINT_URL"} <= code
    wrong = [f"{where}: {name}" for where, name, _ in _deploy_env()
             if name not in code | IMAGE_ENV | BOTO3_ENV]
    assert not wrong, f"set in deploy/ but read by nothing: {wrong}"


def test_database_urls_go_where_pgbouncer_allows():
    """Workers through PgBouncer; migrations and the reader role straight to PostgreSQL (the reader's
    read-only mode and statement timeout are startup options, which PgBouncer refuses)."""
    env = _deploy_env()
    readers = [(w, v) for w, k, v in env if k == "CURATION_READER_DATABASE_URL"]
    assert readers and all(":5432/" in v and "bouncer" not in v for _, v in readers), readers
    for where, name, value in env:
        if name != "CURATION_DATABASE_URL":
            continue
        migrates = "migrate" in where or where.endswith(" upgrade")
        assert (":5432/" in value) == migrates and ("bouncer" in value) != migrates, (where, value)
    # the code still sends the reader's settings as startup options (if this changes, so may the routing)
    import inspect

    from curation.user_sql import reader_engine

    assert "-c default_transaction_read_only=on" in inspect.getsource(reader_engine)


# --- PgBouncer ------------------------------------------------------------------------------------------


def _ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(inline_comment_prefixes=(";",))
    parser.read_string(text)
    return parser


def test_pgbouncer_runs_transaction_pooling_and_refuses_startup_options():
    compose_ini = _ini((DEPLOY / "pgbouncer" / "pgbouncer.ini").read_text())
    kube_ini = _ini(next(d for _, d in kube_docs() if d["metadata"]["name"] == "curation-pgbouncer"
                         and d["kind"] == "ConfigMap")["data"]["pgbouncer.ini"])
    assert dict(compose_ini["pgbouncer"]) == dict(kube_ini["pgbouncer"])
    for ini in (compose_ini, kube_ini):
        assert ini["pgbouncer"]["pool_mode"] == "transaction"
        assert "options" not in ini["pgbouncer"].get("ignore_startup_parameters", "")
        assert ini["pgbouncer"]["max_prepared_statements"] == "0"
    # the same initdb script in both deployments
    initdb = next(d for _, d in kube_docs() if d["metadata"]["name"] == "curation-postgres-initdb")
    assert initdb["data"]["10-reader-role.sh"] == (DEPLOY / "postgres" / "initdb" / "10-reader-role.sh").read_text()


SESSION_STATE = {
    "a session-level advisory lock": re.compile(r"pg_(try_)?advisory_lock(_shared)?\s*\("),
    "LISTEN / NOTIFY": re.compile(r"[\"']\s*(LISTEN|NOTIFY|UNLISTEN)\b|pg_notify\s*\("),
    "a session SET (use SET LOCAL)": re.compile(r"text\(\s*f?[\"']\s*SET\s+(?!LOCAL\b|TRANSACTION\b)", re.IGNORECASE),
    "a cursor WITH HOLD": re.compile(r"WITH\s+HOLD", re.IGNORECASE),
    "a temporary table": re.compile(r"CREATE\s+(TEMP|TEMPORARY)\s+TABLE", re.IGNORECASE),
    "a server-side prepared statement": re.compile(r"[\"']\s*PREPARE\s+\w+", re.IGNORECASE),
}


def test_the_code_keeps_no_session_state_pgbouncer_would_lose():
    """What transaction pooling breaks, absent from the broker, the runtime and the library: each
    server connection is lent for one transaction, so nothing may outlive a transaction on it."""
    found = []
    for folder in CODE_DIRS:
        for py in (REPO_ROOT / folder).rglob("*.py"):
            source = py.read_text()
            for what, pattern in SESSION_STATE.items():
                for m in pattern.finditer(source):
                    line = source.count("\n", 0, m.start()) + 1
                    found.append(f"{py.relative_to(REPO_ROOT)}:{line}: {what}")
    # user_sql names these only to refuse them in user SQL
    found = [f for f in found if not f.startswith("curation/user_sql.py")]
    assert not found, found


def test_the_rayjob_spec_is_a_valid_job():
    """The job spec the RayJob runs (ConfigMap curation-jobs, mounted where its entrypoint reads it)."""
    from curation.spec import parse_spec

    jobs = next(d for _, d in kube_docs() if d["metadata"]["name"] == "curation-jobs")
    rayjob = next(d for _, d in kube_docs() if d["kind"] == "RayJob")
    cluster = next(d for _, d in kube_docs() if d["kind"] == "RayCluster")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    mount = next(m["mountPath"] for m in head["containers"][0]["volumeMounts"]
                 if any(v["name"] == m["name"] and v.get("configMap", {}).get("name") == "curation-jobs"
                        for v in head["volumes"]))
    for text in jobs["data"].values():
        parse_spec(yaml.safe_load(text))
    assert f"{mount}/photos.yaml" in rayjob["spec"]["entrypoint"]
