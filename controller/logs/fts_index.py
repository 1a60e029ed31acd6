"""The embedded ``LogIndex``: SQLite FTS5 in its own database file (``$MLPROV_HOME/logs/index.db``, WAL).

Schema: a plain table ``logs`` (one row per record; ``run`` and ``task`` indexed) and an
external-content FTS5 table ``logs_fts`` over ``message`` and ``fields``. Idempotency is by bus
position: ``log_positions`` keeps, per source (``local``, or ``<topic>:<partition>`` on Kafka), the
highest offset indexed; a record whose ``id`` (``<source>:<offset>``) is at or below it is skipped, so a
redelivered batch adds nothing. This relies on what both buses guarantee: one source's records are
delivered in increasing offset order. (It replaced a UNIQUE index on ``logs.key``, which cost a B-tree
insert per line; a record whose id is not a bus position is always inserted.) The same transaction
then feeds exactly the new rows (``id`` above the previous maximum) to FTS5 with one
``INSERT ... SELECT`` (a per-row trigger measured 6x slower).

Writes: one connection, one transaction per batch, ``executemany`` with one prepared statement;
``synchronous=FULL`` so that "accepted" means on disk before the consumer commits its offset.
Reads: one connection per thread (WAL lets them run beside the writer).

Order is arrival order (``logs.id``, which follows the bus's order, hence each task's line order),
newest first or oldest first; the cursor is the last row's ``id``, so pages stay stable while new
lines arrive. Ordering by ``id`` instead of ``timestamp`` spares a time index (measured: each extra
index costs ~20% of insert throughput); ``since``/``until`` filter on ``timestamp``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from controller.logs.base import InvalidLogQueryError, LogError, LogPage, LogQuery, LogRecord

__all__ = ["FtsLogIndex", "fts_match_expression"]

# LogRecord field -> column of the ``logs`` table.
_FILTER_COLUMNS = {
    "run_id": "run",
    "dag_id": "dag",
    "task_id": "task",
    "attempt": "attempt",
    "component": "component",
    "level": "level",
    "stream": "stream",
    "event": "event",
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY,
    key TEXT,
    timestamp REAL NOT NULL,
    run TEXT,
    dag TEXT,
    task TEXT,
    attempt INTEGER,
    component TEXT NOT NULL,
    stream TEXT,
    level TEXT NOT NULL,
    event TEXT,
    message TEXT NOT NULL,
    fields TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS logs_by_run ON logs (run);
CREATE INDEX IF NOT EXISTS logs_by_task ON logs (task);
CREATE TABLE IF NOT EXISTS log_positions (source TEXT PRIMARY KEY, high INTEGER NOT NULL) WITHOUT ROWID;
CREATE VIRTUAL TABLE IF NOT EXISTS logs_fts USING fts5 (
    message, fields, content='logs', content_rowid='id', columnsize=0
);
"""

_INSERT = (
    "INSERT OR IGNORE INTO logs (key, timestamp, run, dag, task, attempt, component, stream, level, event, "
    "message, fields) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SAVE_POSITION = (
    "INSERT INTO log_positions (source, high) VALUES (?, ?) ON CONFLICT (source) DO UPDATE SET high = excluded.high"
)
_FEED_FTS = "INSERT INTO logs_fts (rowid, message, fields) SELECT id, message, fields FROM logs WHERE id > ?"
_COLUMNS = (
    "l.id, l.key, l.timestamp, l.run, l.dag, l.task, l.attempt, l.component, l.stream, l.level, l.event, "
    "l.message, l.fields"
)
_TERM = re.compile(r'"([^"]*)"|(\S+)')
_WORD = re.compile(r"\w", re.UNICODE)


def fts_match_expression(q: str) -> str | None:
    """A safe FTS5 MATCH expression for a user query (see ``LogQuery.q``); None when it has no words.

    Every term is quoted, so FTS5 operators and punctuation in ``q`` are plain text, never syntax.
    """
    parts: list[str] = []
    for match in _TERM.finditer(q):
        phrase, word = match.group(1), match.group(2)
        text = phrase if phrase is not None else word
        prefix = phrase is None and text.endswith("*")
        text = text.rstrip("*") if prefix else text
        if not _WORD.search(text):
            continue
        quoted = '"' + text.replace('"', '""') + '"'
        parts.append(quoted + ("*" if prefix else ""))
    return " AND ".join(parts) if parts else None


