"""Fused CPU stages (``JobSpec.fuse_cpu_stages``, ``workers.runtime.StageWorker._run_fused``): probe →
resolution → phash → edges run as one pass per task on one read and one full decode of each file, and
write exactly what four tasks of their own write. Workers run in-process on real photos and broken files."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import text

from curation.sample_media import write_broken_files
from tests.conftest import ALL_TABLES
from tests.helpers import job_state, submit_spec
from workers.groups import fused_refs
from workers.runtime import StageWorker
from workers.stage import get_stage

STAGES = ["probe", "resolution", "phash", "edges"]


@pytest.fixture
def media_dir(photo_dir):
    write_broken_files(photo_dir, photo_dir / "rocket.jpg")
    return photo_dir


def submit(engine, folder, *, fuse: bool, name: str = "fused") -> int:
    return submit_spec(engine, {"name": name, "modality": "image", "source": {"uri": str(folder), "name": "photos"},
                                "stages": [{"name": s} for s in STAGES], "chunk_size": 8, "fuse_cpu_stages": fuse})


def drain(db_url, stages=STAGES) -> dict[str, dict]:
    return {s: StageWorker(db_url, s).run(idle_exit_s=0.3) for s in stages}


def snapshot(engine) -> dict[str, list[tuple]]:
    """Every row the stages wrote, keyed by file name (asset ids, times and the probe's decode time left out)."""
    out: dict[str, list[tuple]] = {}
    with engine.connect() as conn:
        for name in STAGES:
            table = get_stage(name).result_table
            rows = conn.execute(text(f"SELECT a.uri, r.* FROM {table} r JOIN assets a USING (asset_id)")).mappings()
            out[table] = sorted(tuple((k, bytes(v).hex() if isinstance(v, memoryview) else str(v)) for k, v in r.items() if k not in ("asset_id", "created_at", "decode_ms"))
                                for r in rows)
        out["item_errors"] = sorted(tuple(r) for r in conn.execute(text(
            "SELECT a.uri, e.stage, e.stage_version, e.error_class, e.message FROM item_errors e "
            "JOIN assets a USING (asset_id)")))
        out["job_configs"] = sorted(tuple(r) for r in conn.execute(text("SELECT stage, config_id FROM job_configs")))
        out["stage_configs"] = sorted(tuple(map(str, r)) for r in conn.execute(text(
            "SELECT config_id, stage, stage_version, params, models FROM stage_configs")))
        out["near_duplicates"] = sorted(tuple(map(str, r)) for r in conn.execute(text(
            "SELECT x.uri, y.uri, n.config_id, n.distance, n.stage_version, n.kind FROM near_duplicates n "
            "JOIN assets x ON x.asset_id = n.asset_id JOIN assets y ON y.asset_id = n.other_id")))
    return out


def test_fused_group_is_the_model_free_cpu_run():
    from curation.spec import JobSpec

    spec = JobSpec.model_validate({"name": "g", "modality": "image", "source": {"uri": "/x"},
                                   "stages": [{"name": s} for s in STAGES + ["quality"]]})
    assert fused_refs(spec, 0) == STAGES  # quality loads BRISQUE: a pool of its own
    assert fused_refs(spec, 2) == ["phash", "edges"]
    assert fused_refs(spec, 4) == ["quality"]
    off = spec.model_copy(update={"fuse_cpu_stages": False})
    assert fused_refs(off, 0) == ["probe"]


def test_fused_job_writes_exactly_what_the_unfused_job_writes(engine, db_url, media_dir):
    unfused = submit(engine, media_dir, fuse=False, name="unfused")
    drain(db_url)
    assert job_state(engine, unfused) == "completed"
    expected = snapshot(engine)
    assert len(expected["item_errors"]) == 4 and len(expected["edge_results"]) >= 8

    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {ALL_TABLES} RESTART IDENTITY CASCADE"))
    fused = submit(engine, media_dir, fuse=True, name="unfused")
    runs = drain(db_url, ["probe"])
    assert job_state(engine, fused) == "completed"
    assert runs["probe"]["items_ok"] == sum(len(expected[get_stage(s).result_table]) for s in STAGES)
    with engine.connect() as conn:  # no task ever queued for the stages inside the pass
        stages = set(conn.execute(text("SELECT DISTINCT stage FROM task_attempts")).scalars())
    assert stages == {"probe"}
    assert snapshot(engine) == expected


def test_each_file_is_read_once_and_fully_decoded_once(engine, db_url, media_dir, monkeypatch):
    import hashlib

    from PIL import ImageFile

    import curation.storage
    import workers.probe
    import workers.media_fetch

    reads: Counter = Counter()
    full: Counter = Counter()
    reduced: Counter = Counter()
    pixels: Counter = Counter()  # pixel decodes Pillow really ran, by the file's sha256
    real_read, real_decode = curation.storage.read_bytes, workers.media_fetch.decode_image
    real_probe_decode, real_load = workers.probe.decode_with_header, ImageFile.ImageFile.load

    def read_bytes(uri, *args, **kwargs):
        reads[uri] += 1
        return real_read(uri, *args, **kwargs)

    def decode_image(data, **kwargs):
        img = real_decode(data, **kwargs)
        what = kwargs.get("what", "")
        # a draft only reduces a JPEG; any other decode is a full one
        (reduced if kwargs.get("draft_size") and data[:3] == b"\xff\xd8\xff" else full)[what.split(" (")[0]] += 1
        return img

    def decode_with_header(data, **kwargs):
        full[kwargs.get("what", "").split(" (")[0]] += 1
        return real_probe_decode(data, **kwargs)

    def load(self):
        if self.tile and hasattr(self.fp, "getvalue"):  # not yet decoded: this call decodes the pixels
            pixels[hashlib.sha256(self.fp.getvalue()).digest()] += 1
        return real_load(self)

    monkeypatch.setattr(curation.storage, "read_bytes", read_bytes)
    monkeypatch.setattr(workers.probe, "decode_with_header", decode_with_header)
    monkeypatch.setattr(workers.media_fetch, "decode_image", decode_image)
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    job = submit(engine, media_dir, fuse=True)
    drain(db_url, ["probe"])
    assert job_state(engine, job) == "completed"
    with engine.connect() as conn:
        n_assets = conn.execute(text("SELECT count(*) FROM assets")).scalar_one()
        decoded = conn.execute(text("SELECT count(*) FROM probe_results")).scalar_one()
        jpegs = conn.execute(text("SELECT count(*) FROM probe_results WHERE format = 'JPEG'")).scalar_one()
        pngs = conn.execute(text("SELECT count(*) FROM probe_results WHERE format = 'PNG'")).scalar_one()
        shas = {bytes(s) for s in conn.execute(text("SELECT sha256 FROM probe_results")).scalars()}
    assert len(reads) == n_assets and set(reads.values()) == {1}
    assert len(full) >= decoded and set(full.values()) == {1}  # broken files too: one (failed) try each
    assert jpegs and not reduced  # phash and edges get reduced views of the probe's decode, no decode of their own
    # Pillow decoded each file's pixels once, PNGs included (whose EXIF orientation is read after the pixels)
    assert pngs and shas <= set(pixels) and set(pixels.values()) == {1}


def test_a_stage_that_raises_on_one_item_fails_only_that_stage_item(engine, db_url, media_dir, monkeypatch):
    phash = get_stage("phash")
    real = phash.process

    def process(self, items):
        if any(item.uri.endswith("coffee.png") for item in items):
            raise RuntimeError("phash exploded")
        return real(self, items)

    monkeypatch.setattr(phash, "process", process)
    job = submit(engine, media_dir, fuse=True)
    drain(db_url, ["probe"])
    assert job_state(engine, job) == "completed"
    with engine.connect() as conn:
        def has(table):
            return conn.execute(text(f"SELECT count(*) FROM {table} r JOIN assets a USING (asset_id) "
                                     "WHERE a.uri LIKE '%coffee.png'")).scalar_one()

        assert has("probe_results") == 1 and has("resolution_results") == 1
        assert has("phash_results") == 0 and has("edge_results") == 0  # not a survivor: edges never saw it
        errors = conn.execute(text("SELECT a.uri, e.stage, e.error_class FROM item_errors e JOIN assets a "
                                   "USING (asset_id) WHERE e.stage = 'phash'")).all()
        assert [(e.uri.rsplit("/", 1)[1], e.error_class) for e in errors] == [("coffee.png", "stage_error:RuntimeError")]
        others = conn.execute(text("SELECT count(*) FROM phash_results")).scalar_one()
        edges = conn.execute(text("SELECT count(*) FROM edge_results")).scalar_one()
    assert others >= 8 and edges == others


def test_a_group_task_gets_the_run_time_of_every_stage_it_runs(engine, db_url, media_dir, monkeypatch):
    """The first tasks (the submission) and retried tasks (``curation retry``) of a group's first stage
    run the whole group: their limit is the sum of the group's, as the runtime gives the tasks it enqueues."""
    from curation.jobs import retry

    group = sum(get_stage(s).max_runtime_s for s in STAGES)
    assert group > get_stage("probe").max_runtime_s
    job = submit(engine, media_dir, fuse=True, name="limits")
    with engine.connect() as conn:
        limits = conn.execute(text("SELECT DISTINCT max_runtime_s FROM tasks WHERE job_id = :j"), {"j": job}).scalars().all()
    assert limits == [group]
    drain(db_url, ["probe"])
    assert job_state(engine, job) == "completed"  # the broken files failed at the probe
    failed, n_tasks = retry(engine, job)
    assert failed >= 1 and n_tasks >= 1
    with engine.connect() as conn:
        retried = conn.execute(text("SELECT stage, max_runtime_s FROM tasks WHERE job_id = :j"), {"j": job}).all()
    assert {tuple(r) for r in retried} == {("probe", group)}


def test_running_the_job_again_scores_nothing(engine, db_url, media_dir):
    submit(engine, media_dir, fuse=True, name="first")
    first = drain(db_url, ["probe"])["probe"]
    with engine.connect() as conn:  # the attempt ledger counts the task's own items, not every stage's rows
        assert conn.execute(text("SELECT count(*) FROM task_attempts WHERE outcome = 'ok' AND n_ok > n_items")
                            ).scalar_one() == 0
    with engine.connect() as conn:
        before = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                  for t in ("probe_results", "resolution_results", "phash_results", "edge_results", "item_errors")}
    again = submit(engine, media_dir, fuse=True, name="again")
    second = drain(db_url, ["probe"])["probe"]
    assert first["items_ok"] > 0 and second["items_ok"] == 0 and second["item_errors"] == 0
    assert job_state(engine, again) == "completed"
    with engine.connect() as conn:
        after = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in before}
        configs = conn.execute(text("SELECT count(*) FROM job_configs WHERE job_id = :j"), {"j": again}).scalar_one()
    assert after == before and configs == len(STAGES)


