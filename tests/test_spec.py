"""Job specs: a bad spec is refused at submission, with the field named; nothing is enqueued."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from sqlalchemy import text

from curation.spec import SpecError, parse_spec


def good_spec(folder) -> dict:
    return {
        "name": "t",
        "modality": "image",
        "source": {"uri": str(folder)},
        "stages": [{"name": "probe"}, {"name": "resolution"}, {"name": "phash"}, {"name": "edges"}],
        "export": {"where": "is_unique", "output": str(folder / "out")},
    }


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda s: s["stages"][1]["params"].update(min_side="big"), "stages[1].params.min_side"),
        (lambda s: s["stages"].append({"name": "nope"}), "stages[4].name: unknown stage 'nope'"),
        (lambda s: s.pop("source"), "source: Field required"),
        (lambda s: s.update(colour="red"), "colour: unknown field"),
        (lambda s: s["stages"].insert(0, s["stages"].pop(1)), "stages[0].name: stage 'resolution' needs stage 'probe'"),
        (lambda s: s.update(chunk_size=0), "chunk_size: Input should be greater than or equal to 1"),
        (lambda s: s.update(modality="audio"), "modality: Input should be 'image'"),
        (lambda s: s["export"].update(where="1=1; DROP TABLE assets"), "export.where"),
        (lambda s: s["stages"][0]["params"].update(max_pixels=-5), "max_pixels"),
    ],
)
def test_invalid_spec_names_the_field(tmp_path, mutate, field):
    spec = good_spec(tmp_path)
    for stage in spec["stages"]:
        stage.setdefault("params", {})
    mutate(spec)
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    assert field in str(info.value), str(info.value)


def test_param_error_message_names_stage_and_field(tmp_path):
    spec = good_spec(tmp_path)
    spec["stages"][1]["params"] = {"min_side": "big"}
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    assert "stages[1].params.min_side" in str(info.value)


def test_good_spec_parses_with_report_defaults(tmp_path):
    spec = parse_spec(good_spec(tmp_path))
    assert spec.stage_params(1).min_side == 256  # report §4.2
    assert spec.stage_params(2).max_distance == 8
    assert spec.chunk_size == 64


def test_cli_rejects_bad_spec_and_enqueues_nothing(tmp_path, engine, db_url, photo_dir):
    spec = good_spec(photo_dir)
    spec["stages"][1]["params"] = {"min_side": "big"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {"CURATION_DATABASE_URL": db_url, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "curation.cli", "submit", str(path)], capture_output=True,
                          text=True, env=env)
    assert proc.returncode != 0
    assert "stages[1].params.min_side" in proc.stderr
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM tasks")).scalar_one() == 0


def test_submit_refuses_unreachable_source_and_bad_predicate(engine, tmp_path, photo_dir):
    from curation.planner import submit

    spec = good_spec(tmp_path / "missing")
    with pytest.raises(SpecError, match="source.uri"):
        submit(engine, parse_spec(spec))
    spec = good_spec(photo_dir)
    spec["export"]["where"] = "no_such_column > 3"
    with pytest.raises(SpecError, match="export.where.*no_such_column"):
        submit(engine, parse_spec(spec))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM assets")).scalar_one() == 0


def test_stage_gpus_and_batch_size_are_validated():
    from curation.spec import SpecError, parse_spec

    spec = parse_spec({"name": "x", "modality": "image", "source": {"uri": "/tmp"},
                       "stages": [{"name": "probe", "batch_size": 8, "gpus": 0.5}]})
    assert spec.stages[0].batch_size == 8 and spec.stages[0].gpus == 0.5
    with pytest.raises(SpecError, match=r"stages\.0\.batch_size"):
        parse_spec({"name": "x", "modality": "image", "source": {"uri": "/tmp"},
                    "stages": [{"name": "probe", "batch_size": 0}]})


def test_models_run_on_the_cpu_when_no_gpu_is_visible(monkeypatch):
    import torch

    from models.clip import TINY, load_clip
    from models.device import onnx_providers, torch_device

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    assert torch_device() == "cpu" and onnx_providers()[-1] == "CPUExecutionProvider"
    assert load_clip(TINY).device == "cpu"


@pytest.mark.parametrize("stage, params, field", [
    ("motion", {"model": "brisque-live"}, "stages[1].params.model"),
    ("watermark", {"classifier": "clip-vit-b-32"}, "stages[1].params.classifier"),
    ("watermark", {"detector": "watermark-resnext101-32x8d"}, "stages[1].params.detector"),
    ("objects", {"model": "dover"}, "stages[1].params.model"),
    ("complexity", {"model": "topiq-nr-koniq"}, "stages[1].params.model"),
    ("topiq", {"technical_model": "brisque-live"}, "stages[1].params.technical_model"),
])
def test_a_model_of_another_family_is_refused_at_submission(tmp_path, stage, params, field):
    """One validator (models.registry.check_model) checks every model parameter's family."""
    from curation.spec import SpecError, parse_spec

    modality = "video" if stage == "motion" else "image"
    first = "video_probe" if modality == "video" else "probe"
    stages = [{"name": first}, {"name": stage, "params": params}]
    with pytest.raises(SpecError, match=field.replace("[", r"\[").replace("]", r"\]") + ".*model"):
        parse_spec({"name": "j", "modality": modality, "source": {"uri": str(tmp_path)}, "stages": stages})
