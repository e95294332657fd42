"""The version 1 schema as tracerl shipped it (before ``schema.py`` derived the DDL): the fixture of the
upgrade tests. A database created by those releases has exactly these tables, so the upgrade path of
``schema.UPGRADES`` is tested on the real thing. Never edit these statements."""

from __future__ import annotations

SQLITE_V1: list[str] = [
    """CREATE TABLE rollouts (
            seq INTEGER PRIMARY KEY, rollout_id TEXT NOT NULL UNIQUE, task TEXT NOT NULL, mode TEXT NOT NULL,
            group_id TEXT NOT NULL, status TEXT NOT NULL, max_attempts INTEGER NOT NULL, attempts INTEGER NOT NULL,
            resources_version INTEGER, reward REAL, error TEXT, idempotency_key TEXT UNIQUE, metadata TEXT NOT NULL,
            created_at REAL NOT NULL, updated_at REAL NOT NULL)""",
    "CREATE INDEX rollouts_status ON rollouts (status)",
    "CREATE INDEX rollouts_group ON rollouts (group_id)",
    "CREATE INDEX rollouts_created ON rollouts (created_at)",
    "CREATE TABLE queue (pos INTEGER PRIMARY KEY, rollout_id TEXT NOT NULL UNIQUE, mode TEXT NOT NULL)",
    """CREATE TABLE attempts (
            attempt_id TEXT PRIMARY KEY, rollout_id TEXT NOT NULL, number INTEGER NOT NULL, worker_id TEXT NOT NULL,
            status TEXT NOT NULL, lease_expires_at REAL NOT NULL, heartbeat_at REAL NOT NULL,
            started_at REAL NOT NULL, ended_at REAL, error TEXT)""",
    "CREATE INDEX attempts_rollout ON attempts (rollout_id, number)",
    "CREATE INDEX attempts_lease ON attempts (lease_expires_at) WHERE status = 'running'",
    """CREATE TABLE spans (
            attempt_id TEXT NOT NULL, seq INTEGER NOT NULL, rollout_id TEXT NOT NULL, kind TEXT NOT NULL,
            name TEXT NOT NULL, parent_seq INTEGER, start_time REAL NOT NULL, end_time REAL,
            attributes TEXT NOT NULL, prompt BLOB, prompt_ref INTEGER, prefix_len INTEGER NOT NULL DEFAULT 0,
            response BLOB, logprobs BLOB, PRIMARY KEY (attempt_id, seq))""",
    """CREATE TABLE resources (
            name TEXT NOT NULL, version INTEGER NOT NULL, value TEXT NOT NULL, created_at REAL NOT NULL,
            PRIMARY KEY (name, version))""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
]

POSTGRES_V1: list[str] = [
    """CREATE TABLE rollouts (
            seq BIGSERIAL PRIMARY KEY, rollout_id TEXT NOT NULL UNIQUE, task TEXT NOT NULL, mode TEXT NOT NULL,
            group_id TEXT NOT NULL, status TEXT NOT NULL, max_attempts BIGINT NOT NULL, attempts BIGINT NOT NULL,
            resources_version BIGINT, reward DOUBLE PRECISION, error TEXT, idempotency_key TEXT UNIQUE,
            metadata TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX rollouts_status ON rollouts (status)",
    "CREATE INDEX rollouts_group ON rollouts (group_id)",
    "CREATE INDEX rollouts_created ON rollouts (created_at)",
    "CREATE TABLE queue (pos BIGSERIAL PRIMARY KEY, rollout_id TEXT NOT NULL UNIQUE, mode TEXT NOT NULL)",
    """CREATE TABLE attempts (
            attempt_id TEXT PRIMARY KEY, rollout_id TEXT NOT NULL, number BIGINT NOT NULL, worker_id TEXT NOT NULL,
            status TEXT NOT NULL, lease_expires_at DOUBLE PRECISION NOT NULL, heartbeat_at DOUBLE PRECISION NOT NULL,
            started_at DOUBLE PRECISION NOT NULL, ended_at DOUBLE PRECISION, error TEXT)""",
    "CREATE INDEX attempts_rollout ON attempts (rollout_id, number)",
    "CREATE INDEX attempts_lease ON attempts (lease_expires_at) WHERE status = 'running'",
    """CREATE TABLE spans (
            attempt_id TEXT NOT NULL, seq BIGINT NOT NULL, rollout_id TEXT NOT NULL, kind TEXT NOT NULL,
            name TEXT NOT NULL, parent_seq BIGINT, start_time DOUBLE PRECISION NOT NULL, end_time DOUBLE PRECISION,
            attributes TEXT NOT NULL, prompt BYTEA, prompt_ref BIGINT, prefix_len BIGINT NOT NULL DEFAULT 0,
            response BYTEA, logprobs BYTEA, PRIMARY KEY (attempt_id, seq))""",
    """CREATE TABLE resources (
            name TEXT NOT NULL, version BIGINT NOT NULL, value TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (name, version))""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
]
