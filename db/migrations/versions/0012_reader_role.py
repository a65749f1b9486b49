"""The curation_reader role: the privilege boundary user SQL runs behind (curation/user_sql.py).

SELECT on the curated views and the catalogue (sources, jobs, assets, the stage result tables, exports,
shards, latents) and nothing else: no broker tables, no write privilege anywhere, read-only by default, a
statement timeout, not a superuser, no membership in pg_read_server_files / pg_write_server_files /
pg_execute_server_program / pg_signal_backend. Roles are per cluster: the role is created once (an
external server whose migrating user may not create roles gets a clear error naming the statement for
its administrator) and granted per database. Tables created by later migrations grant their own SELECT
(tests/test_user_sql.py checks every result table and view).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

READABLE = (
    "curated_images", "curated_scenes",
    "sources", "jobs", "assets", "job_assets", "item_errors", "exports", "shards", "latents", "near_duplicates",
    "probe_results", "resolution_results", "phash_results", "edge_results", "quality_results", "text_results",
    "video_probe_results", "scene_split_results", "video_hash_results", "dynamics_results", "video_text_results",
    "clip_results", "object_results", "watermark_results", "motion_results", "topiq_results", "qalign_results",
    "complexity_results", "dover_results",
)


def upgrade() -> None:
    op.execute(
        """
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'curation_reader') THEN
                BEGIN
                    CREATE ROLE curation_reader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
                        NOBYPASSRLS NOINHERIT CONNECTION LIMIT 32;
                EXCEPTION WHEN insufficient_privilege THEN
                    RAISE EXCEPTION 'cannot create the read-only role curation_reader; ask an administrator to run: '
                        'CREATE ROLE curation_reader LOGIN NOSUPERUSER NOINHERIT; then run curation db upgrade again';
                END;
            END IF;
        END
        $$;
        """
    )
    # cluster-wide defaults of the role (curation/user_sql.py also sets them on every connection, so a
    # migrating user that may not alter the role only gets a notice)
    op.execute(
        """
        DO $$
        BEGIN
            ALTER ROLE curation_reader SET default_transaction_read_only = on;
            ALTER ROLE curation_reader SET statement_timeout = '60s';
            ALTER ROLE curation_reader SET idle_in_transaction_session_timeout = '60s';
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'curation_reader: role defaults not set (no privilege); connections set them';
        END
        $$;
        """
    )
    op.execute("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM curation_reader")
    op.execute("REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM curation_reader")
    op.execute(
        """
        DO $$
        BEGIN
            REVOKE CREATE ON SCHEMA public FROM PUBLIC;  -- already so on PostgreSQL >= 15
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'public schema: CREATE for PUBLIC left as it is (not the schema owner)';
        END
        $$;
        """
    )
    op.execute("GRANT USAGE ON SCHEMA public TO curation_reader")
    op.execute(f"GRANT SELECT ON {', '.join(READABLE)} TO curation_reader")


def downgrade() -> None:
    op.execute(f"REVOKE ALL ON {', '.join(READABLE)} FROM curation_reader")
    op.execute("REVOKE USAGE ON SCHEMA public FROM curation_reader")
    # the role stays while another database of the cluster still grants it something
    op.execute(
        """
        DO $$
        BEGIN
            DROP ROLE IF EXISTS curation_reader;
        EXCEPTION WHEN dependent_objects_still_exist OR insufficient_privilege THEN
            RAISE NOTICE 'curation_reader kept: other databases of this cluster still use it';
        END
        $$;
        """
    )
