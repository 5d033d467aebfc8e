"""Which source files a model's stages run, and a hash of them: the code part of a model's identity.

The roots are the stage engine, the task's implementation and the architecture's model and loss modules
(:func:`cvpipe.registry.code_modules`); from them every ``import cvpipe...`` / ``from cvpipe... import``
statement, at module level or inside functions, is followed through the package's own sources (read with
:mod:`ast`, nothing is imported). Registry entries are strings, so one model's closure never pulls in the other
architectures: editing ``models/ssd.py`` changes the SSD's fingerprint only.

Used twice: the code stage writes the file list and hash to ``models/<name>/code.json``, which the model's DVC
stages depend on (so a code change re-runs exactly the models it touches), and the training checkpoint's
fingerprint includes the hash (so a re-run after a code change never resumes the old weights).
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

from cvpipe.registry import code_modules

PACKAGE = "cvpipe"
PACKAGE_DIR = Path(__file__).resolve().parent
ENGINE_MODULES = ("cvpipe.engine",)


def module_file(module: str, package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The source file of a module of this package (a package's ``__init__.py``) under ``package_dir``, or None
    outside it."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = package_dir.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> set[str]:
    """Modules of this package that ``path`` imports, anywhere in the file (and their parent packages)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from cvpipe.data import arrays` imports the submodule arrays when there is one
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        for name in names:
            parts = name.split(".")
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {m for m in found if m.split(".")[0] == PACKAGE}


def source_closure(roots: list[str], package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """Every package source file under ``package_dir`` reachable from the modules ``roots``, sorted."""
    seen: dict[str, Path] = {}
    pending = list(roots)
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        path = module_file(module, package_dir)
        if path is None:
            continue
        seen[module] = path
        pending.extend(_imported_modules(path) - set(seen))
    return sorted(set(seen.values()))


def model_sources(task: str, arch: str, package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The source files a model of ``task``/``arch`` is trained, evaluated, tuned and exported with."""
    return source_closure([*ENGINE_MODULES, *code_modules(task, arch)], package_dir)


def code_hash(task: str, arch: str, package_dir: Path = PACKAGE_DIR) -> str:
    """SHA-256 (16 hex digits) over the relative paths and contents of :func:`model_sources`.

    ``package_dir``: the sources to hash; the installed package by default (what a training run executes), the
    DVC workspace's ``src/cvpipe`` in the code stage (what DVC tracks there, e.g. in an experiment's copy)."""
    digest = hashlib.sha256()
    for path in model_sources(task, arch, package_dir):
        digest.update(str(path.relative_to(package_dir)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
