"""Data flows one way (job spec → planner → broker → runtime → stage → results → export): checked on
the source with ``ast``, so a back-reaching import fails here before it tangles the layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("curation", "workers", "models", "training", "bench")

# storage, media decoding, the database and the broker: the ground the stages and the trainer stand on
GROUND = ("curation/storage.py", "curation/media.py", "curation/video.py", "curation/db.py", "curation/schema.py",
          "curation/embedded.py", "curation/broker.py")


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Every module an import statement of ``path`` names (at any depth, conditional or lazy ones too),
    with each ``from X import name`` also as ``X.name`` (it may be a submodule)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def reaches(names: set[str], package: str) -> list[str]:
    return sorted(n for n in names if n == package or n.startswith(package + "."))


def test_the_walker_sees_nested_and_from_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import os\n\ndef f():\n    from workers import stage\n    import training.flow as flow\n")
    names = imported(src)
    assert reaches(names, "workers") == ["workers", "workers.stage"]
    assert reaches(names, "training") == ["training.flow"]


@pytest.mark.parametrize("rel", GROUND)
def test_storage_media_and_database_import_neither_workers_nor_training(rel):
    names = imported(ROOT / rel)
    assert reaches(names, "workers") + reaches(names, "training") == [], (
        f"{rel} reaches up into the stages or the trainer: move that code up a layer")


def test_models_do_not_import_the_demo_media():
    offenders = {str(p.relative_to(ROOT)): reaches(imported(p), "curation.sample_media")
                 for p in (ROOT / "models").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}, (
        "models/ must not import curation.sample_media (Debian package files: models.debian_files)")


def test_only_the_cli_imports_typer():
    users = sorted(str(p.relative_to(ROOT)) for p in modules() if reaches(imported(p), "typer"))
    assert users == ["curation/cli.py"]


def spec_readers(path: Path) -> set[str]:
    """``file:function`` of each SQL string in ``path`` that selects ``spec`` from ``jobs``."""
    found: set[str] = set()

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, child.name)
            elif isinstance(child, ast.Constant) and isinstance(child.value, str):
                sql = " ".join(child.value.split())
                if "FROM jobs" in sql and "spec" in sql.split("FROM jobs")[0].split("SELECT")[-1]:
                    found.add(f"{path.relative_to(ROOT)}:{where}")
            else:
                visit(child, where)

    visit(ast.parse(path.read_text()), "<module>")
    return found


# owned by other changes in flight: each should call curation.jobs.load_job(engine, job_id).spec
NOT_YET: set[str] = set()


def test_the_spec_is_read_from_the_jobs_table_in_one_place():
    """``curation.jobs`` reads and parses a job's spec (``load_job``); nothing else selects it."""
    readers = set().union(*(spec_readers(p) for p in modules()))
    assert readers - NOT_YET == {"curation/jobs.py:<module>"}
