"""The console's routes. Pages are server-rendered Jinja2 (autoescaped: a job named ``<script>`` shows as
text); live progress is ``static/console.js`` polling ``/api/jobs`` once a second.

| route | what |
|---|---|
| ``GET /`` | recent jobs, each stage's progress (live) |
| ``GET /jobs/{id}`` | one job: stages (live), funnel, item errors, cancel / retry, its slice form |
| ``POST /jobs/{id}/cancel``, ``/retry`` | ``curation.jobs.cancel`` / ``retry`` |
| ``GET /slice?job=&view=&where=&page=`` | a page of thumbnails and scores of the predicate's slice |
| ``POST /slice/export`` | export that slice to Parquet under the console's export folder |
| ``GET /assets/{id}`` | every stored result of one asset with its configuration, its errors |
| ``GET /thumbnails/{id}`` | the stored thumbnail of an asset (only URIs in ``thumbnail_results``) |
| ``GET /api/jobs``, ``/api/jobs/{id}`` | progress as JSON |
| ``GET /metrics`` | Prometheus exposition (``curation.metrics``) |
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import Engine

from curation import jobs, slices, storage
from curation.console.security import (
    TOKEN_COOKIE,
    Csrf,
    host_name,
    is_loopback,
    presented_token,
    same_secret,
)
from curation.export import EXPORT_VIEWS, ExportError

HERE = Path(__file__).parent
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # not no-referrer: that makes a browser send `Origin: null` on posts
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self' "
                               "'unsafe-inline'; frame-ancestors 'none'; form-action 'self'",
}
PER_PAGE = 24
JOBS_LISTED = 30
FINISHED_TTL_S = 30.0


def _progress(st) -> dict:
    """A job's status as the JSON the pages poll: ``done`` = items with a result or an error, all stages."""
    stages = [dataclasses.asdict(s) for s in st.stages]
    return {"job": st.job_id, "name": st.name, "status": st.status, "n_assets": st.n_assets,
            "dead_tasks": st.dead_tasks, "stages": stages, "done": sum(s["scored"] + s["errors"] for s in stages)}


