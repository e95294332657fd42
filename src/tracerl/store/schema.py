"""The tables of the SQL store backends, defined once, and everything derived from them.

Each table is a :class:`Table` of :class:`Column` s (name, type, nullability, default, uniqueness) and
indexes. From these definitions come:

* the DDL of each dialect (:func:`create_statements`; ``sqlite.py`` and ``postgres.py`` hold none);
* the column lists of the named queries (``queries.py``) and the row ↔ object mapping by column name
  (``sql_rows.py``): a column that is a *field* has the name of a field of the table's dataclass
  (:class:`~tracerl.types.Rollout`, :class:`~tracerl.types.Attempt`, ...), in the same order;
* the wire form of rollouts and attempts (``wire.py``): the field columns, enums as their values.

A column type is one of ``text``, ``int`` (64-bit), ``real`` (double), ``blob`` and ``serial`` (an
auto-increment 64-bit primary key). A ``json`` column holds compact JSON text; an ``enum`` column the value
of a str enum.

Migrations. A new database gets the current tables in one step at :data:`SCHEMA_VERSION`. A database
written by an older tracerl is brought forward by the steps in :data:`UPGRADES` (version ``k`` → ``k + 1``),
each written in terms of the definitions above (:class:`AddColumn`, :class:`CreateIndex`) plus plain SQL
where data moves (:class:`Sql`). So the definitions here always describe the latest schema, and
``tests/store/schema_v1.py`` keeps the version 1 DDL as it was shipped, to test the upgrade path.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from tracerl.types import AttemptStatus, Mode, RolloutStatus, SpanKind

ColumnType = Literal["text", "int", "real", "blob", "serial"]


@dataclass(frozen=True, slots=True)
class Column:
    """One column. ``default`` is an SQL literal; ``primary`` makes it the table's key on its own (a key of
    several columns is :attr:`Table.primary_key`); ``field=False`` marks a column no dataclass field maps to
    (the store's own ``seq`` of rollouts, the packed token columns of spans)."""

    name: str
    type: ColumnType
    nullable: bool = False
    default: str | None = None
    unique: bool = False
    primary: bool = False
    json: bool = False
    enum: type[enum.StrEnum] | None = None
    field: bool = True


@dataclass(frozen=True, slots=True)
class Index:
    """``CREATE [UNIQUE] INDEX name ON table (columns) [WHERE where]``."""

    name: str
    columns: tuple[str, ...]
    unique: bool = False
    where: str | None = None


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()  # a key of several columns (one column: ``Column.primary`` or ``serial``)
    indexes: tuple[Index, ...] = ()

    def column(self, name: str) -> Column:
        """The column called ``name`` (``KeyError`` if there is none)."""
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"table {self.name} has no column {name!r}")

    def index(self, name: str) -> Index:
        """The index called ``name`` (``KeyError`` if there is none)."""
        for i in self.indexes:
            if i.name == name:
                return i
        raise KeyError(f"table {self.name} has no index {name!r}")

    @property
    def fields(self) -> tuple[Column, ...]:
        """The columns that are fields of the table's dataclass, in its field order."""
        return tuple(c for c in self.columns if c.field)

    @property
    def written(self) -> tuple[Column, ...]:
        """The columns an ``INSERT`` names: all but a ``serial`` key (the database numbers it)."""
        return tuple(c for c in self.columns if c.type != "serial")


ROLLOUTS = Table(
    "rollouts",
    (
        Column("seq", "serial", field=False),  # creation order
        Column("rollout_id", "text", unique=True),
        Column("task", "text", json=True),
        Column("mode", "text", enum=Mode),
        Column("group_id", "text"),
        Column("status", "text", enum=RolloutStatus),
        Column("max_attempts", "int"),
        Column("attempts", "int"),
        Column("resources_version", "int", nullable=True),
        Column("reward", "real", nullable=True),
        Column("error", "text", nullable=True),
        Column("idempotency_key", "text", nullable=True, unique=True),
        Column("metadata", "text", json=True),
        Column("created_at", "real"),
        Column("updated_at", "real"),
    ),
    indexes=(
        Index("rollouts_status", ("status",)),
        Index("rollouts_group", ("group_id",)),
        Index("rollouts_created", ("created_at",)),
    ),
)

