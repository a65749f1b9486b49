"""Editing instructions of mined pairs (issue 12 §7, report §4.3): ``pair_instruction_results`` holds what the
``pair_instruction`` stage (``workers/pair_instruction.py``) asked the captioner for each pair — the cleaned
instruction, the raw answer, its tokens and provenance (backend, model, weights identity, prompt version) —
keyed ``(asset_id, config_id)`` like every stage's results; ``curated_pairs`` gains ``instruction``,
``instruction_raw``, ``instruction_model`` and ``instruction_prompt_version`` under the job's configuration
(``db/migrations/views/curated_pairs.0022.sql``).

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-01
"""

from pathlib import Path

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

VIEWS = Path(__file__).resolve().parent.parent / "views"


def _view(revision: str) -> None:
    op.execute("DROP VIEW IF EXISTS curated_pairs")
    op.execute((VIEWS / f"curated_pairs.{revision}.sql").read_text())
    op.execute("GRANT SELECT ON curated_pairs TO curation_reader")


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE pair_instruction_results (
            asset_id bigint NOT NULL REFERENCES assets (asset_id),
            config_id text NOT NULL,
            stage_version text NOT NULL,
            instruction text NOT NULL,
            instruction_raw text NOT NULL,
            instruction_tokens integer NOT NULL,
            backend text NOT NULL,
            model text NOT NULL,
            weights_sha256 text NOT NULL,
            prompt_version text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (asset_id, config_id));
        """
    )
    op.execute("GRANT SELECT ON pair_instruction_results TO curation_reader")
    _view("0022")


def downgrade() -> None:
    _view("0019")  # the 0019 view does not read pair_instruction_results: drop the table after it
    op.execute("DROP TABLE IF EXISTS pair_instruction_results")
