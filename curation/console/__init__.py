"""``curation serve``: the web console (issue 13 §3) — jobs with live progress, a job's funnel and errors,
cancel / retry, a slice browser over the curated views (the read-only role), one asset's every stored
result with its provenance, export of a slice, and ``/metrics``. A thin web layer: job control is
``curation.jobs``, slices ``curation.slices``, pictures ``curation.storage``, metrics ``curation.metrics``."""

from curation.console.app import create_app
from curation.console.security import ConsoleConfigError, check_bind

__all__ = ["ConsoleConfigError", "check_bind", "create_app"]
