"""`cvpipe predict` on a folder of mixed-size JPEG/PNG files gives, for one model of each task, what the pyfunc
gives for each image; unreadable files are reported and skipped; the REST pyfunc takes base64 images."""

import base64
import csv
import io
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from cvpipe.cli import main
from cvpipe.data.arrays import load_array
from cvpipe.serving import OnnxVisionModel
from tests.conftest import run_model_stages
from tests.test_task_contract import _config

ONE_PER_TASK = ["small_resnet", "yolo", "unet", "yolact"]


# one xdist worker runs the whole file: its module fixtures (trained models) are built once
pytestmark = pytest.mark.xdist_group("test_predict")


@pytest.fixture(scope="module")
def exported(tiny_prepared, tmp_path_factory):
    """arch → its models/<m> folder (model.onnx with the tuned thresholds), trained tiny."""
    folders = {}
    for arch in ONE_PER_TASK:
        tmp = tmp_path_factory.mktemp(arch)
        run_model_stages(_config(arch), tiny_prepared, tmp)
        folders[arch] = tmp / "m"
    return folders


@pytest.fixture(scope="module")
def image_folder(tiny_prepared, tmp_path_factory):
    """Test scenes and crops as JPEG and PNG files of several sizes in nested folders, plus a broken JPEG, an empty
    PNG and a text file (not an image: ignored)."""
    root = tmp_path_factory.mktemp("images")
    scenes = np.asarray(load_array(tiny_prepared, "test", "images"))[:3]
    crops = np.asarray(load_array(tiny_prepared, "test", "crops"))[:3]
    for kind, arrays in (("scenes", scenes), ("crops", crops)):
        for i, (array, size, fmt) in enumerate(zip(arrays, (None, 90, 41), ("png", "jpg", "png"))):
            image = Image.fromarray(array)
            if size:
                image = image.resize((size, int(size * 0.75)))  # another size and aspect ratio
            folder = root / kind / ("nested" if i == 2 else "")
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"img{i}.{fmt}", quality=95)
        (root / kind / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        (root / kind / "empty.png").write_bytes(b"")
        (root / kind / "notes.txt").write_text("not an image")
    return root


def _images(folder):
    """Relative name → uint8 RGB array of the readable images under ``folder``."""
    return {p.relative_to(folder).as_posix(): np.asarray(Image.open(p).convert("RGB"))
            for p in sorted(folder.rglob("img*"))}


def _task_of(model_dir):
    from cvpipe.onnx_inference import onnx_metadata, onnx_session

    return onnx_metadata(onnx_session(model_dir / "model.onnx"))["task"]


@pytest.mark.parametrize("arch", ONE_PER_TASK)
def test_predict_on_a_folder_matches_the_pyfunc_image_by_image(arch, exported, image_folder, tmp_path):
    model_dir = exported[arch]
    task = _task_of(model_dir)
    folder = image_folder / ("crops" if task == "classification" else "scenes")
    out = tmp_path / "out"
    # a tiny model's tuned threshold may keep nothing: a low one makes sure there are boxes and masks to compare
    loose = {"score_threshold": 0.0001} if task in ("detection", "instance_segmentation") else {}
    assert main(["predict", str(folder), "--model", str(model_dir), "--out", str(out), "--quiet",
                 *(["--score-threshold", "0.0001"] if loose else [])]) == 0

    report = json.loads((out / "predict.json").read_text())
    assert (report["images"], report["skipped"], report["task"]) == (3, 2, task)
    skipped = {row["file"].split("/")[-1]: row["reason"] for row in csv.DictReader((out / "skipped.csv").open())}
    assert set(skipped) == {"broken.jpg", "empty.png"} and all(skipped.values())
    pyfunc = OnnxVisionModel()
    pyfunc.load_onnx(model_dir / "model.onnx", task=task)
    images = _images(folder)
    assert len(list((out / "overlays").rglob("*.jpg"))) == 3

    if task == "classification":
        rows = {r["file"]: r for r in csv.DictReader((out / "predictions.csv").open())}
        assert set(rows) == set(images)
        for name, image in images.items():
            expected = pyfunc.predict(None, image[None]).iloc[0]
            assert int(rows[name]["label"]) == expected["label"] and rows[name]["class_name"] == expected["class_name"]
            assert float(rows[name]["score"]) == pytest.approx(expected["score"], rel=1e-6)
    elif task == "segmentation":
        for name, image in images.items():
            written = np.asarray(Image.open(out / "masks" / f"{name.rsplit('.', 1)[0]}.png"))
            expected = pyfunc.predict(None, image[None])[0]
            assert written.shape == image.shape[:2] and np.array_equal(written, expected)
    else:
        coco = json.loads((out / "images.json").read_text())
        results = json.loads((out / "results.json").read_text())
        ids = {im["file_name"]: im["id"] for im in coco["images"]}
        assert set(ids) == set(images)
        assert [c["name"] for c in coco["categories"]] == pyfunc.class_names
        assert results, "nothing detected: the comparison would be empty"
        for name, image in images.items():
            expected = pyfunc.predict(None, image[None], params=loose).iloc[0]
            mine = [r for r in results if r["image_id"] == ids[name]]
            assert len(mine) == len(expected["boxes"])
            for r, box, score, label in zip(mine, expected["boxes"], expected["scores"], expected["labels"]):
                x1, y1, x2, y2 = box
                np.testing.assert_allclose(r["bbox"], [x1, y1, x2 - x1, y2 - y1], atol=1e-4)
                assert r["score"] == pytest.approx(score) and r["category_id"] == label + 1
            if task == "instance_segmentation":
                for r, rle in zip(mine, expected["masks"]):
                    assert r["segmentation"]["size"] == list(image.shape[:2]) and r["segmentation"] == rle
                    mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})