def _encode_cursor(rowid: int, order: str) -> str:
    raw = json.dumps([rowid, order], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, order: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        rowid, cursor_order = json.loads(raw)
        if cursor_order != order:
            raise InvalidLogQueryError(f"this cursor belongs to order={cursor_order}; ask with the same order")
        return int(rowid)
    except (binascii.Error, ValueError, TypeError) as exc:
        if isinstance(exc, InvalidLogQueryError):
            raise
        raise InvalidLogQueryError("malformed cursor: pass next_cursor from the previous page unchanged") from None


def _position(key: str) -> tuple[str, int] | None:
    """``(source, offset)`` of a bus position ``<source>:<offset>``; None for any other id."""
    source, sep, offset = key.rpartition(":")
    if not sep or not offset.isdigit():
        return None
    return source, int(offset)


def _row_to_record(row: Sequence[Any]) -> LogRecord:
    _, key, timestamp, run, dag, task, attempt, component, stream, level, event, message, fields = row
    return LogRecord(
        timestamp=timestamp,
        message=message,
        component=component,
        level=level,
        stream=stream,
        run_id=run,
        dag_id=dag,
        task_id=task,
        attempt=attempt,
        event=event,
        fields=json.loads(fields) if fields else {},
        id=key,
    )


class FtsLogIndex:
    """Log records in SQLite FTS5; thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        try:
            self._writer = self._connect()
            self._writer.execute("PRAGMA synchronous=FULL")
            self._writer.executescript(_SCHEMA)
            self._high = self._load_positions()
        except sqlite3.Error as exc:
            raise LogError(f"cannot open the log index {self.path}: {exc}") from exc

    def _load_positions(self) -> dict[str, int]:
        """The highest indexed offset per source; derived once from ``logs`` for an index written before
        ``log_positions`` existed."""
        high = dict(self._writer.execute("SELECT source, high FROM log_positions").fetchall())
        if not high and self._writer.execute("SELECT 1 FROM logs LIMIT 1").fetchone() is not None:
            for (key,) in self._writer.execute("SELECT key FROM logs WHERE key IS NOT NULL"):
                position = _position(key)
                if position is not None and position[1] > high.get(position[0], -1):
                    high[position[0]] = position[1]
            with self._writer:
                self._writer.executemany(_SAVE_POSITION, list(high.items()))
        return high

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute("PRAGMA cache_size=-32768")  # 32 MiB
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
        return conn

    # -- writing ------------------------------------------------------------------------------
    def index(self, records: Sequence[LogRecord]) -> None:
        if not records:
            return
        with self._write_lock:
            high = dict(self._high)
            fresh: list[LogRecord] = []
            for r in records:
                position = _position(r.id) if r.id is not None else None
                if position is not None:
                    if position[1] <= high.get(position[0], -1):
                        continue  # redelivered: already indexed
                    high[position[0]] = position[1]
                fresh.append(r)
            if fresh:
                self._write(
                    fresh, [(source, offset) for source, offset in high.items() if self._high.get(source) != offset]
                )
                self._high = high

    def _write(self, records: Sequence[LogRecord], positions: list[tuple[str, int]]) -> None:
        rows = [
            (
                r.id,
                r.timestamp,
                r.run_id,
                r.dag_id,
                r.task_id,
                r.attempt,
                r.component,
                r.stream,
                r.level,
                r.event,
                r.message,
                json.dumps(r.fields, ensure_ascii=False, separators=(",", ":"), default=str) if r.fields else "",
            )
            for r in records
        ]
        try:
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                before = self._writer.execute("SELECT coalesce(max(id), 0) FROM logs").fetchone()[0]
                self._writer.executemany(_INSERT, rows)
                self._writer.executemany(_SAVE_POSITION, positions)
                self._writer.execute(_FEED_FTS, (before,))
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
            self._writer.execute("COMMIT")
        except sqlite3.Error as exc:
            raise LogError(f"cannot index {len(rows)} log records in {self.path}: {exc}") from exc

    # -- reading ------------------------------------------------------------------------------
    def search(self, query: LogQuery) -> LogPage:
        query.check()
        where: list[str] = []
        args: list[Any] = []
        match = fts_match_expression(query.q) if query.q else None
        source = "logs l"
        order_key = "l.id"
        if match is not None:
            # drive from FTS5 in rowid order (it walks its doclists in that order: no sort, stops at LIMIT)
            order_key = "logs_fts.rowid"
            source = "logs_fts JOIN logs l ON l.id = logs_fts.rowid"
            where.append("logs_fts MATCH ?")
            args.append(match)
        for field, value in query.exact_filters():
            where.append(f"l.{_FILTER_COLUMNS[field]} = ?")
            args.append(value)
        if query.since is not None:
            where.append("l.timestamp >= ?")
            args.append(query.since)
        if query.until is not None:
            where.append("l.timestamp < ?")
            args.append(query.until)
        op, direction = ("<", "DESC") if query.order == "desc" else (">", "ASC")
        if query.cursor:
            where.append(f"{order_key} {op} ?")
            args.append(_decode_cursor(query.cursor, query.order))
        sql = f"SELECT {_COLUMNS} FROM {source}"  # noqa: S608 - only fixed fragments; values are bound
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {order_key} {direction} LIMIT ?"
        args.append(query.limit + 1)
        try:
            rows = self._reader().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise LogError(f"log search failed in {self.path}: {exc}") from exc
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        records = [_row_to_record(row) for row in rows]
        next_cursor = _encode_cursor(rows[-1][0], query.order) if more else None
        return LogPage(records=records, next_cursor=next_cursor)

    def count(self) -> int:
        """How many records are indexed."""
        row = self._reader().execute("SELECT count(*) FROM logs").fetchone()
        return int(row[0])

    def contains(self, key: str) -> bool:
        """Whether the record with bus position ``key`` is searchable (any other id: a table scan)."""
        position = _position(key)
        if position is None:
            return self._reader().execute("SELECT 1 FROM logs WHERE key = ?", (key,)).fetchone() is not None
        row = self._reader().execute("SELECT high FROM log_positions WHERE source = ?", (position[0],)).fetchone()
        return row is not None and position[1] <= row[0]

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()
