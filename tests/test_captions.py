"""Captions (issue 10): the report's caption post-processing, the domain answer parsing with the report's
exact category list, the transformers backend with the tiny Qwen2.5-VL through the runtime on real photos,
and the OpenAI-compatible HTTP backend against a real local chat-completions server (started here, serving
the tiny model) that also times out, answers 500 and sends malformed JSON."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image
from sqlalchemy import text

from tests.helpers import job_state, submit_spec
from workers.caption_text import (
    clean_caption,
    drop_foreign_sentences,
    remove_intro,
    strip_control,
)
from workers.domain import (
    CATEGORY_LIST,
    CLASSES,
    PROMPT_TEMPLATE,
    domain_prompt,
    parse_domain,
)
from workers.runtime import StageWorker

TINY = {"backend": "transformers", "model": "qwen-vl-tiny-random", "max_pixels": 224 * 224, "max_tokens": 8}
PHOTOS = ("astronaut.png", "coffee.png", "rocket.jpg")  # 512×512, 600×400, 640×427: Russian for two of them


def drain(db_url, *stages):
    return {stage: StageWorker(db_url, stage).run(idle_exit_s=0.5) for stage in stages}


@pytest.fixture
def photos(tmp_path, skimage_dir):
    d = tmp_path / "captions"
    d.mkdir()
    for name in PHOTOS:
        shutil.copyfile(skimage_dir / name, d / name)
    return d


def job(engine, folder, stages, name="captions"):
    return submit_spec(engine, {"name": name, "modality": "image", "source": {"uri": str(folder), "name": "cap"},
                                "stages": [{"name": "probe"}, *stages], "chunk_size": 8})


# --- post-processing (report §4.2, §4.4, §4.6) ------------------------------------------------------


@pytest.mark.parametrize("raw, clean", [
    ("The image shows a red fox in the snow.", "A red fox in the snow."),
    ("This photograph depicts two dogs running.", "Two dogs running."),
    ("The video starts with a man opening a door. He walks in.", "A man opening a door. He walks in."),
    ("In this image, we can see a lake at dusk.", "A lake at dusk."),
    ("The image is a close-up of a flower.", "A close-up of a flower."),
    ("A cat on the image shows nothing unusual.", "A cat on the image shows nothing unusual."),  # not an intro
])
def test_intro_phrases_are_removed(raw, clean):
    assert clean_caption(raw, "en") == clean


def test_russian_intro_phrases_are_removed():
    assert remove_intro("На изображении показан кот на диване.", "ru") == "Кот на диване."
    assert remove_intro("Видео начинается с вида на море.", "ru") == "Вида на море."


def test_sentences_in_another_script_are_dropped():
    en = "A street sign reads STOP. The sign says СТОП in red. A shop called 東京 is behind it. It is raining."
    assert drop_foreign_sentences(en, "en") == "A street sign reads STOP. It is raining."
    ru = "Кот спит на диване. На подушке надпись Sweet home. Рядом стоит лампа."
    assert drop_foreign_sentences(ru, "ru") == "Кот спит на диване. Рядом стоит лампа."


def test_control_characters_are_stripped():
    assert strip_control("A dog\x00 running\tin a\u200b park.\x1b\r\nIt is sunny.\x7f") == \
        "A dog running in a park.\nIt is sunny."
    assert clean_caption("The image shows\x07 a boat.\x00", "en") == "A boat."


# --- domain parsing (report §4.6) -------------------------------------------------------------------


def test_the_reports_category_list_and_prompt():
    assert CLASSES == ("animals", "architecture", "art", "cartoons", "food", "interiors", "nature", "people", "tech",
                       "other")
    assert CATEGORY_LIST == "\n1) animals\n2) architecture\n3) art\n4) cartoons\n5) food\n6) interiors\n7) nature\n" \
                            "8) people\n9) tech\n10) other\n"
    assert PROMPT_TEMPLATE.startswith("You are a professional {media_type} classifier.")
    assert PROMPT_TEMPLATE.endswith("{CATEGORY_LIST}\nReturn only the name of class.")
    prompt = domain_prompt("video")
    assert "You are given a video." in prompt and "10) other" in prompt and "{" not in prompt


@pytest.mark.parametrize("answer, parsed", [
    ("people", ("people", False)), ("People.", ("people", False)), ("8) people", ("people", False)),
    ("7", ("nature", False)), ('"Architecture"', ("architecture", False)), ("class: food", ("food", False)),
    ("other", ("other", False)), ("10) other", ("other", False)),
    ("a dog on a sofa", ("other", True)), ("animals, nature", ("other", True)), ("", ("other", True)),
    ("3) food", ("other", True)), ("11", ("other", True)),
])
def test_domain_answers_parse_to_a_class_or_other_with_a_flag(answer, parsed):
    assert parse_domain(answer) == parsed


# --- transformers backend through the runtime --------------------------------------------------------


def test_transformers_backend_captions_real_photos_through_the_runtime(engine, db_url, photos):
    stages = [{"name": "caption", "params": TINY}, {"name": "domain", "params": TINY},
              {"name": "caption_variants", "params": {**TINY, "max_tokens": 6}},
              {"name": "clip_text_score", "params": {"model": "clip-tiny-random"}}]
    job_id = job(engine, photos, stages)
    names = ("probe", "caption", "domain", "caption_variants", "clip_text_score")
    runs = drain(db_url, *names)
    assert [runs[n]["items_ok"] for n in names] == [3, 3, 3, 3, 3], runs
    assert job_state(engine, job_id) == "completed"
    with engine.connect() as conn:
        rows = {r.uri.rsplit("/", 1)[1]: r for r in conn.execute(text(
            "SELECT c.uri, c.width, c.height, c.caption_en, c.caption_ru, c.domain, c.domain_unparsed, "
            "c.clip_text_score, r.caption_en_raw, r.caption_en_tokens, r.caption_ru_tokens, r.model, r.backend, "
            "r.weights_sha256, r.prompt_version FROM curated_images c "
            "JOIN caption_results r ON r.asset_id = c.asset_id WHERE c.job_id = :j"), {"j": job_id})}
        variants = conn.execute(text("SELECT unparsed, answers, generated_tokens FROM caption_variant_results")).all()
    assert set(rows) == set(PHOTOS)
    for name, r in rows.items():
        assert r.caption_en == clean_caption(r.caption_en_raw, "en")
        assert 0 < r.caption_en_tokens <= 8
        assert (r.caption_ru is not None) == (r.width * r.height >= 512 * 512), name  # report §4.2
        assert r.model == "qwen-vl-tiny-random" and r.backend == "transformers" and r.weights_sha256 == "random-init"
        assert r.prompt_version.startswith("image:")
        assert r.domain in CLASSES and isinstance(r.domain_unparsed, bool)
        assert -1.0 <= r.clip_text_score <= 1.0
    assert rows["astronaut.png"].caption_ru is not None and rows["coffee.png"].caption_ru is None
    assert len(variants) == 3 and all(len(v.answers) == 5 and v.generated_tokens > 0 for v in variants)

    # the same configuration again: nothing generated; another sampling setting: captioned again
    job(engine, photos, stages[:1], name="again")
    assert drain(db_url, "probe", "caption")["caption"]["items_ok"] == 0
    job(engine, photos, [{"name": "caption", "params": {**TINY, "max_tokens": 4}}], name="shorter")
    assert drain(db_url, "probe", "caption")["caption"]["items_ok"] == 3


# --- OpenAI-compatible HTTP backend ------------------------------------------------------------------


class ChatServer:
    """A real chat-completions server on 127.0.0.1: ``/ok/v1`` answers with the tiny model's generation;
    ``/flaky/v1`` answers each distinct request first with a 500, then malformed JSON, then properly;
    ``/down/v1`` always 500; ``/slow/v1`` answers after 6 s; ``/garbage/v1`` malformed JSON."""

    def __init__(self, captioner):
        self.captioner, self.lock, self.calls, self.seen = captioner, threading.Lock(), [], {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                mode = self.path.strip("/").split("/")[0]
                with server.lock:
                    server.calls.append((mode, self.headers.get("Authorization")))
                    digest = hashlib.sha256(body).hexdigest()
                    attempt = server.seen[digest] = server.seen.get(digest, 0) + 1
                if not self.path.endswith("/v1/chat/completions") or mode == "down" or (mode == "flaky" and attempt == 1):
                    return self.reply(500, b'{"error": "overloaded"}')
                if mode == "garbage" or (mode == "flaky" and attempt == 2):
                    return self.reply(200, b'{"choices": [{"message": ')
                if mode == "slow":
                    time.sleep(6)
                self.reply(200, json.dumps(server.complete(json.loads(body))).encode())

            def reply(self, code, payload):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def complete(self, body: dict) -> dict:
        from models.captioner import Request, Sampling

        (message,) = [m for m in body["messages"] if m["role"] == "user"]
        images, prompt = [], ""
        for part in message["content"]:
            if part["type"] == "image_url":
                raw = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
                images.append(Image.open(io.BytesIO(raw)).convert("RGB"))
            else:
                prompt = part["text"]
        with self.lock:
            (gen,) = self.captioner.generate([Request(prompt, tuple(images))],
                                             Sampling(max_tokens=body["max_tokens"], temperature=body["temperature"]))
        return {"id": "cmpl-1", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": gen.text},
                             "finish_reason": "length"}],
                "usage": {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens}}

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{mode}/v1"


@pytest.fixture(scope="module")
def chat_server():
    from models.captioner import TransformersCaptioner

    server = ChatServer(TransformersCaptioner("qwen-vl-tiny-random", max_pixels=224 * 224))
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def http_params(server: ChatServer, mode: str, **extra) -> dict:
    return {"backend": "openai", "base_url": server.url(mode), "model": "tiny-served", "api_key_env": "CAPTION_TEST_KEY",
            "max_tokens": 8, "request_timeout_s": 30.0, "retries": 2, "retry_backoff_s": 0.01, "concurrency": 4,
            "russian_min_pixels": None, **extra}


def test_http_backend_retries_500s_and_malformed_json_and_never_captions_twice(engine, db_url, photos, chat_server,
                                                                               monkeypatch):
    monkeypatch.setenv("CAPTION_TEST_KEY", "sk-test")
    chat_server.calls.clear()
    job_id = job(engine, photos, [{"name": "caption", "params": http_params(chat_server, "flaky")}])
    runs = drain(db_url, "probe", "caption")
    assert runs["caption"]["items_ok"] == 3 and runs["caption"]["item_errors"] == 0
    assert len(chat_server.calls) == 9  # each image: 500, malformed JSON, then the answer
    assert {auth for _, auth in chat_server.calls} == {"Bearer sk-test"}
    assert job_state(engine, job_id) == "completed"
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT caption_en, caption_en_raw, caption_en_tokens, backend, model, weights_sha256 "
                                 "FROM caption_results")).all()
    assert len(rows) == 3
    for r in rows:
        assert r.backend == "openai" and r.model == "tiny-served" and 0 < r.caption_en_tokens <= 8
        assert r.weights_sha256 == f"served:{chat_server.url('flaky')}#tiny-served"
        assert r.caption_en == clean_caption(r.caption_en_raw, "en")

    # the same job again: no request; the served model under another name: captioned again
    before = len(chat_server.calls)
    job(engine, photos, [{"name": "caption", "params": http_params(chat_server, "flaky", concurrency=1,
                                                                   retries=5)}], name="again")
    assert drain(db_url, "probe", "caption")["caption"]["items_ok"] == 0  # transport settings: same config
    assert len(chat_server.calls) == before
    job(engine, photos, [{"name": "caption", "params": http_params(chat_server, "ok", model="other-served")}],
        name="another model")
    assert drain(db_url, "probe", "caption")["caption"]["items_ok"] == 3
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(DISTINCT config_id) FROM caption_results")).scalar_one() == 2


@pytest.mark.parametrize("mode, error_class", [("down", "http_5xx"), ("slow", "http_timeout"),
                                               ("garbage", "bad_response")])
def test_http_failures_are_item_errors_and_the_job_completes(engine, db_url, photos, chat_server, mode, error_class):
    chat_server.calls.clear()
    params = http_params(chat_server, mode, retries=1, request_timeout_s=2.0 if mode == "slow" else 30.0)
    job_id = job(engine, photos, [{"name": "caption", "params": params},
                                  {"name": "domain", "params": {k: v for k, v in params.items()
                                                                if k != "russian_min_pixels"}}])
    runs = drain(db_url, "probe", "caption", "domain")
    assert runs["caption"]["item_errors"] == 3 and runs["caption"]["items_ok"] == 0
    assert runs["domain"]["items_ok"] == 0  # nothing reached it
    assert len(chat_server.calls) == 6  # one retry each
    assert job_state(engine, job_id) == "completed"
    with engine.connect() as conn:
        errors = conn.execute(text("SELECT error_class, message FROM item_errors WHERE stage = 'caption'")).all()
        assert conn.execute(text("SELECT count(*) FROM caption_results")).scalar_one() == 0
    assert [e.error_class for e in errors] == [error_class] * 3
    assert all(chat_server.url(mode) in e.message for e in errors)
    # re-running the job's stages asks nothing again (``curation retry`` re-runs failed items)
    assert drain(db_url, "caption")["caption"]["items_ok"] == 0 and len(chat_server.calls) == 6


def test_a_spec_with_a_tiny_model_outside_tests_or_without_a_server_is_refused(monkeypatch):
    from workers.caption import CaptionParams

    with pytest.raises(ValueError, match="base_url"):
        CaptionParams(backend="openai", model="served")
    with pytest.raises(ValueError, match="not a captioning model|unknown captioning model"):
        CaptionParams(model="clip-vit-b-32")
    monkeypatch.delenv("CURATION_ALLOW_TINY_MODELS")
    with pytest.raises(ValueError, match="random-weight test model"):
        CaptionParams(model="qwen-vl-tiny-random")


def test_the_vllm_backend_says_how_to_install_it():
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here (the test never imports it)")
    from models.captioner import BackendUnavailable, make_captioner

    with pytest.raises(BackendUnavailable, match=r"gpu extra"):
        make_captioner("vllm", "qwen2.5-vl-32b-instruct")


def test_a_stage_that_reads_a_caption_is_redone_for_another_captioner(engine, db_url, photos):
    """clip_text_score reads the job's caption: its configuration folds in the caption's configuration,
    so a job whose captions come from another setting scores again instead of reusing the first scores."""
    first = [{"name": "caption", "params": TINY}, {"name": "clip_text_score", "params": {"model": "clip-tiny-random"}}]
    job(engine, photos, first, name="first")
    assert drain(db_url, "probe", "caption", "clip_text_score")["clip_text_score"]["items_ok"] == 3
    job(engine, photos, first, name="same again")
    assert drain(db_url, "probe", "caption", "clip_text_score")["clip_text_score"]["items_ok"] == 0  # reused
    other = [{"name": "caption", "params": {**TINY, "max_tokens": 4}}, first[1]]
    job(engine, photos, other, name="other captioner")
    runs = drain(db_url, "probe", "caption", "clip_text_score")
    assert runs["caption"]["items_ok"] == 3 and runs["clip_text_score"]["items_ok"] == 3
    with engine.connect() as conn:
        configs = conn.execute(text("SELECT DISTINCT config_id FROM clip_text_results")).scalars().all()
        inputs = conn.execute(text("SELECT params->'_inputs'->'caption' FROM stage_configs "
                                   "WHERE stage = 'clip_text_score'")).scalars().all()
    assert len(configs) == 2 and all(len(i) == 1 for i in inputs) and inputs[0] != inputs[1]