def test_byte_identical_copies_reuse_results_in_a_fused_pass(engine, db_url, tmp_path, skimage_dir):
    import shutil

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for name in ("astronaut.png", "rocket.jpg"):
        shutil.copyfile(skimage_dir / name, tmp_path / "a" / name)
        shutil.copyfile(skimage_dir / name, tmp_path / "b" / ("copy-of-" + name))
    submit(engine, tmp_path / "a", fuse=True, name="originals")
    drain(db_url, ["probe"])
    submit(engine, tmp_path / "b", fuse=True, name="copies")
    run = drain(db_url, ["probe"])["probe"]
    # the copies' sha256 comes from this very pass; resolution, phash and edges take the originals' results
    assert run["reused"] == 3 * 2 and run["items_ok"] == 4 * 2
    with engine.connect() as conn:
        same = conn.execute(text(
            "SELECT count(*) FROM edge_results x JOIN edge_results y ON x.asset_id < y.asset_id "
            "AND x.config_id = y.config_id AND x.edge_density = y.edge_density")).scalar_one()
    assert same == 2


def test_the_first_stage_pool_is_sized_for_its_group():
    from curation.spec import JobSpec
    from workers.supervisor import fused_memory, fused_pool_maxima

    spec = JobSpec.model_validate({"name": "g", "modality": "image", "source": {"uri": "/x"},
                                   "stages": [{"name": s} for s in STAGES + ["quality"]]})
    pools = {"probe": 1, "resolution": 4, "phash": 2, "edges": 2, "quality": 1}
    assert fused_pool_maxima(pools, [spec])["probe"] == 4
    assert fused_pool_maxima(pools, [spec])["quality"] == 1
    assert fused_memory(pools, [spec])["probe"] == 1.5 * 2**30  # edges' memory on the probe's actors
    unplaceable = JobSpec.model_validate({"name": "u", "modality": "image", "source": {"uri": "/x"},
                                          "stages": [{"name": "probe"}, {"name": "tests.stages:UnplaceableEdges"}]})
    assert fused_refs(unplaceable, 0) == ["probe"]  # 64 CPUs do not run on the probe's one
