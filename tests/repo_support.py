"""Helpers of the tests that run the real pipeline: a committed git copy of this checkout with edited params,
command runners, free ports, Debian packages and HTTP waits."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

import yaml

REPO = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.email=ci@cvpipe", "-c", "user.name=ci"]


def run(args: list[str], cwd: Path, env: dict[str, str], check: bool = True,
        timeout: float | None = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def clean_env(**extra: str) -> dict[str, str]:
    """The test interpreter's environment without MLflow/DVC overrides, its venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "CVPIPE_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    if "PYTEST_XDIST_WORKER" in os.environ:  # parallel test workers: the stages they start take one core each
        env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


def tiny_params(params: dict, models: list[str]) -> dict:
    """40 images of 64 px, one epoch of one pass (``min_steps`` off), ``models`` only, few latency runs and
    bootstrap resamples."""
    params["pipeline"]["models"] = list(models)
    params["data"]["shapes"].update(num_images=40, image_size=64, max_objects=4, min_object_size=12,
                                    max_object_size=28)
    params["prepare"].update(image_size=64, crop_size=32)
    params["models"]["classifier"]["train"]["model"]["width"] = 8
    for name in models:
        params["models"][name]["train"].update(epochs=1, min_steps=None)  # one pass: no step floor on tiny data
    params["export"].update(latency_runs=2, parity_images=16)
    params["promote"].update(resamples=50, latency_runs=3)
    return params


def copy_repo(dest: Path, env: dict[str, str], edit: Callable[[dict], object]) -> Path:
    """A committed git repository at ``dest``: the files git tracks here, as they are in the working tree, with
    ``edit`` applied to the loaded params.yaml."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True)
    for name in filter(None, tracked.stdout.split("\0")):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    edit(params)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], dest, env)
    run([*GIT, "add", "-A"], dest, env)
    run([*GIT, "commit", "-qm", "test copy"], dest, env)
    return dest


def tiny_repo(dest: Path, models: list[str], env: dict[str, str]) -> Path:
    """:func:`copy_repo` with :func:`tiny_params` for ``models``."""
    return copy_repo(dest, env, lambda params: tiny_params(params, models))


def set_param(repo: Path, dotted: str, value: object) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    node = params
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def apt_install(package: str, binary_check: "callable") -> str | None:
    """Install a Debian package when ``binary_check()`` finds nothing; returns why it cannot, or None on success."""
    if binary_check():
        return None
    if not shutil.which("apt-get"):
        return f"{package} is not installed and there is no apt-get to install it"
    if os.geteuid() != 0:
        return f"{package} is not installed and apt-get needs root (uid {os.geteuid()})"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait = ["-o", "DPkg::Lock::Timeout=600"]  # another test worker may hold apt's lock: wait for it
    for args in (["apt-get", *wait, "install", "-y", "-qq", "--no-install-recommends", package],
                 ["apt-get", *wait, "update", "-qq"],
                 ["apt-get", *wait, "install", "-y", "-qq", "--no-install-recommends", package]):
        try:
            result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(args)}` timed out"
        if "install" in args and result.returncode == 0 and binary_check():
            return None
    return f"apt-get install {package} failed: {result.stderr.strip()[-500:]}"


def wait_for_http(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200; fail with the server's exit status if it dies first."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"server exited with status {process.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def stop(process: subprocess.Popen) -> None:
    """Terminate a server started by a test (its own process group), then kill it if it lingers."""
    import signal

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
