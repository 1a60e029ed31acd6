"""The DAG import test: every DAG file parses in Airflow's ``DagBag`` and does no I/O at parse time.

:func:`check_dags` runs the probe in a child interpreter (``python -m controller.pipeline.dagcheck``) with
its own ``AIRFLOW_HOME``, so Airflow's import-time configuration never leaks into the caller. The
child loads the folder with ``DagBag`` (what the DAG processor does), then executes each file that
imported once more under an audit hook, its imports already loaded: any file opened (other than
the DAG file itself), directory listed, socket opened or process started is parse-time I/O.
``mlprov deploy`` and ``mlprov pipeline import-test`` (the CI template's job) both call it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.pipeline.errors import BadInputError, PipelineError

__all__ = ["DagCheckReport", "DagFileReport", "check_dags"]

_WATCHED = (
    "open",
    "os.listdir",
    "os.scandir",
    "os.system",
    "os.posix_spawn",
    "socket.connect",
    "socket.getaddrinfo",
    "subprocess.Popen",
    "urllib.Request",
)


@dataclass(frozen=True)
class DagFileReport:
    path: str
    """Relative to the DAG folder."""
    dag_ids: list[str] = field(default_factory=list)
    error: str | None = None
    io: list[str] = field(default_factory=list)
    """``event args`` of each parse-time I/O operation."""

    @property
    def ok(self) -> bool:
        return self.error is None and not self.io


@dataclass(frozen=True)
class DagCheckReport:
    files: list[DagFileReport]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.files)

    def dag_ids(self, path: str) -> list[str]:
        return next((f.dag_ids for f in self.files if f.path == path), [])

    def first_problem(self) -> str | None:
        """One line naming the first broken file and what to fix, or None."""
        for f in self.files:
            if f.error is not None:
                last = f.error.strip().splitlines()[-1] if f.error.strip() else "import failed"
                return f"DAG file {f.path} does not import: {last}: fix the import error"
            if f.io:
                return (
                    f"DAG file {f.path} does I/O at parse time ({f.io[0]}): move it into a task "
                    "(parse-time code must only build the DAG)"
                )
        return None

    def raise_for_problems(self) -> None:
        problem = self.first_problem()
        if problem is not None:
            raise BadInputError(problem)


def check_dags(dags: Path, plugins: Path | None = None, *, timeout: float = 300.0) -> DagCheckReport:
    """Import-test every DAG file under ``dags`` (with ``plugins`` importable) in a child interpreter."""
    if not dags.is_dir():
        raise BadInputError(f"{dags} is not a directory of DAG files: fix --dags")
    if plugins is not None and not plugins.is_dir():
        raise BadInputError(f"{plugins} is not a directory: fix --plugins")
    with tempfile.TemporaryDirectory(prefix="mlprov-dagcheck-") as tmp:
        result = Path(tmp) / "result.json"
        env = dict(os.environ)
        env.update(
            {
                "AIRFLOW_HOME": str(Path(tmp) / "airflow"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(dags.resolve()),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str((plugins or Path(tmp) / "no-plugins").resolve()),
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
            }
        )
        argv = [sys.executable, "-m", "controller.pipeline.dagcheck", str(dags.resolve()), str(result)]
        if plugins is not None:
            argv.append(str(plugins.resolve()))
        try:
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise PipelineError(f"the DAG import test took more than {timeout:.0f} s: a DAG file hangs") from exc
        if done.returncode != 0 or not result.is_file():
            tail = " | ".join(done.stderr.strip().splitlines()[-3:])
            raise PipelineError(f"the DAG import test could not run (exit {done.returncode}): {tail}")
        data = json.loads(result.read_text())
    files = [DagFileReport(**f) for f in data["files"]]
    return DagCheckReport(files=files, seconds=float(data["seconds"]))


# -- the child --------------------------------------------------------------------------------------


def _probe(dags: Path, plugins: Path | None) -> dict[str, Any]:
    started = time.perf_counter()
    # Airflow puts the DAG and plugins folders on sys.path; a plugins folder that is a package
    # (``plugins.operators``) needs its parent too. Appended: they never shadow installed modules.
    for path in (dags, plugins.parent if plugins else None, plugins):
        if path is not None and str(path) not in sys.path:
            sys.path.append(str(path))
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(dags))
    by_file: dict[str, list[str]] = {}
    for dag_id, dag in bag.dags.items():
        by_file.setdefault(str(Path(dag.fileloc).resolve()), []).append(dag_id)
    errors = {str(Path(k if Path(k).is_absolute() else dags / k).resolve()): v for k, v in bag.import_errors.items()}
    events: list[str] = []
    recording = {"on": False}

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if recording["on"] and event in _WATCHED:
            events.append(f"{event} {' '.join(str(a) for a in args)[:200]}")

    sys.addaudithook(hook)
    files: list[dict[str, Any]] = []
    for path in sorted(p for p in dags.rglob("*.py") if "__pycache__" not in p.parts):
        key = str(path.resolve())
        report: dict[str, Any] = {
            "path": path.relative_to(dags).as_posix(),
            "dag_ids": sorted(by_file.get(key, [])),
            "error": errors.get(key),
            "io": [],
        }
        if report["error"] is None and report["dag_ids"]:
            spec = importlib.util.spec_from_file_location(f"_mlprov_dag_probe_{len(files)}", path)
            if spec is not None and spec.loader is not None:
                module = importlib.util.module_from_spec(spec)
                code = compile(path.read_bytes(), str(path), "exec")
                events.clear()
                recording["on"] = True
                try:
                    exec(code, module.__dict__)  # noqa: S102 - executing the DAG file is the test
                except Exception as exc:
                    report["error"] = f"{type(exc).__name__}: {exc}"
                finally:
                    recording["on"] = False
                report["io"] = [e for e in events if e != f"open {path} r" and not e.startswith(f"open {path} ")]
        files.append(report)
    return {"files": files, "seconds": time.perf_counter() - started}


def main(argv: list[str]) -> int:
    dags, result = Path(argv[0]), Path(argv[1])
    plugins = Path(argv[2]) if len(argv) > 2 else None
    data = _probe(dags, plugins)
    result.write_text(json.dumps(data))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