def test_thresholds_are_overridable_and_checked_against_the_task(exported, image_folder, tmp_path, capsys):
    model_dir = exported["yolo"]
    out = tmp_path / "loose"
    assert main(["predict", str(image_folder / "scenes"), "--model", str(model_dir), "--out", str(out), "--quiet",
                 "--score-threshold", "0.0001", "--max-detections", "7", "--no-overlays"]) == 0
    report = json.loads((out / "predict.json").read_text())
    assert report["thresholds"]["score_threshold"] == 0.0001 and report["thresholds"]["max_detections"] == 7
    results = json.loads((out / "results.json").read_text())
    assert max(pd.Series([r["image_id"] for r in results]).value_counts()) == 7
    assert not (out / "overlays").exists()
    assert main(["predict", str(image_folder / "scenes"), "--model", str(model_dir), "--out", str(out),
                 "--mask-threshold", "0.5"]) == 2
    assert "no mask_threshold" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nothing-here"), "--model", str(model_dir), "--out", str(out)]) == 2
    assert main(["predict", str(image_folder), "--model", str(tmp_path / "missing.onnx"), "--out", str(out)]) == 2


def test_predict_command_runs_from_the_shell_with_a_glob(exported, image_folder, tmp_path):
    out = tmp_path / "shell"
    done = subprocess.run([sys.executable, "-c", "from cvpipe.cli import main; raise SystemExit(main())", "predict",
                           str(image_folder / "scenes" / "**" / "*.png"), "--model",
                           str(exported["unet"] / "model.onnx"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "2 images predicted" in done.stdout  # img0.png and nested/img2.png; empty.png skipped
    assert "1 skipped" in done.stdout and "empty.png" in (out / "skipped.csv").read_text()


TORCH_FREE_RUN = """
import json, sys
from cvpipe.cli import main
for arguments in json.loads(sys.argv[1]):
    assert main(["predict", *arguments, "--quiet", "--no-overlays"]) == 0, arguments
print(json.dumps({"torch": "torch" in sys.modules, "torchvision": "torchvision" in sys.modules,
                  "mlflow": "mlflow" in sys.modules}))
"""


def test_predict_from_an_onnx_file_never_imports_torch_or_mlflow(exported, image_folder, tmp_path):
    """One model of each task, from its model folder and as a bare .onnx file: the whole predict path (decode,
    letterbox, onnxruntime, NMS, mask assembly, writers) runs without torch, so it starts in about a second."""
    runs = []
    for arch in ONE_PER_TASK:
        task = _task_of(exported[arch])
        folder = image_folder / ("crops" if task == "classification" else "scenes")
        loose = ["--score-threshold", "0.0001"] if task in ("detection", "instance_segmentation") else []
        for model in (exported[arch], exported[arch] / "model.onnx"):
            runs.append([str(folder), "--model", str(model), "--out", str(tmp_path / str(len(runs))), *loose])
    done = subprocess.run([sys.executable, "-c", TORCH_FREE_RUN, json.dumps(runs)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"torch": False, "torchvision": False, "mlflow": False}
    assert all(json.loads((tmp_path / str(i) / "predict.json").read_text())["images"] == 3 for i in range(len(runs)))


def _b64(image: np.ndarray, fmt: str) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("arch", ["yolo", "unet"])
def test_the_pyfunc_takes_base64_images_of_mixed_sizes(arch, exported, image_folder):
    model_dir = exported[arch]
    pyfunc = OnnxVisionModel()
    pyfunc.load_onnx(model_dir / "model.onnx", task=_task_of(model_dir))
    images = list(_images(image_folder / "scenes").values())
    request = pd.DataFrame({"image": [_b64(images[0], "PNG"), _b64(images[1], "JPEG"), _b64(images[2], "PNG")]})
    answer = pyfunc.predict(None, request)
    assert len(answer) == 3
    decoded_jpeg = np.asarray(Image.open(io.BytesIO(base64.b64decode(request["image"][1]))).convert("RGB"))
    for row, image in enumerate([images[0], decoded_jpeg, images[2]]):
        expected = pyfunc.predict(None, image[None])
        if arch == "unet":
            png = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["label_map_png"][row]))))
            assert (answer["height"][row], answer["width"][row]) == image.shape[:2]
            assert np.array_equal(png, expected[0])
        else:
            assert answer["boxes"][row] == expected["boxes"][0] and answer["scores"][row] == expected["scores"][0]
    with pytest.raises(ValueError, match="row 1 of column 'image'"):
        pyfunc.predict(None, pd.DataFrame({"image": [_b64(images[0], "PNG"), "bm90IGFuIGltYWdl"]}))
    with pytest.raises(ValueError, match="column 'image'"):
        pyfunc.predict(None, pd.DataFrame({"picture": ["x"]}))


