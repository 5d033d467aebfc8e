"""code@MODEL: the package sources one model's stages run and their hash (models/<name>/code.json).

The model's train/evaluate/tune/export/promote stages depend on this file instead of whole source folders, so
an edit re-runs exactly the models whose code it touches (src/cvpipe/code_fingerprint.py says how the file
list is found).
"""

import argparse
import json
import logging
from pathlib import Path

from cvpipe.code_fingerprint import PACKAGE_DIR, code_hash, model_sources
from cvpipe.config import load_config
from cvpipe.stage import run_stage

log = logging.getLogger("cvpipe.code")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", required=True, help="name under models: in params.yaml")
    parser.add_argument("--out", type=Path, required=True, help="models/<name>/code.json")
    args = parser.parse_args()
    config = load_config(args.params).model(args.model)
    task, arch = config.task, config.train.arch
    # The sources DVC tracks in this workspace (src/cvpipe beside dvc.yaml), which may be a copy (dvc exp run
    # --temp, a test's repository) of the installed package; the installed package when there is none.
    package_dir = Path("src/cvpipe").resolve() if Path("src/cvpipe/__init__.py").is_file() else PACKAGE_DIR
    files = [str(p.relative_to(package_dir.parent)) for p in model_sources(task, arch, package_dir)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"task": task, "arch": arch, "hash": code_hash(task, arch, package_dir),
                                    "files": files}, indent=2) + "\n")
    log.info("%s (%s/%s): %d source files", args.model, task, arch, len(files))


if __name__ == "__main__":
    run_stage(main)
