"""Settings: where the state folder is found."""

from __future__ import annotations

import os


def test_the_state_folder_is_found_from_a_subfolder(tmp_path):
    from curation.config import find_home

    (tmp_path / ".curation" / "pg").mkdir(parents=True)
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert find_home(deep) == tmp_path / ".curation"
    elsewhere = tmp_path.parent / (tmp_path.name + "-other")
    elsewhere.mkdir()
    assert find_home(elsewhere) == elsewhere / ".curation"


def test_weights_are_found_from_a_subfolder_beside_the_database(tmp_path, monkeypatch):
    """``curation models pull`` in the project folder, a job from a subfolder: both see the state folder's
    weights (the default used to be ``./.curation/weights`` of each working folder); the variables win."""
    import subprocess
    import sys

    from models.registry import weights_dir

    (tmp_path / ".curation" / "pg").mkdir(parents=True)
    deep = tmp_path / "jobs" / "today"
    deep.mkdir(parents=True)
    monkeypatch.delenv("CURATION_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("CURATION_HOME", raising=False)
    for folder in (tmp_path, deep):
        monkeypatch.chdir(folder)
        assert weights_dir() == tmp_path / ".curation" / "weights"
    env = {k: v for k, v in os.environ.items() if k not in ("CURATION_WEIGHTS_DIR", "CURATION_HOME")}
    env["COLUMNS"] = "400"
    proc = subprocess.run([sys.executable, "-m", "curation.cli", "models", "list"], cwd=deep, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"weights dir: {tmp_path / '.curation' / 'weights'}" in proc.stdout.replace("\n", "")
    monkeypatch.setenv("CURATION_HOME", str(tmp_path / "state"))
    assert weights_dir() == tmp_path / "state" / "weights"
    monkeypatch.setenv("CURATION_WEIGHTS_DIR", str(tmp_path / "w"))
    assert weights_dir() == tmp_path / "w"
