"""Scheduled retraining: one call for cron, systemd timers and CI schedules (``cvpipe retrain``, ``make retrain``).

1. Take an exclusive ``fcntl`` lock on ``.dvc/tmp/cvpipe-retrain.lock`` (a second caller waits up to
   ``wait_s`` seconds, then gives up with :class:`RetrainBusy`; the lock dies with its process, so a crash leaves
   nothing to clean up).
2. ``dvc status``: nothing changed (data, params, code) → "nothing to do", nothing runs.
3. Else ``dvc repro`` (its log goes to stderr) with one ``CVPIPE_PIPELINE_RUN`` id for every run it opens; the
   pipeline's promote stages decide champion vs challenger.
4. One summary line from ``models/<m>/registry.json`` (which versions are new) and ``reports/<m>/promotion.json``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from cvpipe.errors import CvpipeError

log = logging.getLogger(__name__)
LOCK_FILE = Path(".dvc") / "tmp" / "cvpipe-retrain.lock"


class RetrainBusy(CvpipeError):
    """Another retrain holds the lock."""


class RetrainFailed(CvpipeError):
    """``dvc status`` or ``dvc repro`` failed."""


@dataclass(frozen=True)
class RetrainResult:
    outcome: str  # "nothing to do" | "retrained, promoted" | "retrained, kept champion" | "retrained"
    summary: str  # the one line printed for the scheduler's log


@contextlib.contextmanager
def exclusive_lock(path: Path, wait_s: float) -> Iterator[IO[str]]:
    """Hold an exclusive flock on ``path`` (its content: the holder's pid); wait up to ``wait_s`` for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        deadline = time.monotonic() + max(wait_s, 0.0)
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    fh.seek(0)
                    holder = fh.read().strip() or "unknown"
                    raise RetrainBusy(f"another retrain is running (pid {holder}, lock {path}); not starting a second "
                                      f"one" + (f" after waiting {wait_s:g} s" if wait_s > 0 else "")) from None
                time.sleep(min(0.5, max(deadline - time.monotonic(), 0.01)))
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        try:
            yield fh
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _tool(name: str) -> str:
    """``name`` beside the running interpreter (the project's venv) when there, else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def _env(run_id: str) -> dict[str, str]:
    from cvpipe.tracking import PIPELINE_RUN_ENV

    env = dict(os.environ)
    # Stage commands call `python`: make it this interpreter even under cron's bare PATH.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env[PIPELINE_RUN_ENV] = run_id
    return env


def pipeline_status(repo: Path) -> dict:
    """``dvc status --json``: {stage: [changes]} for every stage whose deps, params or outs changed; {} if none."""
    result = subprocess.run([_tool("dvc"), "status", "--json"], cwd=repo, env=_env("status"), capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise RetrainFailed(f"dvc status failed in {repo}: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout or "{}")


def _registry_versions(repo: Path, models: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for model in models:
        path = repo / "models" / model / "registry.json"
        out[model] = json.loads(path.read_text())["version"] if path.is_file() else None
    return out


def _models(repo: Path) -> list[str]:
    from cvpipe.config import load_params

    return list(load_params(repo / "params.yaml")["pipeline"]["models"])


def retrain(repo: Path, *, wait_s: float = 0.0) -> RetrainResult:
    """Re-run the pipeline when something changed, then report what promotion decided (see module docstring)."""
    repo = Path(repo).resolve()
    with exclusive_lock(repo / LOCK_FILE, wait_s):
        status = pipeline_status(repo)
        if not status:
            return RetrainResult("nothing to do", "nothing to do: data, params and code unchanged since the last run")
        models = _models(repo)
        before = _registry_versions(repo, models)
        run_id = f"retrain-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        log.info("changed: %s; running dvc repro (pipeline_run %s)", ", ".join(sorted(status)), run_id)
        result = subprocess.run([_tool("dvc"), "repro"], cwd=repo, env=_env(run_id), stdout=sys.stderr,
                                stderr=sys.stderr)
        if result.returncode != 0:
            raise RetrainFailed(f"dvc repro failed (exit {result.returncode}); its log is above")
        after = _registry_versions(repo, models)
    return _summarise(repo, [m for m in models if after[m] is not None and after[m] != before[m]], run_id)


def _summarise(repo: Path, retrained: list[str], run_id: str) -> RetrainResult:
    if not retrained:
        return RetrainResult("retrained", f"retrained: pipeline updated, no new model version "
                                          f"(pipeline_run {run_id})")
    promoted, kept = [], []
    for model in retrained:
        report = json.loads((repo / "reports" / model / "promotion.json").read_text())
        challenger = f"{report['model']} v{report['challenger']['version']}"
        if report["outcome"] == "promoted":
            promoted.append(f"{challenger} is champion ({report['reason']})")
        else:
            kept.append(f"{report['model']} v{report['champion_version']} stays champion over v"
                        f"{report['challenger']['version']} ({report['reason']})")
    outcome = "retrained, promoted" if promoted else "retrained, kept champion"
    return RetrainResult(outcome, f"{outcome}: {'; '.join(promoted + kept)} (pipeline_run {run_id})")
