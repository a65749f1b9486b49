"""``curation report``: the HTML report of a small real-photo job (probe → resolution → phash → edges →
thumbnail, a broken file and a duplicate among the photos) holds every section, every inlined image
decodes, nothing is fetched from the network, and headless Chromium draws it."""

from __future__ import annotations

import base64
import io
import re
import shutil

from PIL import Image

from curation.report_html import SECTIONS, render
from tests.browser import is_blank, screenshot
from tests.helpers import submit_spec

PHOTOS = ("astronaut.png", "rocket.jpg", "coffee.png", "chelsea.png", "camera.png", "coins.png")
STAGES = ("probe", "resolution", "phash", "edges", "thumbnail")


def small_job(engine, db_url, skimage_dir, tmp_path) -> int:
    from workers.runtime import StageWorker

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in PHOTOS:
        shutil.copyfile(skimage_dir / name, folder / name)
    shutil.copyfile(skimage_dir / "coffee.png", folder / "coffee-copy.png")  # an exact duplicate
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # an item error
    spec = {"name": "report", "modality": "image", "source": {"uri": str(folder), "name": "skimage"},
            "stages": [{"name": "probe"}, {"name": "resolution", "params": {"min_side": 400}},
                       {"name": "phash"}, {"name": "edges"},
                       {"name": "thumbnail", "params": {"output": str(tmp_path / "thumbs")}}],
            "chunk_size": 4}
    job_id = submit_spec(engine, spec)
    for stage in STAGES:
        StageWorker(db_url, stage, sweep=False).run(idle_exit_s=0.5)
    return job_id


def test_report_of_a_small_real_photo_job(engine, db_url, skimage_dir, tmp_path):
    job_id = small_job(engine, db_url, skimage_dir, tmp_path)
    page = render(engine, job_id)

    for section in SECTIONS:
        assert f'<section id="{section}">' in page, section
    for stage in STAGES:  # the funnel names every stage the job ran
        assert f"<td>{stage}</td>" in page
    # histograms of the score columns, the resolution threshold marked on short_side
    assert 'data-column="short_side"' in page and 'data-column="edge_density"' in page
    assert "resolution.min_side = 400" in page
    # kept and dropped thumbnails near the threshold, the item error with its example
    strips = page[page.index('<section id="strips">'):page.index('<section id="errors">')]
    assert 'class="strip kept"' in strips and 'class="strip dropped"' in strips
    assert strips.count("data:image/webp;base64,") >= 4
    errors = page[page.index('<section id="errors">'):]
    assert "<td>probe</td>" in errors and "broken.jpg" in errors
    assert "durations" in page and "no scenes" in page
    # self-contained: no external references; every inlined image decodes
    assert not re.search(r'(src|href)="(https?:)?//', page)
    images = re.findall(r'src="data:image/(png|webp);base64,([^"]+)"', page)
    assert len(images) >= 10
    for fmt, data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            im.load()
            assert im.format == fmt.upper() and im.width > 0

    out = tmp_path / "report.html"
    out.write_text(page, encoding="utf-8")
    shot = screenshot(out.as_uri(), tmp_path / "report.png")
    assert not is_blank(shot)


def test_report_cli(engine, db_url, skimage_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from curation.cli import app

    job_id = small_job(engine, db_url, skimage_dir, tmp_path)
    monkeypatch.setenv("CURATION_DATABASE_URL", db_url)
    out = tmp_path / "r" / "report.html"
    result = CliRunner().invoke(app, ["report", str(job_id), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text().count("<section id=") == len(SECTIONS)
    missing = CliRunner().invoke(app, ["report", "999999", "--out", str(out)])
    assert missing.exit_code == 1 and "no job 999999" in missing.output
