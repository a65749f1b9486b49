"""Clusters of embeddings, semantic duplicates and asset metadata from source lists (issue: the text half of the dataset).

- ``asset_metadata``: what a Parquet source list says about an asset besides its URI — the caption /
  alt-text column and the extra columns the spec names (``source.metadata_columns``), as jsonb. The
  newest listing of an asset wins.
- ``clusterings``: one row per ``curation cluster`` run — the embedding it read (stage, model, the job's
  configurations), k, seed, sample size, the fitting library, the semantic-duplicate ε, the centroids
  (float32, k × dim, little-endian). A new clustering never replaces another; a view row shows its job's
  newest finished one.
- ``asset_clusters``: each asset's cluster in a clustering and its cosine distance to the centroid.
- ``semantic_duplicates``: pairs within one cluster whose cosine similarity is at least 1 − ε (NeMo
  Curator's semantic dedup), stored in both directions; the views keep the best-ranked asset of a group.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

TABLES = ("asset_metadata", "clusterings", "asset_clusters", "semantic_duplicates")


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE asset_metadata (
            asset_id bigint PRIMARY KEY REFERENCES assets (asset_id) ON DELETE CASCADE,
            source_id bigint NOT NULL REFERENCES sources (source_id),
            caption text,
            metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
            updated_at timestamptz NOT NULL DEFAULT now());

        CREATE TABLE clusterings (
            clustering_id bigserial PRIMARY KEY,
            job_id bigint NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
            kind text NOT NULL CHECK (kind IN ('image', 'scene')),
            embedding_stage text NOT NULL,
            embedding_configs text[] NOT NULL,
            model text NOT NULL,
            dim integer NOT NULL,
            k integer NOT NULL CHECK (k >= 1),
            seed bigint NOT NULL,
            sample_size integer NOT NULL,
            n_assets integer NOT NULL,
            library text NOT NULL,
            epsilon double precision NOT NULL,
            centroids bytea NOT NULL,
            fit_seconds double precision NOT NULL,
            assign_seconds double precision,
            created_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz);
        CREATE INDEX clusterings_job_idx ON clusterings (job_id, clustering_id);

        CREATE TABLE asset_clusters (
            clustering_id bigint NOT NULL REFERENCES clusterings (clustering_id) ON DELETE CASCADE,
            asset_id bigint NOT NULL REFERENCES assets (asset_id) ON DELETE CASCADE,
            cluster_id integer NOT NULL,
            distance real NOT NULL,
            PRIMARY KEY (clustering_id, asset_id));
        CREATE INDEX asset_clusters_cluster_idx ON asset_clusters (clustering_id, cluster_id);

        CREATE TABLE semantic_duplicates (
            clustering_id bigint NOT NULL REFERENCES clusterings (clustering_id) ON DELETE CASCADE,
            asset_id bigint NOT NULL REFERENCES assets (asset_id) ON DELETE CASCADE,
            other_id bigint NOT NULL REFERENCES assets (asset_id) ON DELETE CASCADE,
            cosine real NOT NULL,
            PRIMARY KEY (clustering_id, asset_id, other_id));
        """
    )
    op.execute(f"GRANT SELECT ON {', '.join(TABLES)} TO curation_reader")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS semantic_duplicates, asset_clusters, clusterings, asset_metadata")
