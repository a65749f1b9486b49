"""The files in examples/: both job specs validate with the spec loader, their export predicates are
valid SQL on their views, and the training config loads with the trainer's loader."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from curation.spec import load_spec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
JOBS = {"image-job.yaml": "image", "video-job.yaml": "video"}


@pytest.mark.parametrize("name", JOBS)
def test_example_job_spec_validates(name):
    spec = load_spec(EXAMPLES / name)
    assert spec.modality == JOBS[name] and spec.export is not None
    assert [s.name for s in spec.stages][0] == ("probe" if JOBS[name] == "image" else "video_probe")


def test_example_export_predicates_run_on_their_views(engine):
    with engine.connect() as conn:
        for name in JOBS:
            spec = load_spec(EXAMPLES / name)
            assert conn.execute(text(f"SELECT count(*) FROM {spec.view} WHERE {spec.export.where}")).scalar_one() == 0


def test_example_training_config_loads():
    from training.configs import CONFIGS
    from training.train import TrainConfig

    cfg = TrainConfig.load(EXAMPLES / "train-tiny.yaml")
    assert cfg.model in CONFIGS and cfg.text_encoders == "tiny" and cfg.image_share == 1.0
