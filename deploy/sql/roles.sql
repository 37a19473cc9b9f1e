-- Database roles of rdev (least privilege; docs/operations/security.md).
-- Run once per cluster as a role with CREATEROLE (e.g. postgres), BEFORE the
-- first migration, with psql variables for the passwords:
--
--   psql "$ADMIN_URL" -v owner_password="$OWNER_PW" -v app_password="$APP_PW" \
--        -f deploy/sql/roles.sql
--
-- rdev_owner   owns the database and runs migrations (RDEV_MIGRATE_DATABASE_URL)
-- rdev_runtime group role: DML only (granted by migration V8)
-- rdev_app     what the services log in as (DATABASE_URL), a member of rdev_runtime
SELECT 'CREATE ROLE rdev_runtime NOLOGIN'
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rdev_runtime') \gexec
SELECT 'CREATE ROLE rdev_owner LOGIN'
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rdev_owner') \gexec
SELECT 'CREATE ROLE rdev_app LOGIN IN ROLE rdev_runtime'
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rdev_app') \gexec
ALTER ROLE rdev_owner PASSWORD :'owner_password';
ALTER ROLE rdev_app PASSWORD :'app_password';
SELECT 'CREATE DATABASE rdev OWNER rdev_owner'
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'rdev') \gexec
\connect rdev
-- PostgreSQL 15+ no longer lets everyone create in `public`; the owner may.
ALTER SCHEMA public OWNER TO rdev_owner;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