def create_app(engine: Engine, *, token: str | None = None, export_root: str | Path | None = None,
               query_timeout_s: float = 15.0, export_timeout_s: float = 600.0) -> FastAPI:
    """The console over ``engine`` (the platform's database; user predicates run as the read-only role at
    its address). ``token``: required on every request when set. ``export_root``: where "export this
    slice" writes (a folder or ``s3://`` prefix; default ``<CURATION_HOME>/console-exports``), one new
    folder per export. ``query_timeout_s`` / ``export_timeout_s``: the statement timeouts of a slice page's
    query and of an export's."""
    if export_root is None:
        from curation.config import Settings

        export_root = Settings.from_env().home / "console-exports"
    export_root = str(export_root)
    csrf = Csrf()
    app = FastAPI(title="curation console", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")

    def page(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"csrf": csrf.token, **context}, status_code=status_code)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if token is None and not is_loopback(host_name(request.headers.get("host", ""))):
            # without a token the console is for this machine only: a page on another name that resolves
            # to 127.0.0.1 (DNS rebinding) must not read it or post to it
            return Response("without a token this console answers to 127.0.0.1, ::1 and localhost only\n",
                            status_code=403, media_type="text/plain")
        if token is not None:
            given = request.query_params.get("token")
            if given is not None:
                if not same_secret(given, token):
                    return _unauthorised()
                # the token moves into a cookie and leaves the address bar (and the history, and Referer)
                rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
                target = "/" + request.url.path.lstrip("/") + (f"?{rest}" if rest else "")  # never //host
                response = RedirectResponse(target, status_code=303)
                response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
                return response
            if not same_secret(presented_token(request), token):
                return _unauthorised()
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    # --- jobs ---------------------------------------------------------------------------------------

    # a completed or cancelled job's progress changes only after a retry: it is read again after
    # FINISHED_TTL_S, not on every poll of every open page
    finished: dict[tuple[int, str], tuple[float, dict]] = {}

    def all_progress() -> list[dict]:
        out = []
        for summary in jobs.list_jobs(engine, limit=JOBS_LISTED):
            if summary.status == "running":  # retried: what was cached of it is over
                finished.pop((summary.id, "completed"), None)
                finished.pop((summary.id, "cancelled"), None)
            cached = finished.get((summary.id, summary.status))
            if cached is not None and time.monotonic() - cached[0] < FINISHED_TTL_S:
                out.append(cached[1])
                continue
            try:
                progress = _progress(jobs.status(engine, summary.id)) | {"created_at": summary.created_at.isoformat()}
            except jobs.UnknownJob:
                continue  # deleted between the two reads
            if progress["status"] != "running":
                finished[(summary.id, progress["status"])] = (time.monotonic(), progress)
            out.append(progress)
        return out

    @app.get("/", response_class=HTMLResponse)
    def jobs_page(request: Request):
        return page(request, "jobs.html", jobs=all_progress())

    @app.get("/api/jobs")
    def jobs_json():
        return JSONResponse(all_progress())

    @app.get("/api/jobs/{job_id}")
    def job_json(job_id: int):
        try:
            return JSONResponse(_progress(jobs.status(engine, job_id)))
        except jobs.UnknownJob as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)

    def job_page_response(request: Request, job_id: int, *, notice: str | None = None, error: str | None = None,
                          status_code: int = 200) -> HTMLResponse:
        try:
            job = jobs.load_job(engine, job_id)
            progress = _progress(jobs.status(engine, job_id))
        except jobs.UnknownJob as exc:
            return page(request, "error.html", 404, message=str(exc))
        return page(request, "job.html", status_code, job=job, progress=progress,
                    funnel=jobs.funnel(engine, job_id).rows(), errors=jobs.item_errors(engine, job_id),
                    notice=notice, error=error, view=job.spec.view, where="true")

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(request: Request, job_id: int, cancelled: int | None = None, retried: int | None = None,
                 tasks: int | None = None):
        notice = None
        if cancelled is not None:
            notice = f"job {job_id} cancelled; {cancelled} task(s) removed"
        elif retried is not None:
            notice = f"{retried} failed item(s) re-enqueued in {tasks or 0} task(s)"
        return job_page_response(request, job_id, notice=notice)

    @app.post("/jobs/{job_id}/cancel", response_class=HTMLResponse)
    def cancel(request: Request, job_id: int, csrf_token: str | None = Form(None, alias="csrf")):
        refused = csrf.problem(request, csrf_token)
        if refused:
            return page(request, "error.html", 403, message=refused)
        try:
            removed = jobs.cancel(engine, job_id)
        except jobs.UnknownJob as exc:
            return page(request, "error.html", 404, message=str(exc))
        except jobs.JobNotRunning as exc:
            return job_page_response(request, job_id, error=str(exc), status_code=409)
        return RedirectResponse(f"/jobs/{job_id}?cancelled={removed}", status_code=303)

    @app.post("/jobs/{job_id}/retry", response_class=HTMLResponse)
    def retry(request: Request, job_id: int, csrf_token: str | None = Form(None, alias="csrf")):
        refused = csrf.problem(request, csrf_token)
        if refused:
            return page(request, "error.html", 403, message=refused)
        try:
            n_items, n_tasks = jobs.retry(engine, job_id)
        except jobs.UnknownJob as exc:
            return page(request, "error.html", 404, message=str(exc))
        return RedirectResponse(f"/jobs/{job_id}?retried={n_items}&tasks={n_tasks}", status_code=303)

    # --- slices -------------------------------------------------------------------------------------

    def slice_response(request: Request, job_id: int | None, view: str | None, where: str, page_no: int, *,
                       notice: str | None = None, error: str | None = None) -> HTMLResponse:
        if job_id is not None:
            try:
                view = jobs.load_job(engine, job_id).spec.view
            except jobs.UnknownJob as exc:
                return page(request, "error.html", 404, message=str(exc))
        view = view or "curated_images"
        result = None
        if error is None:
            try:
                result = slices.read_slice(engine, where, view=view, job_id=job_id, page=page_no, per_page=PER_PAGE,
                                           timeout_s=query_timeout_s)
            except slices.SliceError as exc:
                error = str(exc)

        def link(p: int) -> str:
            params = {"where": where, "view": view, "page": p} | ({"job": job_id} if job_id is not None else {})
            return "/slice?" + urlencode(params)

        return page(request, "slice.html", 400 if error else 200, job_id=job_id, view=view, views=EXPORT_VIEWS,
                    where=where, result=result, error=error, notice=notice, link=link)

    @app.get("/slice", response_class=HTMLResponse)
    def slice_page(request: Request, where: str = "true", view: str | None = None, job: int | None = None,
                   page_no: int = Query(0, alias="page", ge=0)):
        return slice_response(request, job, view, where, page_no)

    @app.post("/slice/export", response_class=HTMLResponse)
    def export_slice(request: Request, where: str = Form(...), view: str | None = Form(None),
                     job: int | None = Form(None), csrf_token: str | None = Form(None, alias="csrf")):
        refused = csrf.problem(request, csrf_token)
        if refused:
            return page(request, "error.html", 403, message=refused)
        try:  # the first page first, under the page's timeout: a bad or slow predicate fails fast
            view = jobs.load_job(engine, job).spec.view if job is not None else (view or "curated_images")
            slices.read_slice(engine, where, view=view, job_id=job, per_page=1, timeout_s=query_timeout_s)
        except jobs.UnknownJob as exc:
            return page(request, "error.html", 404, message=str(exc))
        except slices.SliceError as exc:
            return slice_response(request, job, view, where, 0, error=f"export refused: {exc}")
        # a fresh folder under the console's export root: a web form never names a path
        output = storage.join(export_root, f"slice-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6:06d}")
        try:
            done = jobs.export(engine, job, where=where, output=output, view=view, timeout_s=export_timeout_s)
        except (ExportError, jobs.NoExportTarget, jobs.UnknownJob) as exc:
            return slice_response(request, job, view, where, 0, error=f"export refused: {exc}")
        notice = f"export {done.export_id} recorded: {done.n_rows} row(s) in {len(done.files)} file(s) under {done.output}"
        return slice_response(request, job, view, where, 0, notice=notice)

    # --- assets -------------------------------------------------------------------------------------

    @app.get("/assets/{asset_id}", response_class=HTMLResponse)
    def asset_page(request: Request, asset_id: int, job: int | None = None):
        try:
            detail = slices.asset_detail(engine, asset_id)
        except slices.UnknownAsset as exc:
            return page(request, "error.html", 404, message=str(exc))
        return page(request, "asset.html", asset=detail, job_id=job,
                    thumbnail=slices.thumbnail_uri(engine, asset_id, job) is not None)

    @app.get("/thumbnails/{asset_id}")
    def thumbnail(asset_id: int, job: int | None = None):
        uri = slices.thumbnail_uri(engine, asset_id, job)
        if uri is None:
            return Response("no thumbnail stored for this asset", status_code=404, media_type="text/plain")
        try:
            data = storage.read_bytes(uri)
        except storage.StorageError:
            return Response("the stored thumbnail is gone", status_code=404, media_type="text/plain")
        return Response(data, media_type="image/webp", headers={"Cache-Control": "private, max-age=300"})

    # --- metrics ------------------------------------------------------------------------------------

    @app.get("/metrics")
    def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST

        from curation.metrics import exposition

        return Response(exposition(engine), media_type=CONTENT_TYPE_LATEST)

    return app


def _unauthorised() -> Response:
    return Response("this console needs its token: open the address `curation serve` printed (…/?token=…), "
                    "or send `Authorization: Bearer <token>`\n", status_code=401, media_type="text/plain",
                    headers={"WWW-Authenticate": "Bearer"})