def test_mlflow_models_serve_answers_a_posted_jpeg(exported, image_folder, tmp_path, monkeypatch):
    """The registered pyfunc behind `mlflow models serve`: a JPEG and a PNG of other sizes in one JSON request,
    base64 in a column `image`, with a threshold override; the answer is the pyfunc's, image by image."""
    import urllib.request
    from pathlib import Path

    import mlflow

    from cvpipe import tracking
    from tests.repo_support import clean_env, free_port, stop, wait_for_http

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.configure()
    model_dir = exported["yolo"]
    images = list(_images(image_folder / "scenes").values())
    with mlflow.start_run(experiment_id=tracking.get_or_create_experiment("serve")):
        tracking.register_onnx_model(model_dir / "model.onnx", registered_name="cvpipe-yolo", task="detection",
                                     input_example=images[0][None], tags={})
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "models", "serve",
                               "-m", "models:/cvpipe-yolo@challenger", "--env-manager", "local", "--host", "127.0.0.1",
                               "--port", str(port)], env=clean_env(MLFLOW_TRACKING_URI=uri), cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", timeout=120, process=server)
        body = {"dataframe_split": {"columns": ["image"], "data": [[_b64(images[1], "JPEG")], [_b64(images[2], "PNG")]]},
                "params": {"score_threshold": 0.0001}}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())["predictions"]
    finally:
        stop(server)
    # the same registered version through `cvpipe predict`
    out = tmp_path / "registry"
    assert main(["predict", str(image_folder / "scenes"), "--model", "models:/cvpipe-yolo@challenger", "--out",
                 str(out), "--quiet", "--no-overlays", "--score-threshold", "0.0001"]) == 0
    from_onnx = tmp_path / "onnx"
    assert main(["predict", str(image_folder / "scenes"), "--model", str(model_dir), "--out", str(from_onnx),
                 "--quiet", "--no-overlays", "--score-threshold", "0.0001"]) == 0
    assert (out / "results.json").read_text() == (from_onnx / "results.json").read_text()
    pyfunc = OnnxVisionModel()
    pyfunc.load_onnx(model_dir / "model.onnx", task="detection")
    sent_jpeg = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["dataframe_split"]["data"][0][0]))))
    assert len(answer) == 2
    for row, image in zip(answer, [sent_jpeg, images[2]]):
        expected = pyfunc.predict(None, image[None], params={"score_threshold": 0.0001}).iloc[0]
        assert row["labels"] == list(expected["labels"]) and len(row["boxes"]) == len(expected["boxes"]) > 0
        np.testing.assert_allclose(row["scores"], expected["scores"], rtol=1e-6)
