"""Champion/challenger promotion in the MLflow model registry.

Rule (``promote`` section of params.yaml): the challenger (the version this pipeline exported) and the current
``champion`` are both scored, as served, on the current test split with the task's primary metric; a paired
bootstrap over test images gives the interval of ``challenger - champion``. The challenger wins only when the
interval's lower bound is above ``margin`` and, with ``latency_budget_ms`` set, its ONNX p50 latency fits the
budget. Only then does the ``champion`` alias move. Special cases:

- no champion yet: the challenger becomes champion (``first model``);
- the challenger already is the champion: nothing to do (``unchanged``);
- the champion predicts other classes than the current data has: it cannot be scored on this split, so the
  challenger takes over (``champion incompatible``);
- a task without a primary metric in ``promote.metric`` (one the bootstrap cannot score yet): the champion stays
  (``kept``); move the alias by hand after looking at the runs.

A champion evaluated on an older split (its ``data_hash`` tag differs from the prepared data's) is re-scored on
the current one, which the comparison does anyway; the report says so and the version gets
``eval_data_hash`` / ``eval_<metric>`` tags. The decision goes to ``promotion.json`` and to MLflow (the
challenger's run: ``promote_*`` metrics, a ``promotion`` tag, the JSON as an artifact; version tags).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from cvpipe.config import PromoteConfig
from cvpipe.lifecycle.bootstrap import paired_bootstrap
from cvpipe.lifecycle.evaluation import expected_class_names, latency_ms, scorer

log = logging.getLogger(__name__)
CHAMPION, CHALLENGER = "champion", "challenger"


def _alias_version(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _describe(version: Any, metric: str | None) -> dict[str, Any]:
    described = {"version": str(version.version), "run_id": version.run_id, "data_hash": version.tags.get("data_hash"),
                 "git_commit": version.tags.get("git_commit")}
    if metric is not None:
        described[f"stored_test_{metric}"] = version.tags.get(f"test_{metric}")
    return described


def promote(*, name: str, task: str, challenger_version: str, prepared: Path, config: PromoteConfig,
            report_path: Path) -> dict[str, Any]:
    """Decide and apply the promotion of ``name`` version ``challenger_version``; returns the report it writes.

    Compare-and-set: the whole decision runs under :func:`promotion_lock` (one promotion of ``name`` at a time
    per store on this machine: ``dvc queue start -j 2``), and the alias moves only if the champion is still the
    version the challenger was compared with; if another host moved it meanwhile, the comparison is redone
    against the new champion. So the champion alias never lands on a model that was not compared with it.
    """
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    started = time.perf_counter()
    challenger_model = mlflow.pyfunc.load_model(f"models:/{name}/{challenger_version}")
    with promotion_lock(name):
        for _ in range(MAX_COMPARISONS):
            champion = _alias_version(client, name, CHAMPION)
            report, outcome, reason = _decide(client, name, task, challenger_version, challenger_model, champion,
                                              prepared, config)
            if outcome != "promoted":
                break
            current = _alias_version(client, name, CHAMPION)
            if _version(current) == _version(champion):  # compare-and-set
                client.set_registered_model_alias(name, CHAMPION, str(challenger_version))
                client.set_model_version_tag(name, str(challenger_version), "promoted_at",
                                             time.strftime("%Y-%m-%dT%H:%M:%S"))
                break
            log.warning("%s: the champion moved from v%s to v%s during the comparison; comparing again", name,
                        _version(champion), _version(current))
        else:
            outcome, reason = "kept", (f"the champion kept moving during {MAX_COMPARISONS} comparisons: "
                                       "nothing changed; run promote again")
    report.update(outcome=outcome, reason=reason,
                  champion_version=str(challenger_version) if outcome == "promoted" else _version(champion),
                  seconds=round(time.perf_counter() - started, 3))
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    report_path.with_name("promotion_metrics.json").write_text(json.dumps(promotion_metrics(report), indent=2) + "\n")
    _log(client, name, client.get_model_version(name, challenger_version), report, report_path)
    log.info("%s v%s: %s (%s)", name, challenger_version, outcome, reason)
    return report


MAX_COMPARISONS = 3


def _version(version: Any | None) -> str | None:
    return None if version is None else str(version.version)


@contextlib.contextmanager
def promotion_lock(name: str) -> Iterator[None]:
    """A file lock per (tracking store, registered model) in the temp folder, held while one promotion reads
    the champion, compares and moves the alias."""
    from filelock import FileLock

    from cvpipe.tracking import tracking_uri

    key = hashlib.sha256(f"{tracking_uri()}|{name}".encode()).hexdigest()[:16]
    with FileLock(str(Path(tempfile.gettempdir()) / f"cvpipe-promote-{key}.lock"), timeout=3600):
        yield


def _decide(client: Any, name: str, task: str, challenger_version: str, challenger_model: Any,
            champion: Any | None, prepared: Path, config: PromoteConfig) -> tuple[dict[str, Any], str, str]:
    """The report so far, the outcome and its reason for the challenger against ``champion`` (None: none yet)."""
    import mlflow.pyfunc

    from cvpipe.data.prepare import load_meta

    metric = config.metric.get(task)
    data_hash = load_meta(prepared)["data_hash"]
    challenger = client.get_model_version(name, challenger_version)
    report: dict[str, Any] = {
        "model": name, "task": task, "metric": metric, "data_hash": data_hash,
        "rule": {"margin": config.margin, "confidence": config.confidence, "resamples": config.resamples,
                 "latency_budget_ms": config.latency_budget_ms,
                 "wins_when": f"lower bound of the {config.confidence:.0%} CI of {metric}(challenger) - "
                              f"{metric}(champion) > {config.margin}"
                              + (f" and challenger p50 ≤ {config.latency_budget_ms} ms"
                                 if config.latency_budget_ms is not None else "")},
        "challenger": _describe(challenger, metric),
        "champion": None if champion is None else _describe(champion, metric),
    }
    if metric is not None:
        report["challenger"]["latency_ms_p50"] = latency_ms(challenger_model, task, prepared, config.latency_runs)
    if champion is None:
        outcome, reason = "promoted", "first model: no champion yet"
        if metric is not None:
            score = scorer(challenger_model, task, metric, prepared)
            report["challenger"][metric] = score(np.arange(score.num_images))
    elif str(champion.version) == str(challenger_version):
        outcome, reason = "unchanged", "the challenger already is the champion"
    elif metric is None:
        outcome, reason = "kept", f"no primary metric for task {task!r} in promote.metric: champion stays"
    else:
        champion_model = mlflow.pyfunc.load_model(f"models:/{name}/{champion.version}")
        report["champion"]["reevaluated"] = champion.tags.get("data_hash") != data_hash
        wanted = expected_class_names(task, prepared, challenger_model.unwrap_python_model())
        if champion_model.unwrap_python_model().class_names != wanted:
            outcome, reason = "promoted", (f"champion incompatible: it predicts "
                                           f"{champion_model.unwrap_python_model().class_names}, the data has {wanted}")
        else:
            outcome, reason = _compare(report, challenger_model, champion_model, task, metric, prepared, config)
            client.set_model_version_tag(name, str(champion.version), "eval_data_hash", data_hash)
            client.set_model_version_tag(name, str(champion.version), f"eval_{metric}",
                                         str(report["champion"][metric]))
    return report, outcome, reason


def _compare(report: dict[str, Any], challenger_model: Any, champion_model: Any, task: str, metric: str,
             prepared: Path, config: PromoteConfig) -> tuple[str, str]:
    """Paired bootstrap + latency budget; fills the report's scores, returns (outcome, reason)."""
    started = time.perf_counter()
    result = paired_bootstrap(scorer(challenger_model, task, metric, prepared),
                              scorer(champion_model, task, metric, prepared), resamples=config.resamples,
                              confidence=config.confidence, seed=config.seed)
    report["challenger"][metric] = result.challenger
    report["champion"][metric] = result.champion
    report["champion"]["latency_ms_p50"] = latency_ms(champion_model, task, prepared, config.latency_runs)
    report["bootstrap"] = {**asdict(result), "seconds": round(time.perf_counter() - started, 3)}
    ci = f"{metric} {result.difference:+.4f}, {config.confidence:.0%} CI [{result.ci_low:+.4f}, {result.ci_high:+.4f}]"
    if not result.ci_low > config.margin:
        return "kept", f"{ci}: lower bound does not clear margin {config.margin}"
    budget, p50 = config.latency_budget_ms, report["challenger"]["latency_ms_p50"]
    if budget is not None and p50 > budget:
        return "kept", f"{ci} clears margin {config.margin}, but p50 latency {p50:.2f} ms > budget {budget} ms"
    return "promoted", f"{ci} clears margin {config.margin}"


