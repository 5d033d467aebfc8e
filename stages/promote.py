"""promote@MODEL: challenger vs champion on the current test split; moves the `champion` alias when it wins."""

import json
import logging

from cvpipe.stage import model_stage, run_stage

log = logging.getLogger("cvpipe.promote")


def main() -> None:
    stage = model_stage(__doc__)
    from cvpipe import tracking
    from cvpipe.config import PromoteConfig, load_params
    from cvpipe.lifecycle.promote import promote

    config = PromoteConfig.from_params(load_params(stage.params_path))
    registry = json.loads((stage.model_dir / "registry.json").read_text())
    tracking.configure()
    promote(name=registry["name"], task=stage.task, challenger_version=str(registry["version"]),
            prepared=stage.prepared, config=config, report_path=stage.report_dir / "promotion.json")


if __name__ == "__main__":
    run_stage(main)
