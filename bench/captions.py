"""Captioning throughput: the platform against the model called directly, and the HTTP backend's client.

1. transformers backend, on the same real photos (scikit-image's) and the same batch size:
     direct    ``model.generate`` on the processor's batch (chat prompt + images), greedy — the ceiling
     stage     ``CaptionStage.process`` (prompt building, generation, the report's post-processing)
     runtime   the ``caption`` stage's worker draining a submitted job (media read and decoded, results
               and the job's bookkeeping written to an embedded PostgreSQL) — the platform end to end
   captions/s and generated tokens/s of each, and the ratios to direct. English captions only (no Russian
   pass), the same ``max_tokens`` and pixels per image.
2. openai backend: requests/s of ``OpenAICaptioner.generate`` against a local chat-completions server that
   answers a fixed completion after ``--latency-ms`` (what the client and its concurrency limit sustain),
   at concurrency 1, 8 and 32.

  python bench/captions.py [--model qwen-vl-tiny-random] [--images 6] [--batch 3] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def direct(vlm, images, batch: int, max_tokens: int, max_pixels: int, prompt: str) -> tuple[float, int]:
    """Seconds and generated tokens of ``model.generate`` on the batches."""
    import torch

    proc = vlm.processor
    proc.tokenizer.padding_side = "left"
    least = proc.image_processor.size["shortest_edge"]
    chat = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}],
                                    tokenize=False, add_generation_prompt=True)
    tokens, start = 0, time.perf_counter()
    for i in range(0, len(images), batch):
        group = images[i:i + batch]
        inputs = proc(text=[chat] * len(group), images=group, return_tensors="pt", padding=True,
                      images_kwargs={"size": {"shortest_edge": min(least, max_pixels), "longest_edge": max_pixels}})
        inputs = {k: v.to(vlm.device) for k, v in inputs.items()}
        with torch.no_grad():
            out = vlm.model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False,
                                     pad_token_id=proc.tokenizer.pad_token_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        stops = {proc.tokenizer.eos_token_id, proc.tokenizer.pad_token_id}
        for row in new.tolist():
            tokens += next((k for k, t in enumerate(row) if t in stops), len(row))
    return time.perf_counter() - start, tokens


def stage_level(stage, images, batch: int) -> tuple[float, int]:
    from workers.stage import StageItem

    items = [StageItem(i, f"photo-{i}", image=img) for i, img in enumerate(images)]
    tokens, start = 0, time.perf_counter()
    for i in range(0, len(items), batch):
        for r in stage.process(items[i:i + batch]):
            tokens += r.caption_en_tokens
    return time.perf_counter() - start, tokens


def runtime_level(paths, params: dict, batch: int) -> tuple[float, int]:
    """The caption stage's worker on a submitted job (embedded PostgreSQL in a scratch folder)."""
    from sqlalchemy import text

    from curation.db import make_engine, upgrade
    from curation.embedded import EmbeddedPostgres
    from tests.helpers import submit_spec
    from workers.runtime import StageWorker

    scratch = Path(tempfile.mkdtemp(prefix="bench-captions-"))
    folder = scratch / "photos"
    folder.mkdir()
    for p in paths:
        shutil.copyfile(p, folder / Path(p).name)
    server = EmbeddedPostgres(scratch / "pg")
    server.start()
    try:
        engine = make_engine(server.url, pool_size=2)
        upgrade(engine)
        submit_spec(engine, {"name": "bench", "modality": "image", "source": {"uri": str(folder), "name": "bench"},
                             "stages": [{"name": "probe"}, {"name": "caption", "params": params, "batch_size": batch}],
                             "chunk_size": 64})
        StageWorker(server.url, "probe").run(idle_exit_s=0.3)
        worker = StageWorker(server.url, "caption")
        start = time.perf_counter()
        stats = worker.run(idle_exit_s=0.01)
        seconds = time.perf_counter() - start
        with engine.connect() as conn:
            tokens = conn.execute(text("SELECT coalesce(sum(caption_en_tokens), 0) FROM caption_results")).scalar_one()
        assert stats["items_ok"] == len(paths), stats
        engine.dispose()
        return seconds, int(tokens)
    finally:
        server.stop("immediate")
        shutil.rmtree(scratch, ignore_errors=True)


