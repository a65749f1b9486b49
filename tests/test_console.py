"""``curation serve``, the web console: its routes against the embedded database and a small real-photo job
(probe → resolution → phash → thumbnail, a broken file among the photos), and one run in headless
Chromium while a worker is running the job: progress advances, a slice shows loaded thumbnails, an asset
shows its results with their config ids, an export is recorded, a hostile predicate is refused."""

from __future__ import annotations

import html
import io
import re
import shutil
import socket
import threading
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import text

from curation.console import ConsoleConfigError, check_bind, create_app
from tests.helpers import submit_spec

PHOTOS = ("astronaut.png", "rocket.jpg", "coffee.png", "chelsea.png", "camera.png", "coins.png")
STAGES = ("probe", "resolution", "phash", "thumbnail")
HOSTILE_NAME = "[/] <script>alert('x')</script> & co"
TOKEN = "a-console-token-of-24-chars"
HOSTILE_PREDICATES = (
    "1=1; DROP TABLE assets",
    "COMMIT; DELETE FROM jobs",
    "true) OR (1=1",
    "(select 1) --",
    "true /* */",
    "asset_id IN (SELECT asset_id FROM assets FOR UPDATE)",
    "set_config('default_transaction_read_only', 'off', false) IS NOT NULL",
    "EXISTS (WITH d AS (DELETE FROM jobs RETURNING 1) SELECT 1 FROM d)",
    "no_such_column > 1",
)


