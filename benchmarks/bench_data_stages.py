"""The data stages (validate, prepare) at real size: wall time, images/s, peak memory of the process tree and the
bytes prepare writes, with 1 and with every core as ``runtime.data_workers`` (a benchmark that prints figures,
not a test).

    python benchmarks/bench_data_stages.py [--sizes 1000] [--workers 1,2] [--image-size 416] [--models yolo]

Data: N photographs of 640 x 480 in Pascal VOC layout (JPEGImages/, Annotations/), made from the raccoon set
(``../shared/datasets/raccoon``, 200 web photographs, one class, VOC): one photo resized and cropped to 640 x 480
as background (its own box mapped through the resize) plus about 12 raccoon crops from other photos pasted at
random places and scales (longer side 20-200 px), so about 13 boxes an image, class ``raccoon``, JPEG quality 90.
Seeded (``--seed``); cached under ``--work`` per (N, seed), so a re-run does not make them again.

Each stage runs as the pipeline runs it: ``python stages/<stage>.py`` in a fresh process from the repository
root, on a params.yaml written into a run folder (the repository's params.yaml with ``data.source: voc``,
``data.path``, ``pipeline.models``, ``prepare.image_size``, ``runtime.data_workers`` and ``mlflow.experiment:
bench-data`` set) and with ``MLFLOW_TRACKING_URI=sqlite:///<run folder>/mlflow.db``, so nothing reaches the
repository's store. When ``stages/arrays.py`` exists it runs between validate and prepare and prepare gets its
``--arrays`` file. One run folder per (N, W); prepared/ of the runs with different W must be byte-identical.

Printed per stage, N and W: wall seconds (process start to exit, imports and MLflow logging included; the
start-up alone, ``--help`` of the stage script, is printed too), images/s, images/s per worker, CPU use, and the
peak memory of the process tree (the stage and its pool workers, sampled every ``--interval`` s from /proc):
summed PSS (forked workers share pages, so summed RSS overcounts; printed too) and the largest single process
RSS. Then the bytes under prepared/ per file name (apparent and on disk), their ratio to images.npy, the source
JPEG bytes, the W speed-ups, whether the outputs match, and the targets with PASS/FAIL (information only: the
exit status is 0 unless a stage failed). Figures also go to ``reports/bench_data_stages.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
RACCOON = REPO.parent / "shared" / "datasets" / "raccoon"
WIDTH, HEIGHT = 640, 480
PASTES = (11, 13)  # pasted crops per image, inclusive: 12 on average, + the background's own box
PASTE_SIDE = (20.0, 200.0)  # px, longer side of a pasted crop, log-uniform
JPEG_QUALITY = 90
GENERATOR_VERSION = 2  # bump when the generated images change: the cache key holds it
MB = 1 << 20

# Targets (information: the script never fails on them)
TARGET_SPEEDUP = 1.8  # prepare, all cores (2) vs 1 worker
TARGET_PER_CORE = 70.0  # prepare images/s per worker at 416 px
TARGET_BYTES_RATIO = 1.3  # detection-only config: bytes under prepared/ / bytes of images.npy
TARGET_MEMORY_GROWTH = 1.25  # peak tree PSS at the largest N / at the smallest N: "does not grow with N"


# --------------------------------------------------------------------------------------------------- dataset ---

def raccoon_sources(root: Path) -> list[tuple[Path, list[tuple[float, float, float, float]]]]:
    """(image path, boxes xyxy) of every raccoon photo with at least one box, in file-name order."""
    sources = []
    for xml in sorted((root / "annotations").glob("*.xml")):
        doc = ET.parse(xml).getroot()
        name = doc.findtext("filename") or f"{xml.stem}.jpg"
        image = root / "images" / name
        if not image.is_file():
            image = root / "images" / f"{xml.stem}.jpg"
        boxes = []
        for obj in doc.iter("object"):
            box = obj.find("bndbox")
            if box is not None:
                boxes.append(tuple(float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")))
        if image.is_file() and boxes:
            sources.append((image, boxes))
    if not sources:
        raise SystemExit(f"no raccoon photos with boxes under {root} (expected annotations/*.xml, images/*.jpg)")
    return sources


class Crops:
    """The largest raccoon box of each source photo, cut out once and kept."""

    def __init__(self, sources):
        self.sources = sources
        self.cache: dict[int, Image.Image] = {}

    def __getitem__(self, index: int) -> Image.Image:
        if index not in self.cache:
            path, boxes = self.sources[index]
            with Image.open(path) as image:
                image = image.convert("RGB")
            x0, y0, x1, y1 = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
            box = (max(0, math.floor(x0)), max(0, math.floor(y0)), min(image.width, math.ceil(x1)),
                   min(image.height, math.ceil(y1)))
            self.cache[index] = image.crop(box) if box[2] > box[0] + 1 and box[3] > box[1] + 1 else image
        return self.cache[index]


def _overlap(a, b) -> float:
    """Intersection of boxes ``a`` and ``b`` over the smaller one's area."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def make_image(index: int, seed: int, sources, crops: Crops) -> tuple[Image.Image, list[tuple[int, ...]]]:
    """Scene ``index``: a background photo covering 640 x 480 plus pasted crops; its boxes xyxy (px edges)."""
    rng = np.random.default_rng([seed, index])
    background = int(rng.integers(len(sources)))
    path, source_boxes = sources[background]
    with Image.open(path) as image:
        image = image.convert("RGB")
    scale = max(WIDTH / image.width, HEIGHT / image.height)
    size = (max(WIDTH, math.ceil(image.width * scale)), max(HEIGHT, math.ceil(image.height * scale)))
    left, top = int(rng.integers(size[0] - WIDTH + 1)), int(rng.integers(size[1] - HEIGHT + 1))
    scene = image.resize(size, Image.BILINEAR).crop((left, top, left + WIDTH, top + HEIGHT))
    boxes = []
    for x0, y0, x1, y1 in source_boxes:  # the background's own raccoon(s), mapped through resize and crop
        box = (round(min(max(x0 * scale - left, 0), WIDTH)), round(min(max(y0 * scale - top, 0), HEIGHT)),
               round(min(max(x1 * scale - left, 0), WIDTH)), round(min(max(y1 * scale - top, 0), HEIGHT)))
        if box[2] - box[0] >= 4 and box[3] - box[1] >= 4:
            boxes.append(box)
    pasted: list[tuple[int, ...]] = []
    plan = []
    for _ in range(int(rng.integers(PASTES[0], PASTES[1] + 1))):
        other = int(rng.integers(len(sources) - 1))
        plan.append((math.exp(rng.uniform(math.log(PASTE_SIDE[0]), math.log(PASTE_SIDE[1]))),
                     other + (other >= background)))  # a crop from another photo
    for side, other in sorted(plan, reverse=True):  # largest first: a later, smaller crop never hides one whole
        crop = crops[other]
        ratio = side / max(crop.width, crop.height)
        w, h = max(2, round(crop.width * ratio)), max(2, round(crop.height * ratio))
        for _attempt in range(10):  # keep pasted crops mostly apart where there is room
            x, y = int(rng.integers(WIDTH - w + 1)), int(rng.integers(HEIGHT - h + 1))
            box = (x, y, x + w, y + h)
            if all(_overlap(box, seen) < 0.3 for seen in pasted):
                break
        scene.paste(crop.resize((w, h), Image.BILINEAR), box[:2])
        pasted.append(box)
    return scene, boxes + pasted


