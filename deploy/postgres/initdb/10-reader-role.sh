#!/bin/sh
# Runs once, when the postgres image initialises an empty data directory (docker-entrypoint-initdb.d):
# the read-only role user SQL runs as (curation/user_sql.py), with a password so it can log in over TCP.
# `curation db upgrade` (migration 0012) then finds the role and grants it SELECT on the curated views.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -v pw="$CURATION_READER_PASSWORD" <<'SQL'
CREATE ROLE curation_reader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT
    CONNECTION LIMIT 32 PASSWORD :'pw';
SQL
