"""The embedded ``LogIndex``: SQLite FTS5 in its own database file (``$MLPROV_HOME/logs/index.db``, WAL).

Schema: a plain table ``logs`` (one row per record; ``run`` and ``task`` indexed) and an
external-content FTS5 table ``logs_fts`` over ``message`` and ``fields``. ``logs.key`` (the bus
position, ``LogRecord.id``) is UNIQUE and rows go in with ``INSERT OR IGNORE``, so a redelivered
batch adds nothing; the same transaction then feeds exactly the new rows (``id`` above the previous
maximum) to FTS5 with one ``INSERT ... SELECT`` (a per-row trigger measured 6x slower).

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

__all__ = ["MAX_LIMIT", "FtsLogIndex", "fts_match_expression"]

MAX_LIMIT = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY,
    key TEXT UNIQUE,
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
CREATE VIRTUAL TABLE IF NOT EXISTS logs_fts USING fts5 (
    message, fields, content='logs', content_rowid='id', columnsize=0
);
"""

_INSERT = (
    "INSERT OR IGNORE INTO logs (key, timestamp, run, dag, task, attempt, component, stream, level, event, "
    "message, fields) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
        except sqlite3.Error as exc:
            raise LogError(f"cannot open the log index {self.path}: {exc}") from exc

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
        with self._write_lock:
            try:
                self._writer.execute("BEGIN IMMEDIATE")
                try:
                    before = self._writer.execute("SELECT coalesce(max(id), 0) FROM logs").fetchone()[0]
                    self._writer.executemany(_INSERT, rows)
                    self._writer.execute(_FEED_FTS, (before,))
                except BaseException:
                    self._writer.execute("ROLLBACK")
                    raise
                self._writer.execute("COMMIT")
            except sqlite3.Error as exc:
                raise LogError(f"cannot index {len(rows)} log records in {self.path}: {exc}") from exc

    # -- reading ------------------------------------------------------------------------------
    def search(self, query: LogQuery) -> LogPage:
        if not 1 <= query.limit <= MAX_LIMIT:
            raise InvalidLogQueryError(f"limit must be between 1 and {MAX_LIMIT}, not {query.limit}")
        if query.order not in ("asc", "desc"):
            raise InvalidLogQueryError(f"order must be asc or desc, not {query.order!r}")
        if query.since is not None and query.until is not None and query.since > query.until:
            raise InvalidLogQueryError("since is after until")
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
        for column, value in (
            ("run", query.run_id),
            ("dag", query.dag_id),
            ("task", query.task_id),
            ("attempt", query.attempt),
            ("component", query.component),
            ("level", query.level),
            ("stream", query.stream),
            ("event", query.event),
        ):
            if value is not None:
                where.append(f"l.{column} = ?")
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
        """Whether the record with bus position ``key`` is searchable."""
        return self._reader().execute("SELECT 1 FROM logs WHERE key = ?", (key,)).fetchone() is not None

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()
