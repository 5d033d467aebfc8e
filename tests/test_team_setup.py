"""The team set-up on localhost: PostgreSQL (Debian package) as the MLflow server's backend store with a separate
artifact root, the tiny pipeline logging to it through MLFLOW_TRACKING_URI, and a DVC remote moving data and
models to a second clone. Skipped, saying why, only where PostgreSQL cannot be installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from repo_support import GIT, apt_install, clean_env, free_port, run, stop, tiny_repo, wait_for_http

# one xdist worker runs the whole file: its module fixture (a pipeline run) is built once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_team_setup")]


def _pg_bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="module")
def postgres() -> str:
    """A throw-away PostgreSQL cluster on a free localhost port with an empty ``mlflow`` database; its URI."""
    reason = apt_install("postgresql", lambda: _pg_bindir() is not None)
    if reason:
        pytest.skip(f"PostgreSQL unavailable: {reason}")
    try:
        import psycopg2
    except ImportError:
        pytest.skip("psycopg2 missing: install the test extra (pip install -e '.[test]')")
    bindir = _pg_bindir()
    # Outside pytest's 0700 temp folder: the server runs as the 'postgres' user when we are root.
    base = Path(tempfile.mkdtemp(prefix="cvpipe-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        base.chmod(0o755)
        shutil.chown(base, "postgres")
    data, port = base / "data", free_port()
    env = clean_env()
    try:
        run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "mlflow", "--no-sync"], base, env)
        run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w", "-t", "60",
             "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", "start"], base, env)
        connection = psycopg2.connect(host="127.0.0.1", port=port, user="mlflow", dbname="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE mlflow")
        connection.close()
        yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_pipeline_logs_to_a_postgres_backed_server_and_a_dvc_remote_moves_data_and_models(postgres, tmp_path):
    import mlflow
    import numpy as np
    import psycopg2
    from mlflow.tracking import MlflowClient

    artifacts, port = tmp_path / "artifact-root", free_port()
    log = (tmp_path / "mlflow-server.log").open("w")
    # SQLAlchemy's own URI names the driver (its default PostgreSQL driver is psycopg 3; ours is psycopg2).
    store = postgres.replace("postgresql://", "postgresql+psycopg2://")
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", store,
                               "--artifacts-destination", artifacts.as_uri(), "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1"], env=clean_env(), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(base + "/health", 180, server)
        except AssertionError as exc:
            log.flush()
            raise AssertionError(f"{exc}\n{(tmp_path / 'mlflow-server.log').read_text()[-3000:]}") from None
        env = clean_env(MLFLOW_TRACKING_URI=base)
        repo = tiny_repo(tmp_path / "repo", ["classifier"], env)
        run(["dvc", "repro"], repo, env)
        assert not (repo / "mlflow.db").exists() and not (repo / "mlartifacts").exists()  # all went to the server

        client = MlflowClient(tracking_uri=base, registry_uri=base)
        experiment = client.get_experiment_by_name("cvpipe")
        runs = client.search_runs([experiment.experiment_id], "attributes.run_name = 'classifier'")
        assert len(runs) == 1 and runs[0].data.metrics["test_top1"] >= 0.0
        champion = client.get_model_version_by_alias("cvpipe-classifier", "champion")
        assert champion.run_id == runs[0].info.run_id
        mlflow.set_tracking_uri(base)
        try:
            model = mlflow.pyfunc.load_model("models:/cvpipe-classifier@champion")  # through the server's proxy
        finally:
            mlflow.set_tracking_uri(None)
        assert len(model.predict(np.load(repo / "data/prepared/test/crops.npy")[:4])) == 4
        # Metadata in PostgreSQL, files under the separate artifact root.
        connection = psycopg2.connect(postgres)
        with connection, connection.cursor() as cursor:
            cursor.execute("SELECT run_uuid FROM runs WHERE name = 'classifier'")
            assert [row[0] for row in cursor.fetchall()] == [runs[0].info.run_id]
            cursor.execute("SELECT name FROM registered_models")
            assert [row[0] for row in cursor.fetchall()] == ["cvpipe-classifier"]
        connection.close()
        assert list(artifacts.rglob("evaluate/confusion.png")) and list(artifacts.rglob("model.onnx"))
    finally:
        stop(server)
        log.close()

    # DVC remote (a local folder here; S3 in the README): push from this clone, pull into a fresh one.
    remote = tmp_path / "dvc-remote"
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], repo, env)
    run([*GIT, "add", "-A"], repo, env)
    run([*GIT, "commit", "-qm", "pipeline outputs"], repo, env)
    run(["dvc", "push"], repo, env)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    assert not (clone / "models/classifier/model.onnx").exists()
    run(["dvc", "pull"], clone, env)
    for path in ("models/classifier/model.onnx", "models/classifier/model.pt", "data/prepared/meta.json",
                 "data/prepared/test/crops.npy", "data/raw/shapes/annotations.json"):
        assert (clone / path).read_bytes() == (repo / path).read_bytes(), path
    assert run(["dvc", "status", "--json"], clone, env).stdout.strip() == "{}"  # every stage up to date: nothing to re-run
