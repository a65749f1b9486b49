"""The installed ``curation`` entry point (``.venv/bin/curation``) run from a folder outside the
repository: the packages it imports are this project's (a dependency that installs a top-level
``training`` package, as sam2 1.1.0 did, would shadow ours there), and a tiny curate → encode → train →
sample run works from that folder."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

from tests.helpers import submit_spec
from tests.test_cli import drain

REPO = Path(__file__).resolve().parents[1]
CURATION = Path(sys.executable).parent / "curation"


def installed(args: list[str], cwd: Path, db_url: str | None = None) -> subprocess.CompletedProcess:
    """Run the installed entry point in ``cwd``; PYTHONPATH is dropped so nothing points at the repository."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["COLUMNS"] = "200"
    if db_url is not None:
        env["CURATION_DATABASE_URL"] = db_url
    proc = subprocess.run([str(CURATION), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"curation {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_training_is_this_projects_package_wherever_python_starts(tmp_path):
    assert Path(importlib.util.find_spec("training").origin).is_relative_to(REPO / "training")
    assert set(importlib.metadata.packages_distributions()["training"]) == {"curation"}  # no dependency ships one
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    origin = subprocess.run([sys.executable, "-c", "import importlib.util; print(importlib.util.find_spec('training').origin)"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(origin).is_relative_to(REPO / "training")


def test_help_of_the_installed_entry_point_outside_the_repository(tmp_path):
    assert CURATION.is_file(), f"{CURATION} is missing: run scripts/bootstrap.sh"
    out = installed(["--help"], tmp_path).stdout
    for verb in ("submit", "run", "encode", "train", "sample", "soup", "estimate", "models"):
        assert verb in out
    assert "--data" in installed(["train", "--help"], tmp_path).stdout
    assert "--prompt" in installed(["sample", "--help"], tmp_path).stdout


def test_encode_train_sample_with_the_installed_entry_point(engine, db_url, skimage_dir, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut.png", "coffee.png", "chelsea.png"):
        shutil.copyfile(skimage_dir / name, photos / name)
    job = submit_spec(engine, {"name": "installed", "modality": "image", "source": {"uri": str(photos)},
                               "stages": [{"name": "probe"}, {"name": "resolution"}]})
    drain(db_url, "probe")
    drain(db_url, "resolution")
    work = tmp_path / "elsewhere"  # relative paths below resolve here, not in the repository
    work.mkdir()
    installed(["encode", "--job", str(job), "--where", "short_side >= 256", "--vae", "tiny", "--allow-uncaptioned",
               "--output", "shards"],
              work, db_url)
    assert len(list((work / "shards").rglob("*.tar"))) >= 1
    installed(["train", str(REPO / "examples" / "train-tiny.yaml"), "--data", "shards", "--out", "run", "--steps", "2"],
              work, db_url)
    assert torch.load(work / "run" / (work / "run" / "latest").read_text(), weights_only=False)["step"] == 2
    installed(["sample", "run", "--prompt", "a photo", "--vae", "tiny", "--steps", "2", "--height", "128", "--width", "128",
               "--out", "fox.png"], work, db_url)
    assert Image.open(work / "fox.png").size == (128, 128)
