"""Captions, domain classes, caption variants and caption-image alignment (issue: the text half of the dataset).

- ``caption_results``: the ``caption`` (images) and ``video_caption`` (scenes) stages — cleaned and raw
  English / Russian captions, generated token counts, backend, model, weights identity, prompt version.
- ``domain_results``: ``domain`` / ``video_domain`` — the report's §4.6 domain class, the model's answer and
  whether it named none of the classes.
- ``caption_variant_results``: ``caption_variants`` / ``video_caption_variants`` — five lengths in English and
  Russian rewritten by an LLM from the caption whose sha256 is stored.
- ``clip_text_results``: ``clip_text_score`` — cosine of the CLIP text and image embeddings.

Each is keyed by ``(asset_id, config_id)`` as every result table since 0013. The curated views show them
from migration 0016 (``python -m workers.views 0016``).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

TABLES = ("caption_results", "domain_results", "caption_variant_results", "clip_text_results")


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE caption_results (
            asset_id bigint NOT NULL REFERENCES assets (asset_id),
            config_id text NOT NULL,
            stage_version text NOT NULL,
            caption_en text NOT NULL,
            caption_en_raw text NOT NULL,
            caption_en_tokens integer NOT NULL,
            caption_ru text,
            caption_ru_raw text,
            caption_ru_tokens integer,
            frames_sampled integer NOT NULL,
            backend text NOT NULL,
            model text NOT NULL,
            weights_sha256 text NOT NULL,
            prompt_version text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (asset_id, config_id));

        CREATE TABLE domain_results (
            asset_id bigint NOT NULL REFERENCES assets (asset_id),
            config_id text NOT NULL,
            stage_version text NOT NULL,
            domain text NOT NULL,
            domain_unparsed boolean NOT NULL,
            domain_answer text NOT NULL,
            answer_tokens integer NOT NULL,
            frames_sampled integer NOT NULL,
            backend text NOT NULL,
            model text NOT NULL,
            weights_sha256 text NOT NULL,
            prompt_version text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (asset_id, config_id));

        CREATE TABLE caption_variant_results (
            asset_id bigint NOT NULL REFERENCES assets (asset_id),
            config_id text NOT NULL,
            stage_version text NOT NULL,
            en_very_long text,
            en_long text,
            en_medium text,
            en_short text,
            en_very_short text,
            ru_very_long text,
            ru_long text,
            ru_medium text,
            ru_short text,
            ru_very_short text,
            unparsed integer NOT NULL,
            answers jsonb NOT NULL,
            generated_tokens integer NOT NULL,
            source_caption_sha256 text NOT NULL,
            backend text NOT NULL,
            model text NOT NULL,
            weights_sha256 text NOT NULL,
            prompt_version text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (asset_id, config_id));

        CREATE TABLE clip_text_results (
            asset_id bigint NOT NULL REFERENCES assets (asset_id),
            config_id text NOT NULL,
            stage_version text NOT NULL,
            clip_text_score double precision NOT NULL,
            caption_truncated boolean NOT NULL,
            source_caption_sha256 text NOT NULL,
            model text NOT NULL,
            weights_sha256 text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (asset_id, config_id));
        """
    )
    op.execute(f"GRANT SELECT ON {', '.join(TABLES)} TO curation_reader")


def downgrade() -> None:
    for table in reversed(TABLES):
        op.execute(f"DROP TABLE IF EXISTS {table}")
