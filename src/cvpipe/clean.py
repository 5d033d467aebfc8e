"""``make clean`` / ``cvpipe clean``: delete what the pipeline generated, and nothing else.

What the pipeline generated is what ``dvc.yaml`` declares as stage outputs (outs, metrics, plots), resolved
with the current params (so ``data.path`` of a user's own dataset is never among them), plus ``dvc.lock``.
Folders left empty by that go too; a folder that still holds anything else (a user's notes in ``models/``,
their data beside the synthetic set in ``data/raw/``) stays with its contents. The MLflow store is kept: it is
the experiment history, not a build product.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def pipeline_outputs(repo: str | Path) -> list[Path]:
    """Every output path ``dvc.yaml`` declares, absolute, sorted."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    root = Path(repo).resolve()
    try:
        with Repo(str(root)) as dvc_repo:
            paths = {Path(out.fs_path).resolve() for out in dvc_repo.index.outs}
    except DvcException as exc:
        from cvpipe.cli import UserError

        raise UserError(f"cannot list the pipeline's outputs from {root}/dvc.yaml and dvc.lock ({exc}); "
                        "nothing deleted") from None
    return sorted(p for p in paths if p.is_relative_to(root) and p != root)


def clean(repo: str | Path, *, dry_run: bool = False) -> list[Path]:
    """Delete the pipeline's outputs and ``dvc.lock`` under ``repo``; returns what was (or would be) deleted."""
    root = Path(repo).resolve()
    targets = [p for p in [*pipeline_outputs(root), root / "dvc.lock"] if p.exists() or p.is_symlink()]
    if dry_run:
        return targets
    for path in targets:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    for path in targets:  # folders the outputs leave empty, up to (not including) the repo root
        parent = path.parent
        while parent != root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    return targets