def voc_xml(file_name: str, boxes) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = file_name
    size = ET.SubElement(root, "size")
    for tag, value in (("width", WIDTH), ("height", HEIGHT), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for box in boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = "raccoon"
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bndbox, tag).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def dataset(work: Path, count: int, seed: int, raccoon: Path) -> tuple[Path, dict]:
    """The VOC folder of ``count`` scenes for ``seed`` (made once, then read from the cache) and its figures."""
    folder = work / f"voc_n{count}_seed{seed}"
    key = {"images": count, "seed": seed, "generator": GENERATOR_VERSION, "size": [WIDTH, HEIGHT],
           "source": str(raccoon.resolve())}
    marker = folder / "bench_dataset.json"
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info.get("key") == key:
            print(f"dataset: {count} images, seed {seed}: cached in {folder}", flush=True)
            return folder, info
    sources = raccoon_sources(raccoon)
    crops = Crops(sources)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "JPEGImages").mkdir(parents=True)
    (tmp / "Annotations").mkdir()
    started = time.perf_counter()
    jpeg_bytes, box_count = 0, 0
    for index in range(count):
        scene, boxes = make_image(index, seed, sources, crops)
        name = f"bench_{index:06d}"
        scene.save(tmp / "JPEGImages" / f"{name}.jpg", quality=JPEG_QUALITY)
        (tmp / "Annotations" / f"{name}.xml").write_bytes(voc_xml(f"{name}.jpg", boxes))
        jpeg_bytes += (tmp / "JPEGImages" / f"{name}.jpg").stat().st_size
        box_count += len(boxes)
        if (index + 1) % 250 == 0:
            print(f"  {index + 1}/{count} images made", flush=True)
    info = {"key": key, "images": count, "boxes": box_count, "jpeg_bytes": jpeg_bytes,
            "source_photos": len(sources), "seconds_to_make": round(time.perf_counter() - started, 1)}
    (tmp / "bench_dataset.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    print(f"dataset: {count} images, {box_count} boxes made in {info['seconds_to_make']} s -> {folder}", flush=True)
    return folder, info


# ---------------------------------------------------------------------------------------- process-tree memory ---

def _kib(text: bytes, field: bytes) -> int:
    """``field   123 kB`` at the start of a line of a /proc status-like text, in bytes (0 when absent)."""
    found = re.search(rb"^" + re.escape(field) + rb"\s+(\d+)", text, re.M)
    return int(found.group(1)) * 1024 if found else 0


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:  # gone (exited), or a zombie's empty file
        return None


class TreeSampler(threading.Thread):
    """Samples the process tree under ``root`` every ``interval`` s: summed PSS (smaps_rollup), summed RSS and the
    largest single-process RSS high-water mark (status VmHWM). Children are found through
    /proc/<pid>/task/*/children where the kernel has it, else by the ppid field of /proc/*/stat (rescanned every
    ``rescan`` samples; known processes are read on every sample)."""

    def __init__(self, root: int, interval: float, rescan: int = 4):
        super().__init__(daemon=True)
        self.root, self.interval, self.rescan = root, interval, rescan
        self.halt = threading.Event()
        self.peak_pss = self.peak_rss_sum = self.max_hwm = 0
        self.max_processes = self.samples = 0
        self.pids = {root}
        self.use_children_files = os.path.exists(f"/proc/{root}/task/{root}/children")

    def _descendants(self) -> set[int]:
        found, todo = {self.root}, [self.root]
        if self.use_children_files:
            while todo:
                pid = todo.pop()
                try:
                    tasks = os.listdir(f"/proc/{pid}/task")
                except OSError:
                    continue
                for tid in tasks:
                    for child in (_read(f"/proc/{pid}/task/{tid}/children") or b"").split():
                        if int(child) not in found:
                            found.add(int(child))
                            todo.append(int(child))
            return found
        children: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                stat = _read(f"/proc/{entry.name}/stat")
                if stat:
                    children.setdefault(int(stat[stat.rfind(b")") + 2:].split()[1]), []).append(int(entry.name))
        while todo:
            for child in children.get(todo.pop(), ()):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return found

    def sample(self) -> None:
        if self.use_children_files or self.samples % self.rescan == 0:
            self.pids = self._descendants()
        pss = rss = alive = 0
        for pid in list(self.pids):
            rollup = _read(f"/proc/{pid}/smaps_rollup")
            status = _read(f"/proc/{pid}/status")
            if not rollup or not status:
                continue
            alive += 1
            pss += _kib(rollup, b"Pss:")
            rss += _kib(rollup, b"Rss:")
            self.max_hwm = max(self.max_hwm, _kib(status, b"VmHWM:"), _kib(status, b"VmRSS:"))
        self.peak_pss, self.peak_rss_sum = max(self.peak_pss, pss), max(self.peak_rss_sum, rss)
        self.max_processes = max(self.max_processes, alive)
        self.samples += 1

    def run(self) -> None:
        while not self.halt.is_set():
            self.sample()
            self.halt.wait(self.interval)

    def stop(self) -> None:
        self.halt.set()
        self.join()


def run_measured(command: list[str], *, env: dict, log: Path, interval: float) -> dict:
    """Run ``command`` from the repository root with its output in ``log``; wall time, CPU and memory figures."""
    with log.open("wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        sampler = TreeSampler(proc.pid, interval)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.stop()
    return {"returncode": proc.returncode, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "cpu_use": (usage.ru_utime + usage.ru_stime) / wall,
            "peak_tree_pss_mb": sampler.peak_pss / MB, "peak_tree_rss_sum_mb": sampler.peak_rss_sum / MB,
            # sampled VmHWM, not wait4's ru_maxrss: after a vfork + exec that also holds this process's RSS
            "max_process_rss_mb": sampler.max_hwm / MB,
            "max_processes": sampler.max_processes, "samples": sampler.samples, "log": str(log)}


# ----------------------------------------------------------------------------------------------------- runs ---

def write_params(run: Path, data_path: Path, workers: int, models: list[str], image_size: int | str) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["source"] = "voc"
    params["data"]["path"] = str(data_path)
    params["pipeline"]["models"] = models
    params["prepare"]["image_size"] = image_size
    params["runtime"]["data_workers"] = workers
    params["mlflow"]["experiment"] = "bench-data"
    path = run / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


MLFLOW_SETUP = """
import sys
from pathlib import Path
import mlflow
from mlflow.tracking import MlflowClient
mlflow.set_tracking_uri(sys.argv[1])
client = MlflowClient()
for name in sys.argv[3:]:
    if client.get_experiment_by_name(name) is None:
        client.create_experiment(name, artifact_location=(Path(sys.argv[2]) / name).as_uri(),
                                 tags={"mlflow.experimentKind": "custom_model_development"})
"""


def stage_env(run: Path) -> dict:
    """The stages' environment: MLflow in the run folder (tracking store and artifacts), never the repo's."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{run / 'mlflow.db'}", PYTHONUNBUFFERED="1")
    # where MLflow puts the artifacts of an experiment created without a location (default: ./mlruns of the cwd)
    env["_MLFLOW_SERVER_ARTIFACT_ROOT"] = (run / "mlartifacts").as_uri()
    return env


def tree_hashes(folder: Path) -> dict[str, str]:
    hashes = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
        hashes[str(path.relative_to(folder))] = digest.hexdigest()
    return hashes


def tree_bytes(folder: Path) -> dict:
    """Bytes under ``folder`` per file name (summed over the splits) and in total: apparent and on disk."""
    by_name: dict[str, dict[str, int]] = {}
    for path in folder.rglob("*"):
        if path.is_file():
            st = path.stat()
            row = by_name.setdefault(path.name, {"files": 0, "apparent": 0, "disk": 0})
            row["files"] += 1
            row["apparent"] += st.st_size
            row["disk"] += st.st_blocks * 512
    total = {k: sum(r[k] for r in by_name.values()) for k in ("files", "apparent", "disk")}
    images = by_name.get("images.npy", {"apparent": 0, "disk": 0})
    return {"by_name": dict(sorted(by_name.items(), key=lambda kv: -kv[1]["apparent"])), "total": total,
            "ratio_to_images_npy": {k: total[k] / images[k] if images[k] else None for k in ("apparent", "disk")}}


LETTERBOX_LINE = re.compile(r"letterboxed (\d+) images in ([0-9.]+) s")


def run_pipeline(work: Path, data_path: Path, count: int, workers: int, args) -> dict:
    """validate [→ arrays] → prepare in a fresh run folder; each stage's figures, the outputs' hashes and bytes."""
    run = work / "runs" / f"n{count}_w{workers}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    params = write_params(run, data_path, workers, args.models, args.image_size)
    env = stage_env(run)
    subprocess.run([sys.executable, "-c", MLFLOW_SETUP, env["MLFLOW_TRACKING_URI"], str(run / "mlartifacts"),
                    "bench-data", "bench-data-data"], cwd=REPO, env=env, check=True, capture_output=True)
    py = sys.executable
    steps = [("validate", [py, "stages/validate.py", "--params", str(params),
                           "--out", str(run / "validated" / "dataset.json"), "--report", str(run / "validation.json"),
                           "--report-md", str(run / "validation.md"),
                           "--quarantine", str(run / "validated" / "quarantine.csv")])]
    prepare = [py, "stages/prepare.py", "--params", str(params), "--dataset", str(run / "validated" / "dataset.json"),
               "--out", str(run / "prepared"), "--report", str(run / "prepare.json"),
               "--report-md", str(run / "prepare.md")]
    if (REPO / "stages" / "arrays.py").is_file():
        steps.append(("arrays", [py, "stages/arrays.py", "--params", str(params), "--out", str(run / "arrays.json")]))
        prepare += ["--arrays", str(run / "arrays.json")]
    steps.append(("prepare", prepare))
    result = {"images": count, "workers": workers, "run": str(run), "stages": {}}
    for stage, command in steps:
        print(f"N={count} W={workers}: {stage} ...", end=" ", flush=True)
        figures = run_measured(command, env=env, log=run / f"{stage}.log", interval=args.interval)
        os.sync()  # the next run does not pay for this one's write-back
        figures["images_per_s"] = count / figures["wall_s"]
        figures["images_per_s_per_worker"] = figures["images_per_s"] / workers
        phase = LETTERBOX_LINE.search((run / f"{stage}.log").read_text(errors="replace"))
        if phase:  # prepare's own timing of its decode + letterbox + write phase (no imports, no MLflow)
            figures["phase_s"] = float(phase.group(2))
            figures["phase_images_per_s"] = int(phase.group(1)) / figures["phase_s"]
        result["stages"][stage] = figures
        print(f"{figures['wall_s']:.1f} s, rc {figures['returncode']}", flush=True)
        if figures["returncode"] != 0:
            tail = (run / f"{stage}.log").read_text(errors="replace").splitlines()[-15:]
            print("\n".join(f"    | {line}" for line in tail), flush=True)
            result["failed"] = stage
            return result
    prepared = run / "prepared"
    result["bytes"] = tree_bytes(prepared)
    result["hashes"] = tree_hashes(prepared)
    meta = json.loads((prepared / "meta.json").read_text()) if (prepared / "meta.json").is_file() else {}
    result["data_hash"] = meta.get("data_hash")
    result["meta_files"] = meta.get("files")
    result["image_size"] = meta.get("image_size")
    dataset_json = run / "validated" / "dataset.json"
    result["dataset_json_sha256"] = hashlib.sha256(dataset_json.read_bytes()).hexdigest()
    if not args.keep:
        shutil.rmtree(prepared)
    return result


def startup_seconds(stage: str) -> float:
    """Wall seconds of ``python stages/<stage>.py --help`` (the imports at the top of the script), warm."""
    command = [sys.executable, f"stages/{stage}.py", "--help"]
    subprocess.run(command, cwd=REPO, capture_output=True)  # warm the file cache
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, capture_output=True)
    return time.perf_counter() - started


# --------------------------------------------------------------------------------------------------- report ---

def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(row: list) -> str:  # first column left-aligned, the figures right-aligned
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cores = len(os.sched_getaffinity(0))
    parser.add_argument("--sizes", default="1000", help="comma list of N (images), e.g. 250,1000")
    parser.add_argument("--workers", default=",".join(map(str, sorted({1, cores}))),
                        help=f"comma list of runtime.data_workers (default 1,{cores}: 1 and every core)")
    parser.add_argument("--image-size", default="416", help="prepare.image_size: px or auto")
    parser.add_argument("--models", default="yolo", help="pipeline.models, comma list (default: detection only)")
    parser.add_argument("--seed", type=int, default=20260101, help="seed of the generated images")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cvpipe_bench_data_stages"),
                        help="datasets (cached per N and seed) and run folders")
    parser.add_argument("--raccoon", type=Path, default=RACCOON, help="the raccoon VOC set (pixel source)")
    parser.add_argument("--interval", type=float, default=0.05, help="memory sampling interval (s)")
    parser.add_argument("--keep", action="store_true", help="keep each run's prepared/ (default: deleted once "
                                                            "hashed and measured, to save disk)")
    parser.add_argument("--json", default="bench_data_stages.json", help="file name under reports/")
    args = parser.parse_args()
    sizes = sorted({int(v) for v in args.sizes.split(",") if v.strip()})
    workers = sorted({int(v) for v in args.workers.split(",") if v.strip()})
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.image_size = int(args.image_size) if args.image_size.isdigit() else args.image_size
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)

    datasets = {n: dataset(work, n, args.seed, args.raccoon) for n in sizes}
    stages = ["validate", "prepare"] + (["arrays"] if (REPO / "stages" / "arrays.py").is_file() else [])
    startup = {stage: startup_seconds(stage) for stage in stages}
    runs = [run_pipeline(work, folder, n, w, args) for n, (folder, _) in datasets.items() for w in workers]
    by = {(r["images"], r["workers"]): r for r in runs}
    order = [s for s in ("validate", "arrays", "prepare") if s in stages]

    # stage figures
    header = ["stage", "N", "W", "wall s", "img/s", "img/s/W", "img/s net", "CPU use", "tree PSS MB",
              "tree RSS-sum MB", "max proc RSS MB", "procs"]
    rows = []
    for stage in order:
        for run in runs:
            f = run["stages"].get(stage)
            if f is None:
                continue
            spare = f["wall_s"] - startup[stage]
            net = run["images"] / spare if spare > 0 and f["returncode"] == 0 else None
            f["images_per_s_net_of_startup"] = net
            rows.append([stage + ("" if f["returncode"] == 0 else f" FAILED (rc {f['returncode']})"), run["images"],
                         run["workers"], f"{f['wall_s']:.2f}", f"{f['images_per_s']:.1f}",
                         f"{f['images_per_s_per_worker']:.1f}", "-" if net is None else f"{net:.1f}",
                         f"{f['cpu_use']:.2f}", f"{f['peak_tree_pss_mb']:.0f}", f"{f['peak_tree_rss_sum_mb']:.0f}",
                         f"{f['max_process_rss_mb']:.0f}", f"{f['max_processes']}"])
    print()
    print(f"data stages: {args.models} at prepare.image_size {args.image_size}, {cores} cores, "
          f"workers {workers}, images {sizes} (640x480 JPEG q{JPEG_QUALITY}), seed {args.seed}")
    print("start-up (stage --help, warm): " + ", ".join(f"{s} {t:.2f} s" for s, t in startup.items())
          + "   (img/s net = N / (wall - start-up))")
    print(table(header, rows))

    # bytes
    print()
    bytes_rows = []
    for n, (folder, info) in datasets.items():
        base = next((by[(n, w)] for w in workers if "bytes" in by[(n, w)]), None)
        print(f"N={n}: source JPEGs {info['jpeg_bytes'] / MB:.1f} MB ({info['jpeg_bytes'] / n / 1024:.0f} KiB an "
              f"image), {info['boxes']} boxes ({info['boxes'] / n:.1f} an image)")
        if base is None:
            continue
        b = base["bytes"]
        for name, row in b["by_name"].items():
            bytes_rows.append([n, name, row["files"], f"{row['apparent'] / MB:.1f}", f"{row['disk'] / MB:.1f}"])
        bytes_rows.append([n, "TOTAL", b["total"]["files"], f"{b['total']['apparent'] / MB:.1f}",
                           f"{b['total']['disk'] / MB:.1f}"])
        ratio = b["ratio_to_images_npy"]
        bytes_rows.append([n, "total / images.npy", "", f"{ratio['apparent'] or 0:.2f}x", f"{ratio['disk'] or 0:.2f}x"])
        bytes_rows.append([n, "total / source JPEGs", "", f"{b['total']['apparent'] / info['jpeg_bytes']:.2f}x",
                           f"{b['total']['disk'] / info['jpeg_bytes']:.2f}x"])
    if bytes_rows:
        print(f"bytes under prepared/ (first W that finished; the same for every W when the outputs match)")
        print(table(["N", "file", "files", "apparent MB", "on disk MB"], bytes_rows))

    # identity and speed-ups
    print()
    identical, speedups = {}, {}
    for n in sizes:
        done = [by[(n, w)] for w in workers if "hashes" in by[(n, w)]]
        if len(done) >= 2:
            first = done[0]
            identical[n] = {
                f"W={r['workers']}": {"files": r["hashes"] == first["hashes"],
                                      "data_hash": r["data_hash"] == first["data_hash"],
                                      "meta_files": r["meta_files"] == first["meta_files"],
                                      "validated_dataset": r["dataset_json_sha256"] == first["dataset_json_sha256"]}
                for r in done[1:]}
            for other in done[1:]:
                check = identical[n][f"W={other['workers']}"]
                differ = sorted(k for k in set(first["hashes"]) | set(other["hashes"])
                                if first["hashes"].get(k) != other["hashes"].get(k))
                print(f"N={n}: prepared/ W={first['workers']} vs W={other['workers']}: "
                      f"{'byte-identical' if check['files'] else 'DIFFER: ' + ', '.join(differ[:8])} "
                      f"(data_hash {first['data_hash']} vs {other['data_hash']}; validated dataset.json "
                      f"{'identical' if check['validated_dataset'] else 'differs'})")
        low, high = by.get((n, min(workers))), by.get((n, max(workers)))
        if low and high and low is not high:
            speedups[n] = {stage: low["stages"][stage]["wall_s"] / high["stages"][stage]["wall_s"]
                           for stage in order if stage in low["stages"] and stage in high["stages"]}
            print(f"N={n}: speed-up W={max(workers)} over W={min(workers)}: "
                  + ", ".join(f"{s} {v:.2f}x" for s, v in speedups[n].items()))

    # targets
    targets = []
    n_max = max(sizes)
    sp = speedups.get(n_max, {}).get("prepare")
    two = min(workers) == 1 and max(workers) >= 2
    targets.append({"target": f"prepare >= {TARGET_SPEEDUP}x faster with {max(workers)} workers than 1 (N={n_max})",
                    "value": None if sp is None else round(sp, 2), "pass": None if sp is None or not two
                    else sp >= TARGET_SPEEDUP})
    per_core = [by[(n_max, w)]["stages"]["prepare"]["images_per_s_per_worker"] for w in workers
                if "prepare" in by[(n_max, w)]["stages"]]
    targets.append({"target": f">= {TARGET_PER_CORE:.0f} images/s per core in prepare at 416 px (N={n_max}, "
                              "each W; wall clock)", "value": [round(v, 1) for v in per_core],
                    "pass": None if not per_core or args.image_size != 416 else min(per_core) >= TARGET_PER_CORE})
    # the same two targets on prepare's decode + letterbox + write phase (its own log line: no imports, no MLflow)
    phase = {w: by[(n_max, w)]["stages"]["prepare"].get("phase_images_per_s") for w in workers
             if "prepare" in by[(n_max, w)]["stages"]}
    if phase.get(min(workers)) and phase.get(max(workers)) and two:
        ratio = phase[max(workers)] / phase[min(workers)]
        targets.append({"target": f"prepare's letterbox phase >= {TARGET_SPEEDUP}x faster with {max(workers)} "
                                  f"workers than 1 (N={n_max})", "value": round(ratio, 2),
                        "pass": ratio >= TARGET_SPEEDUP})
        per_core_phase = [phase[w] / w for w in workers if phase.get(w)]
        targets.append({"target": f">= {TARGET_PER_CORE:.0f} images/s per core in prepare's letterbox phase at 416 px "
                                  f"(N={n_max}, each W)", "value": [round(v, 1) for v in per_core_phase],
                        "pass": None if args.image_size != 416 else min(per_core_phase) >= TARGET_PER_CORE})
    ratios = [by[(n_max, w)]["bytes"]["ratio_to_images_npy"] for w in workers if "bytes" in by[(n_max, w)]]
    detection_only = all(m in ("yolo", "ssd", "detr") for m in args.models)
    targets.append({"target": f"detection-only config writes <= {TARGET_BYTES_RATIO}x the bytes of its images.npy "
                              f"(N={n_max}, apparent and on disk)",
                    "value": {k: round(v, 3) for k, v in ratios[0].items() if v is not None} if ratios else None,
                    "pass": None if not ratios or not detection_only else
                    max(ratios[0]["apparent"] or math.inf, ratios[0]["disk"] or math.inf) <= TARGET_BYTES_RATIO})
    growth = {}
    if len(sizes) >= 2:
        for w in workers:
            for stage in order:
                lo, hi = by[(sizes[0], w)]["stages"].get(stage), by[(n_max, w)]["stages"].get(stage)
                if lo and hi:
                    growth[f"{stage} W={w}"] = hi["peak_tree_pss_mb"] / lo["peak_tree_pss_mb"]
    targets.append({"target": f"peak memory (tree PSS) does not grow with N (N={sizes[-1]} / N={sizes[0]} <= "
                              f"{TARGET_MEMORY_GROWTH}x, each stage and W)",
                    "value": {k: round(v, 2) for k, v in growth.items()} or "needs --sizes with 2 or more N",
                    "pass": None if not growth else max(growth.values()) <= TARGET_MEMORY_GROWTH})
    print()
    print("targets (information only)")
    for t in targets:
        print(f"  {verdict(t['pass']):4}  {t['target']}: {t['value']}")

    report = {
        "config": {"sizes": sizes, "workers": workers, "cores": cores, "models": args.models,
                   "image_size": args.image_size, "seed": args.seed, "work": str(work),
                   "image": [WIDTH, HEIGHT], "jpeg_quality": JPEG_QUALITY, "interval_s": args.interval,
                   "arrays_stage": "arrays" in stages, "python": sys.version.split()[0]},
        "datasets": {str(n): {"path": str(folder), **info} for n, (folder, info) in datasets.items()},
        "startup_s": startup,
        "runs": [{k: v for k, v in r.items() if k not in ("hashes", "meta_files")} for r in runs],
        "identical": {str(n): v for n, v in identical.items()},
        "speedup": {str(n): v for n, v in speedups.items()},
        "targets": targets,
    }
    (REPO / "reports").mkdir(exist_ok=True)
    (REPO / "reports" / args.json).write_text(json.dumps(report, indent=2, default=str))
    print(f"\nfigures -> {REPO / 'reports' / args.json}")
    if any("failed" in r for r in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