def _log(client: Any, name: str, challenger: Any, report: dict[str, Any], report_path: Path) -> None:
    """The decision on the challenger's run and version (tags, metrics, the report as an artifact)."""
    version = str(challenger.version)
    client.set_model_version_tag(name, version, "promotion", report["outcome"])
    client.set_model_version_tag(name, version, "promotion_reason", report["reason"][:5000])
    run_id = challenger.run_id
    if not run_id:
        return
    client.set_tag(run_id, "promotion", report["outcome"])
    for key, value in promotion_metrics(report).items():
        client.log_metric(run_id, key, value)
    client.log_artifact(run_id, str(report_path), artifact_path="promote")


def promotion_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The decision's numbers (promoted 0/1, both scores, the bootstrap interval): MLflow metrics and the DVC
    metrics file ``promotion_metrics.json``."""
    metric = report["metric"]
    values = {"promote_promoted": float(report["outcome"] == "promoted")}
    if metric is not None:
        values.update({f"promote_challenger_{metric}": report["challenger"].get(metric),
                       f"promote_champion_{metric}": (report["champion"] or {}).get(metric)})
    boot = report.get("bootstrap") or {}
    values.update({"promote_difference": boot.get("difference"), "promote_ci_low": boot.get("ci_low"),
                   "promote_ci_high": boot.get("ci_high")})
    return {key: float(value) for key, value in values.items() if value is not None}