class FixedServer:
    """Chat completions answering a fixed caption after ``latency_s``."""

    def __init__(self, latency_s: float):
        answer = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant",
                                                                  "content": "A red fox in the snow."}}],
                             "usage": {"prompt_tokens": 300, "completion_tokens": 7}}).encode()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(latency_s)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        ThreadingHTTPServer.request_queue_size = 128
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


def http_bench(images, requests: int, latency_s: float) -> list[tuple[int, float]]:
    from models.captioner import OpenAICaptioner, Request, Sampling

    server = FixedServer(latency_s)
    batch = [Request("Describe the image in detail.", (images[i % len(images)],)) for i in range(requests)]
    out = []
    for concurrency in (1, 8, 32):
        client = OpenAICaptioner(server.url, "bench", api_key_env=None, concurrency=concurrency, timeout_s=30,
                                 max_pixels=448 * 448)
        client.generate(batch[:concurrency], Sampling(max_tokens=16))  # warm the pool
        start = time.perf_counter()
        got = client.generate(batch, Sampling(max_tokens=16))
        seconds = time.perf_counter() - start
        assert all(hasattr(g, "text") for g in got), got[:3]
        client.close()
        out.append((concurrency, requests / seconds))
    server.httpd.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen-vl-tiny-random")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--batch", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--max-pixels", type=int, default=224 * 224)
    ap.add_argument("--http-requests", type=int, default=200)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    args = ap.parse_args()
    if args.model.endswith("-tiny-random"):
        os.environ.setdefault("CURATION_ALLOW_TINY_MODELS", "1")

    import torch
    from PIL import Image

    from curation.sample_media import skimage_photos
    from workers.caption import PROMPT_EN, CaptionStage

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    paths = [p for p in skimage_photos() if p.suffix in (".png", ".jpg")][:args.images]
    images = [Image.open(p).convert("RGB") for p in paths]
    params = {"backend": "transformers", "model": args.model, "max_tokens": args.max_tokens,
              "max_pixels": args.max_pixels, "russian_min_pixels": None}
    stage = CaptionStage(CaptionStage.Params(**params))
    stage.setup()
    vlm = stage.captioner.vlm
    direct(vlm, images[:args.batch], args.batch, args.max_tokens, args.max_pixels, PROMPT_EN)  # warm-up
    rows = [("direct model.generate", *direct(vlm, images, args.batch, args.max_tokens, args.max_pixels, PROMPT_EN)),
            ("CaptionStage.process", *stage_level(stage, images, args.batch))]
    stage.teardown()
    rows.append(("runtime (caption worker)", *runtime_level(paths, params, args.batch)))
    print(f"transformers backend: {args.model}, {len(images)} photos, batch {args.batch}, max_tokens {args.max_tokens}, "
          f"{args.max_pixels} px, torch threads {torch.get_num_threads()}")
    print(f"{'path':28} {'captions/s':>10} {'tokens/s':>10} {'ratio':>6}")
    base = len(images) / rows[0][1]
    for name, seconds, tokens in rows:
        print(f"{name:28} {len(images) / seconds:10.2f} {tokens / seconds:10.1f} {len(images) / seconds / base:6.2f}")
    print(f"\nopenai backend: {args.http_requests} requests, server latency {args.latency_ms:g} ms, one image each")
    print(f"{'concurrency':>11} {'requests/s':>11}")
    for concurrency, rate in http_bench(images, args.http_requests, args.latency_ms / 1000):
        print(f"{concurrency:11d} {rate:11.1f}")


if __name__ == "__main__":
    main()
