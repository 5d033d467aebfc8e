"""Run the pipeline as a DVC experiment with a profile's params overrides:

    python profiles/run.py profiles/gpu.yaml [extra dvc exp run args]

Each ``key: value`` of the profile becomes ``-S key=value`` (value as compact JSON, which YAML reads back).
"""

import json
import subprocess
import sys

import yaml


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1]) as fh:
        overrides = yaml.safe_load(fh) or {}
    command = ["dvc", "exp", "run", *sys.argv[2:]]
    for key, value in overrides.items():
        command += ["-S", f"{key}={json.dumps(value, separators=(',', ':'))}"]
    print(" ".join(command), flush=True)
    return subprocess.run(command).returncode


if __name__ == "__main__":
    sys.exit(main())