QUEUE = Table(
    "queue",  # the queued rollouts; ``pos`` is the claim order, so a retried rollout goes to the back
    (
        Column("pos", "serial", field=False),
        Column("rollout_id", "text", unique=True),
        Column("mode", "text", enum=Mode),
    ),
)

ATTEMPTS = Table(
    "attempts",
    (
        Column("attempt_id", "text", primary=True),
        Column("rollout_id", "text"),
        Column("number", "int"),
        Column("worker_id", "text"),
        Column("status", "text", enum=AttemptStatus),
        Column("lease_expires_at", "real"),
        Column("heartbeat_at", "real"),
        Column("started_at", "real"),
        Column("ended_at", "real", nullable=True),
        Column("error", "text", nullable=True),
    ),
    indexes=(
        Index("attempts_rollout", ("rollout_id", "number")),
        Index("attempts_lease", ("lease_expires_at",), where=f"status = '{AttemptStatus.RUNNING.value}'"),
    ),
)

SPANS = Table(
    "spans",  # token ids packed by ``codec``: a prompt may be a reference to an earlier span plus a suffix
    (
        Column("attempt_id", "text"),
        Column("seq", "int"),
        Column("rollout_id", "text"),
        Column("kind", "text", enum=SpanKind),
        Column("name", "text"),
        Column("parent_seq", "int", nullable=True),
        Column("start_time", "real"),
        Column("end_time", "real", nullable=True),
        Column("attributes", "text", json=True),
        Column("position", "int", default="-1"),  # the default only fills rows the version 2 upgrade numbers
        Column("prompt", "blob", nullable=True, field=False),
        Column("prompt_ref", "int", nullable=True, field=False),
        Column("prefix_len", "int", default="0", field=False),
        Column("response", "blob", nullable=True, field=False),
        Column("logprobs", "blob", nullable=True, field=False),
    ),
    primary_key=("attempt_id", "seq"),
    indexes=(Index("spans_position", ("attempt_id", "position"), unique=True),),
)

RESOURCES = Table(
    "resources",
    (
        Column("name", "text"),
        Column("version", "int"),
        Column("value", "text", json=True),
        Column("created_at", "real"),
    ),
    primary_key=("name", "version"),
)

META = Table("meta", (Column("key", "text", primary=True), Column("value", "text")))

TABLES = (ROLLOUTS, QUEUE, ATTEMPTS, SPANS, RESOURCES, META)


# -- dialects -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the SQL backends: column types, the placeholder, row locks and list parameters."""

    name: Literal["sqlite", "postgres"]
    types: dict[ColumnType, str]
    param: str  # the placeholder of a parameter
    for_update: str  # suffix of a SELECT whose rows the transaction will change ("" where a write lock covers it)
    skip_locked: bool  # whether claimers take queue heads with FOR UPDATE ... SKIP LOCKED

    def lock(self, *aliases: str, skip_locked: bool = False) -> str:
        """The row-lock suffix of a SELECT over ``aliases`` (``""`` for sqlite, whose write lock covers it)."""
        if not self.for_update:
            return ""
        of = f" OF {', '.join(aliases)}" if aliases else ""
        return f"{self.for_update}{of}{' SKIP LOCKED' if skip_locked and self.skip_locked else ''}"

    def in_list(self, column: str) -> str:
        """A condition testing ``column`` against a list passed as one parameter (see :meth:`list_param`)."""
        if self.name == "postgres":
            return f"{column} = ANY({self.param})"
        return f"{column} IN (SELECT value FROM json_each({self.param}))"

    def list_param(self, values: Sequence[object]) -> object:
        """The parameter for an :meth:`in_list` condition."""
        return list(values) if self.name == "postgres" else json.dumps(list(values))