def submit_job(engine, skimage_dir, tmp_path, name: str = HOSTILE_NAME, *, fuse: bool = True,
               thumbnails: str | None = None) -> int:
    """``fuse=False``: each stage in its own worker, so progress moves in visible steps, one per stage."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in PHOTOS:
        shutil.copyfile(skimage_dir / photo, folder / photo)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # an item error
    spec = {"name": name, "modality": "image", "source": {"uri": str(folder), "name": "skimage"},
            "stages": [{"name": "probe"}, {"name": "resolution", "params": {"min_side": 400}}, {"name": "phash"},
                       {"name": "thumbnail", "params": {"output": thumbnails or str(tmp_path / "thumbs")}}],
            "chunk_size": 2, "fuse_cpu_stages": fuse}
    return submit_spec(engine, spec)


def run_stages(db_url: str, pause_s: float = 0.0) -> None:
    from workers.runtime import StageWorker

    for stage in STAGES:
        StageWorker(db_url, stage, sweep=False).run(idle_exit_s=0.3)
        time.sleep(pause_s)


@pytest.fixture
def done_job(engine, db_url, skimage_dir, tmp_path) -> int:
    job_id = submit_job(engine, skimage_dir, tmp_path)
    run_stages(db_url)
    return job_id


def client_for(engine, tmp_path, **kwargs) -> TestClient:
    return TestClient(create_app(engine, export_root=tmp_path / "exports", **kwargs), base_url="http://127.0.0.1:8765")


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)


def snapshot(engine) -> dict[str, int]:
    """Every table of the schema with its row count."""
    with engine.connect() as conn:
        tables = conn.execute(text("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
                                   "AND table_type = 'BASE TABLE'")).scalars().all()
        return {t: conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar_one() for t in sorted(tables)}


# --- routes -----------------------------------------------------------------------------------------


def test_pages_of_a_finished_job(engine, done_job, tmp_path):
    client = client_for(engine, tmp_path)
    home = client.get("/")
    assert home.status_code == 200
    assert "&lt;script&gt;alert(" in home.text and "<script>alert(" not in home.text  # the name is text
    assert home.headers["content-security-policy"].startswith("default-src 'self'")
    progress = client.get(f"/api/jobs/{done_job}").json()
    assert progress["status"] == "completed" and progress["name"] == HOSTILE_NAME
    by_stage = {s["stage"]: s for s in progress["stages"]}
    assert by_stage["probe"]["scored"] == len(PHOTOS) and by_stage["probe"]["errors"] == 1
    assert by_stage["thumbnail"]["scored"] >= 4

    job = client.get(f"/jobs/{done_job}")
    assert job.status_code == 200
    assert "&lt;script&gt;" in job.text and "<script>alert(" not in job.text
    assert "resolution ok" in job.text and "broken.jpg" in job.text  # funnel and the item error

    grid = client.get("/slice", params={"job": done_job, "where": "short_side >= 400 AND thumbnail_uri IS NOT NULL"})
    assert grid.status_code == 200, grid.text
    assets = [int(a) for a in re.findall(r'data-asset="(\d+)"', grid.text)]
    assert len(assets) >= 3
    for asset_id in assets:
        picture = client.get(f"/thumbnails/{asset_id}", params={"job": done_job})
        assert picture.status_code == 200 and picture.headers["content-type"] == "image/webp"
        with Image.open(io.BytesIO(picture.content)) as im:
            assert im.format == "WEBP" and max(im.size) <= 256
    assert "short_side" in grid.text  # a score on the card
    narrower = client.get("/slice", params={"job": done_job, "where": "short_side >= 100000"})
    assert narrower.status_code == 200 and 'data-asset="' not in narrower.text
    paged = client.get("/slice", params={"job": done_job, "where": "true", "page": 1})
    assert paged.status_code == 200 and 'data-asset="' not in paged.text  # one page holds the whole job

    asset = client.get(f"/assets/{assets[0]}", params={"job": done_job})
    assert asset.status_code == 200
    configs = re.findall(r'data-config="([^"]+)"', asset.text)
    assert {c.split(":")[0] for c in configs} >= {"probe", "resolution", "phash", "thumbnail"}
    assert "params:" in asset.text and "sha256" in asset.text
    assert client.get("/assets/999999").status_code == 404

    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "text/plain" in metrics.headers["content-type"]
    assert 'curation_jobs{status="completed"} 1.0' in metrics.text

    exported = client.post("/slice/export", data={"job": done_job, "where": "is_unique", "csrf": csrf_of(grid.text)},
                           headers={"Origin": "http://127.0.0.1:8765"})
    assert exported.status_code == 200, exported.text
    assert re.search(r"export \d+ recorded: \d+ row", exported.text)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT job_id, predicate, output_uri, n_rows FROM exports")).one()
    assert row.job_id == done_job and row.predicate == "is_unique" and row.n_rows >= 4
    assert row.output_uri.startswith(str(tmp_path / "exports")) and list((tmp_path / "exports").rglob("*.parquet"))


def test_hostile_predicates_are_refused_and_change_nothing(engine, done_job, tmp_path):
    client = client_for(engine, tmp_path, query_timeout_s=1.0)
    csrf = csrf_of(client.get(f"/jobs/{done_job}").text)
    before = snapshot(engine)
    for predicate in (*HOSTILE_PREDICATES, "pg_sleep(5) IS NOT NULL"):
        shown = client.get("/slice", params={"job": done_job, "where": predicate})
        assert shown.status_code == 400, predicate
        message = re.search(r'<p class="error" id="error">(.*?)</p>', shown.text, re.DOTALL).group(1)
        assert message.strip(), predicate
        assert 'data-asset="' not in shown.text
        exported = client.post("/slice/export", data={"job": done_job, "where": predicate, "csrf": csrf})
        assert exported.status_code == 400 and "export refused" in exported.text, predicate
    assert snapshot(engine) == before  # no table gone, no row written or deleted, no export recorded
    semicolon = html.unescape(client.get("/slice", params={"where": "1=1; DROP TABLE assets"}).text)
    assert "no ';'" in semicolon and "nothing was run" in semicolon
    assert "comments" in html.unescape(client.get("/slice", params={"where": "(select 1) --"}).text)
    assert "statement timeout" in client.get("/slice", params={"where": "pg_sleep(5) IS NOT NULL"}).text


def test_thumbnails_are_only_stored_uris(engine, done_job, tmp_path):
    client = client_for(engine, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0 do not serve me")
    for path in ("/thumbnails/..%2F..%2Fetc%2Fpasswd", "/thumbnails/%2Fetc%2Fpasswd", "/thumbnails/../../etc/passwd",
                 f"/thumbnails/{secret}", f"/thumbnails/%2e%2e%2f{secret.name}", "/thumbnails/1%2F..%2F..%2Fsecret.txt",
                 "/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/app.py", f"/static/{secret}",
                 "/thumbnails/-1", "/thumbnails/999999"):
        r = client.get(path)
        assert r.status_code in (404, 422), (path, r.status_code)
        assert b"root:" not in r.content and b"import" not in r.content, path
    with engine.connect() as conn:  # an asset without a thumbnail (the broken file)
        broken = conn.execute(text("SELECT asset_id FROM assets WHERE uri LIKE '%broken.jpg'")).scalar_one()
    assert client.get(f"/thumbnails/{broken}").status_code == 404


def test_slice_pages_and_s3_thumbnails(engine, db_url, skimage_dir, tmp_path, s3_bucket):
    from curation.slices import read_slice

    job_id = submit_job(engine, skimage_dir, tmp_path, thumbnails=f"s3://{s3_bucket}/thumbs")
    run_stages(db_url)
    pages = [read_slice(engine, "decoded", job_id=job_id, page=p, per_page=4) for p in range(3)]
    assert [len(p.rows) for p in pages] == [4, 2, 0] and [p.more for p in pages] == [True, False, False]
    ids = [r.asset_id for p in pages for r in p.rows]
    assert ids == sorted(ids) and len(set(ids)) == len(PHOTOS)
    assert read_slice(engine, "uri LIKE '%coffee%' AND uri NOT LIKE '%:%'", job_id=job_id).rows  # '%', ':' literal

    client = client_for(engine, tmp_path)
    shown = client.get("/slice", params={"job": job_id, "where": "thumbnail_uri LIKE 's3://%'"})
    assets = [int(a) for a in re.findall(r'data-asset="(\d+)"', shown.text)]
    assert len(assets) >= 4
    for asset_id in assets:
        picture = client.get(f"/thumbnails/{asset_id}")
        assert picture.status_code == 200
        with Image.open(io.BytesIO(picture.content)) as im:
            assert im.format == "WEBP"


def test_scene_slices_show_contact_sheets(engine, db_url, media_cache, tmp_path):
    from curation.sample_media import MediaUnavailable, sample_clips
    from tests.missing import unavailable
    from workers.runtime import StageWorker

    try:
        clips = sample_clips(media_cache)
    except MediaUnavailable as exc:
        unavailable(f"real clips unavailable: {exc}")
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("vtest", "bigbuckbunny"):
        shutil.copyfile(clips[name], folder / clips[name].name)
    job_id = submit_spec(engine, {
        "name": "scenes", "modality": "video", "source": {"uri": str(folder), "name": "clips"},
        "stages": [{"name": "video_probe"}, {"name": "scenes"},
                   {"name": "video_thumbnail", "params": {"output": str(tmp_path / "sheets"), "frames": 4}}]})
    for stage in ("video_probe", "scenes", "video_thumbnail"):
        StageWorker(db_url, stage, sweep=False).run(idle_exit_s=0.3)

    client = client_for(engine, tmp_path)
    shown = client.get("/slice", params={"job": job_id, "where": "thumbnail_uri IS NOT NULL"})
    assert shown.status_code == 200 and "curated_scenes" in shown.text, shown.text
    scenes = [int(a) for a in re.findall(r'data-asset="(\d+)"', shown.text)]
    assert scenes
    with Image.open(io.BytesIO(client.get(f"/thumbnails/{scenes[0]}").content)) as sheet:
        assert sheet.format == "WEBP" and max(sheet.size) <= 512
    scene = client.get(f"/assets/{scenes[0]}", params={"job": job_id})
    assert "scene" in scene.text and "parent" in scene.text
    assert "video_thumbnail:" in scene.text


def test_token_rule(engine, done_job, tmp_path, monkeypatch):
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("localhost", None)
    check_bind("0.0.0.0", TOKEN)
    for host in ("0.0.0.0", "::", "192.168.1.20", "console.example.org"):
        with pytest.raises(ConsoleConfigError, match="needs a token"):
            check_bind(host, None)
    with pytest.raises(ConsoleConfigError, match="at least 16"):
        check_bind("0.0.0.0", "short")

    from typer.testing import CliRunner

    from curation.cli import app

    monkeypatch.delenv("CURATION_CONSOLE_TOKEN", raising=False)
    refused = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--port", "1"])
    assert refused.exit_code == 2 and "needs a token" in refused.output

    open_ = client_for(engine, tmp_path)  # no token: loopback names only (DNS rebinding)
    assert open_.get("/", headers={"Host": "localhost:8765"}).status_code == 200
    assert open_.get("/", headers={"Host": "[::1]:8765"}).status_code == 200
    for host in ("rebound.example:8765", "rebound.example", "10.0.0.5:8765"):
        assert open_.get("/api/jobs", headers={"Host": host}).status_code == 403, host

    client = client_for(engine, tmp_path, token=TOKEN)
    for path in ("/", f"/jobs/{done_job}", "/api/jobs", "/metrics", "/slice", "/thumbnails/1", "/static/console.js"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"Authorization": "Bearer wrong-token-wrong-token"}).status_code == 401
    assert client.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/metrics", headers={"X-Curation-Token": TOKEN}).status_code == 200
    assert client.get("/?token=wrong").status_code == 401
    bounced = client.get(f"http://127.0.0.1:8765//evil.example/?token={TOKEN}", follow_redirects=False)
    assert bounced.headers["location"] == "/evil.example/"  # never an off-site redirect
    opened = client.get(f"/jobs/{done_job}?token={TOKEN}", follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"] == f"/jobs/{done_job}"
    assert "httponly" in opened.headers["set-cookie"].lower() and "samesite=strict" in opened.headers["set-cookie"].lower()
    assert client.get(f"/jobs/{done_job}").status_code == 200  # the cookie now carries it
    assert client.post(f"/jobs/{done_job}/retry", data={"csrf": "x"}).status_code == 403  # token, but no CSRF


def test_serve_command(db_url, tmp_path):
    """``curation serve`` as a user starts it: the console answers on loopback, and with a token only to it."""
    import os
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    port = _free_port()
    env = {**os.environ, "CURATION_DATABASE_URL": db_url, "CURATION_CONSOLE_TOKEN": TOKEN,
           "CURATION_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen([sys.executable, "-m", "curation.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
            except urllib.error.HTTPError as exc:
                assert exc.code == 401  # up, and the token from the environment is required
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else ""
                time.sleep(0.2)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=10) as page:
            assert page.status == 200 and b"<h1>Jobs</h1>" in page.read()
    finally:
        proc.terminate()
        proc.wait(20)


def test_cancel_and_retry_are_csrf_safe_posts(engine, db_url, skimage_dir, tmp_path):
    job_id = submit_job(engine, skimage_dir, tmp_path, name="to cancel")
    client = client_for(engine, tmp_path)
    csrf = csrf_of(client.get(f"/jobs/{job_id}").text)
    assert client.get(f"/jobs/{job_id}/cancel").status_code == 405  # never a GET
    assert client.post(f"/jobs/{job_id}/cancel", data={}).status_code == 403
    assert client.post(f"/jobs/{job_id}/cancel", data={"csrf": "0" * 64}).status_code == 403
    evil = client.post(f"/jobs/{job_id}/cancel", data={"csrf": csrf}, headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403 and "cross-origin" in evil.text
    assert client.get(f"/api/jobs/{job_id}").json()["status"] == "running"

    done = client.post(f"/jobs/{job_id}/cancel", data={"csrf": csrf}, headers={"Origin": "http://127.0.0.1:8765"})
    assert done.status_code == 200 and "cancelled;" in done.text  # followed the 303 to the job page
    assert client.get(f"/api/jobs/{job_id}").json()["status"] == "cancelled"
    again = client.post(f"/jobs/{job_id}/cancel", data={"csrf": csrf})
    assert again.status_code == 409 and "not running" in again.text

    retried = client.post(f"/jobs/{job_id}/retry", data={"csrf": csrf})
    assert retried.status_code == 200 and "failed item(s) re-enqueued" in retried.text
    assert client.post("/jobs/999999/cancel", data={"csrf": csrf}).status_code == 404


# --- a real browser ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def console_url(engine, tmp_path):
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(engine, export_root=tmp_path / "exports", query_timeout_s=5),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def browser():
    import os

    from tests.browser import FLAGS, chromium
    from tests.missing import unavailable

    binary = chromium()
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not os.path.exists(driver_path):
        unavailable("chromedriver not installed (apt-get install chromium-driver; scripts/bootstrap.sh does it)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = binary
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument("--window-size=1280,1600")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_console_in_a_browser_during_a_running_job(engine, db_url, skimage_dir, tmp_path, console_url, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    job_id = submit_job(engine, skimage_dir, tmp_path, fuse=False)
    wait = WebDriverWait(browser, 60, poll_frequency=0.1)
    browser.get(console_url + "/")
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{job_id}"]')
    assert row.find_element(By.CSS_SELECTOR, ".job-name").text == HOSTILE_NAME  # shown as text, not run

    def done() -> int:
        return int(browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{job_id}"] [data-field="done"]').text)

    assert done() == 0

    worker = threading.Thread(target=run_stages, args=(db_url, 1.5), daemon=True)
    worker.start()
    seen = [0]
    deadline = time.monotonic() + 120
    while worker.is_alive() and time.monotonic() < deadline:  # the page polls; no reload
        value = done()
        if value != seen[-1]:
            seen.append(value)
        time.sleep(0.2)
    worker.join(30)
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f'tr[data-job="{job_id}"] [data-field="status"]').text
               == "completed")
    seen.append(done())
    assert seen == sorted(seen) and len(set(seen)) >= 3, seen  # progress advanced in steps while it ran

    browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{job_id}"] a').click()
    wait.until(lambda d: d.find_element(By.ID, "funnel"))
    assert "broken.jpg" in browser.find_element(By.ID, "errors").text
    box = browser.find_element(By.ID, "where")
    box.clear()
    box.send_keys("short_side >= 400 AND is_unique")
    browser.find_element(By.ID, "filter").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#grid img.thumb"))
    wait.until(lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
                             for img in d.find_elements(By.CSS_SELECTOR, "#grid img.thumb")))
    thumbs = browser.find_elements(By.CSS_SELECTOR, "#grid img.thumb")
    assert len(thumbs) >= 3
    assert all(browser.execute_script("return arguments[0].naturalWidth", img) > 0 for img in thumbs)
    slice_url = browser.current_url

    thumbs[0].click()
    wait.until(lambda d: d.find_elements(By.ID, "results"))
    configs = [el.text for el in browser.find_elements(By.CSS_SELECTOR, "#results .config-id code")]
    assert {c.split(":")[0] for c in configs} >= {"probe", "resolution", "phash", "thumbnail"}, configs
    assert "params:" in browser.find_element(By.ID, "results").text
    assert browser.execute_script("return document.querySelector('img.thumb').naturalWidth") > 0

    browser.get(slice_url)
    browser.find_element(By.ID, "export").click()
    notice = wait.until(lambda d: d.find_elements(By.ID, "notice"))[0].text
    assert re.match(r"export \d+ recorded: [1-9]\d* row", notice), notice
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM exports WHERE job_id = :j"), {"j": job_id}).scalar_one() == 1

    before = snapshot(engine)
    box = browser.find_element(By.ID, "where")
    box.clear()
    box.send_keys("1=1; DROP TABLE assets")
    browser.find_element(By.ID, "filter").click()
    refusal = wait.until(lambda d: d.find_elements(By.ID, "error"))[0].text
    assert "no ';'" in refusal and "nothing was run" in refusal
    assert not browser.find_elements(By.CSS_SELECTOR, "#grid img")
    assert snapshot(engine) == before
