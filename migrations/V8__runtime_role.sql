-- Least privilege (issue 16): the services connect as a login role that is
-- a member of the group role `rdev_runtime`, which may read and write rows
-- (DML) and nothing else: no DDL, so it cannot drop or disable the audit
-- log's append-only trigger, alter a table or run migrations. Migrations run
-- as the schema owner (RDEV_MIGRATE_DATABASE_URL). Creating roles is the
-- operator's job (scripts/dev-up, deploy/sql/roles.sql): it needs CREATEROLE,
-- which the owner need not have. When `rdev_runtime` does not exist, this
-- migration grants nothing (everything then runs as the owner, as before).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rdev_runtime') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO rdev_runtime;
        GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO rdev_runtime;
        -- Tables and sequences later migrations create, as this owner.
        ALTER DEFAULT PRIVILEGES IN SCHEMA public
            GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO rdev_runtime;
        ALTER DEFAULT PRIVILEGES IN SCHEMA public
            GRANT USAGE, SELECT ON SEQUENCES TO rdev_runtime;
    END IF;
END $$;