SQLITE = Dialect(
    "sqlite",
    {"text": "TEXT", "int": "INTEGER", "real": "REAL", "blob": "BLOB", "serial": "INTEGER PRIMARY KEY"},
    param="?",
    for_update="",
    skip_locked=False,
)
POSTGRES = Dialect(
    "postgres",
    {"text": "TEXT", "int": "BIGINT", "real": "DOUBLE PRECISION", "blob": "BYTEA", "serial": "BIGSERIAL PRIMARY KEY"},
    param="%s",
    for_update=" FOR UPDATE",
    skip_locked=True,
)


# -- DDL ----------------------------------------------------------------------------------------


def column_ddl(c: Column, d: Dialect) -> str:
    """``name TYPE [NOT NULL | PRIMARY KEY] [DEFAULT x] [UNIQUE]`` of ``c`` in dialect ``d``. A key column
    says no ``NOT NULL`` (as the shipped version 1 tables did not; postgres implies it)."""
    parts = [c.name, d.types[c.type]]
    if c.primary:
        parts.append("PRIMARY KEY")
    elif not c.nullable and c.type != "serial":
        parts.append("NOT NULL")
    if c.default is not None:
        parts.append(f"DEFAULT {c.default}")
    if c.unique:
        parts.append("UNIQUE")
    return " ".join(parts)


def table_ddl(t: Table, d: Dialect) -> str:
    body = [column_ddl(c, d) for c in t.columns]
    if t.primary_key:
        body.append(f"PRIMARY KEY ({', '.join(t.primary_key)})")
    return f"CREATE TABLE {t.name} ({', '.join(body)})"


def index_ddl(t: Table, i: Index) -> str:
    where = f" WHERE {i.where}" if i.where else ""
    return f"CREATE {'UNIQUE ' if i.unique else ''}INDEX {i.name} ON {t.name} ({', '.join(i.columns)}){where}"


def create_statements(d: Dialect) -> list[str]:
    """The DDL of a new database at :data:`SCHEMA_VERSION`."""
    out: list[str] = []
    for t in TABLES:
        out.append(table_ddl(t, d))
        out.extend(index_ddl(t, i) for i in t.indexes)
    return out


# -- migrations -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddColumn:
    table: Table
    column: str

    def sql(self, d: Dialect) -> str:
        return f"ALTER TABLE {self.table.name} ADD COLUMN {column_ddl(self.table.column(self.column), d)}"


@dataclass(frozen=True, slots=True)
class CreateIndex:
    table: Table
    index: str

    def sql(self, d: Dialect) -> str:
        return index_ddl(self.table, self.table.index(self.index))


@dataclass(frozen=True, slots=True)
class Sql:
    """A statement that is the same in every dialect (it moves data; no parameters)."""

    text: str

    def sql(self, d: Dialect) -> str:
        return self.text


Step = AddColumn | CreateIndex | Sql

UPGRADES: dict[int, tuple[Step, ...]] = {
    2: (  # span order assigned by the store (tracerl.store.order); old spans keep their seq order
        AddColumn(SPANS, "position"),
        Sql(
            "UPDATE spans SET position = (SELECT COUNT(*) FROM spans p WHERE p.attempt_id = spans.attempt_id "
            "AND p.seq < spans.seq)"
        ),
        CreateIndex(SPANS, "spans_position"),
    ),
}
"""The steps that bring a database at version ``k - 1`` to version ``k``."""

SCHEMA_VERSION = 1 + len(UPGRADES)
"""The version of the tables defined above (version 1 was the first shipped schema)."""

VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"


def migration_plan(d: Dialect, current: int) -> list[tuple[int, list[str]]]:
    """``[(version, statements), ...]`` that bring a database at version ``current`` (0: empty) to
    :data:`SCHEMA_VERSION`; each version's statements run, then the version is recorded, in one
    transaction."""
    if current == 0:
        return [(SCHEMA_VERSION, create_statements(d))]
    return [(v, [step.sql(d) for step in UPGRADES[v]]) for v in range(current + 1, SCHEMA_VERSION + 1)]
