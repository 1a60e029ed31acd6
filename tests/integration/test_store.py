"""The store on SQLite and PostgreSQL: every table round-trips, constraints hold, a restart loses nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from controller.store.db import make_engine, make_session_factory, migrate, normalize_url, session_scope
from controller.store.models import (
    ApiToken,
    Artifact,
    Base,
    Job,
    LineageEdge,
    Lock,
    LockQueueEntry,
    Manifest,
    PipelineRun,
    Service,
    Task,
    TaskAttempt,
    TaskEvent,
)

pytestmark = pytest.mark.integration

DIGEST = "sha256:" + "ab" * 32
WHEN = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'controller.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    migrate(eng)
    yield eng
    eng.dispose()


def _populate(engine: Engine) -> str:
    with session_scope(make_session_factory(engine)) as s:
        s.add(Service(name="train", kind="job", spec={"name": "train", "command": ["python", "t.py"]}))
        run = PipelineRun(dag_id="lifecycle", run_id="manual__1", created_at=WHEN)
        s.add(run)
        s.flush()
        task = Task(
            service="train",
            service_spec={"name": "train"},
            params={"lr": 0.1, "nested": {"a": [1, 2]}},
            inputs=[{"ref": "dataset:latest", "digest": DIGEST}],
            code={"repo": "https://git/x", "ref": "main", "commit": "c" * 40},
            resources={"gpus": 1},
            timeout=60.5,
            dag_id="lifecycle",
            run_id="manual__1",
            airflow_task_id="train",
            try_number=1,
            pipeline_run_id=run.id,
            submitted_at=WHEN,
        )
        s.add(task)
        s.flush()
        s.add(TaskAttempt(task_id=task.id, attempt=1, state="running", started_at=WHEN))
        s.add(Job(task_id=task.id, attempt=1, runtime="local", ref="pid:1:2", workspace="/w", state="running"))
        s.add(TaskEvent(task_id=task.id, attempt=1, event="submitted", detail={"by": "test"}, timestamp=WHEN))
        s.add(Artifact(digest=DIGEST, kind="model", name="m", size=2**40, media_type="x/y", uris=["file:///a"]))
        s.add(
            Manifest(
                id="urn:c2pa:1",
                artifact_digest=DIGEST,
                task_id=task.id,
                manifest={"claim": {"k": "v"}},
                manifest_hash="sha256:" + "0" * 64,
                c2pa=b"\x00\x01\xff" * 10,
                oms_bundle=b"{}",
                log_index=7,
            )
        )
        s.add(LineageEdge(src_type="task", src_id=task.id, dst_type="artifact", dst_id=DIGEST, role="produced"))
        s.add(Lock(name="gpu-0", holder_task_id=task.id, acquired_at=WHEN))
        s.add(LockQueueEntry(task_id=task.id, lock_names=["gpu-0", "db"], gpus=1))
        s.add(ApiToken(token_hash="f" * 64, task_id=task.id))
        return task.id


def test_restart_loses_nothing(db_url: str, engine: Engine) -> None:
    task_id = _populate(engine)
    engine.dispose()

    fresh = make_engine(db_url)  # a new controller process on the same database
    try:
        migrate(fresh)  # start-up migrates again: must be a no-op
        with make_session_factory(fresh)() as s:
            models: list[type[Base]] = [Service, PipelineRun, Task, TaskAttempt, Job, TaskEvent, Artifact, Manifest]
            models += [LineageEdge, Lock, LockQueueEntry, ApiToken]
            for model in models:
                assert len(s.scalars(select(model)).all()) == 1, model.__tablename__
            task = s.get(Task, task_id)
            assert task is not None
            assert task.params == {"lr": 0.1, "nested": {"a": [1, 2]}}
            assert task.code == {"repo": "https://git/x", "ref": "main", "commit": "c" * 40}
            assert task.submitted_at == WHEN
            assert task.submitted_at.tzinfo is not None
            assert task.timeout == 60.5
            manifest = s.get(Manifest, "urn:c2pa:1")
            assert manifest is not None
            assert manifest.c2pa == b"\x00\x01\xff" * 10
            assert manifest.manifest == {"claim": {"k": "v"}}
            artifact = s.get(Artifact, DIGEST)
            assert artifact is not None
            assert artifact.size == 2**40
            assert s.scalars(select(LockQueueEntry.lock_names)).one() == ["gpu-0", "db"]
    finally:
        fresh.dispose()


def test_run_identity_is_unique(engine: Engine) -> None:
    factory = make_session_factory(engine)
    identity = {"dag_id": "d", "run_id": "r", "airflow_task_id": "t", "try_number": 1}
    with session_scope(factory) as s:
        s.add(Task(service="x", **identity))
    with pytest.raises(IntegrityError), session_scope(factory) as s:
        s.add(Task(service="x", **identity))
    with session_scope(factory) as s:  # a retry is a new try_number
        s.add(Task(service="x", **identity | {"try_number": 2}))
        s.add(Task(service="x"))  # tasks without run identity do not collide
        s.add(Task(service="x"))
    with factory() as s:
        assert len(s.scalars(select(Task)).all()) == 4


def test_foreign_keys_are_enforced(engine: Engine) -> None:
    with pytest.raises(IntegrityError), session_scope(make_session_factory(engine)) as s:
        s.add(Job(task_id="no-such-task", attempt=1, runtime="local", state="running"))


def test_lock_queue_tickets_are_fifo_and_never_reused(engine: Engine) -> None:
    factory = make_session_factory(engine)
    with session_scope(factory) as s:
        tasks = [Task(service="x") for _ in range(3)]
        s.add_all(tasks)
        s.flush()
        for task in tasks:
            s.add(LockQueueEntry(task_id=task.id, lock_names=["l"]))
            s.flush()
        ids = [t.id for t in tasks]
    with session_scope(factory) as s:
        queued = s.execute(select(LockQueueEntry.ticket, LockQueueEntry.task_id).order_by(LockQueueEntry.ticket)).all()
        assert [task_id for _, task_id in queued] == ids  # ticket order is enqueue order
        tickets = [ticket for ticket, _ in queued]
        last = s.scalars(select(LockQueueEntry).where(LockQueueEntry.ticket == tickets[-1])).one()
        s.delete(last)
    with session_scope(factory) as s:
        s.add(LockQueueEntry(task_id=ids[-1], lock_names=["l"]))
    with factory() as s:
        assert max(s.scalars(select(LockQueueEntry.ticket))) > tickets[-1]


def test_naive_datetimes_are_refused(engine: Engine) -> None:
    with pytest.raises(StatementError, match="naive datetime"), session_scope(make_session_factory(engine)) as s:
        s.add(Task(service="x", submitted_at=datetime(2026, 1, 1)))


def test_timestamps_keep_utc(engine: Engine) -> None:
    other_zone = WHEN.astimezone(timezone(timedelta(hours=5)))
    factory = make_session_factory(engine)
    with session_scope(factory) as s:
        task = Task(service="x", submitted_at=other_zone)
        s.add(task)
    with factory() as s:
        stored = s.get(Task, task.id)
        assert stored is not None
        assert stored.submitted_at == WHEN
        assert stored.submitted_at.utcoffset() == timedelta(0)


def test_every_model_table_exists(engine: Engine) -> None:
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())


def test_sqlite_pragmas(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        with eng.connect() as c:
            assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert c.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert (c.execute(text("PRAGMA busy_timeout")).scalar() or 0) >= 1000
    finally:
        eng.dispose()


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgresql://u@h:5432/db", "postgresql+psycopg"),
        ("postgres://u:p@h/db", "postgresql+psycopg"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg"),
        ("sqlite:///x.db", "sqlite"),
    ],
)
def test_plain_postgres_urls_use_psycopg3(url: str, driver: str) -> None:
    assert normalize_url(url).drivername == driver
