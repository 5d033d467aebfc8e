import hashlib
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from cvpipe.config import load_params
from cvpipe.data.array_plan import ALL_ARRAYS, plan_for_models, plan_from_params
from cvpipe.data.canonical import load_coco
from cvpipe.data.detection_dataset import DetectionDataset
from cvpipe.data.importers import import_dataset
from cvpipe.data.instance_masks import InstanceMasks
from cvpipe.data.masks import decode_segmentation
from cvpipe.data.npy_stream import NpyRowFile
from cvpipe.data.prepare import letterbox, prepare_dataset, split_image_ids
from cvpipe.errors import ConfigError, DataValidationError


def test_split_is_seeded_order_independent_and_complete():
    ids = list(range(1, 101))
    a = split_image_ids(ids, seed=1, fractions=(0.7, 0.15, 0.15))
    b = split_image_ids(list(reversed(ids)), seed=1, fractions=(0.7, 0.15, 0.15))
    c = split_image_ids(ids, seed=2, fractions=(0.7, 0.15, 0.15))
    assert a == b
    assert a != c
    assert sorted(a) == ids
    assert [list(a.values()).count(s) for s in ("train", "val", "test")] == [70, 15, 15]


def test_letterbox_keeps_aspect_and_pads_bottom_right():
    image = Image.fromarray(np.full((50, 100, 3), 200, np.uint8))
    out, scale = letterbox(image, 64)
    assert scale == 0.64 and out.shape == (64, 64, 3)
    assert (out[:32] == 200).all() and (out[32:] == 114).all()


def test_prepared_arrays_agree_with_coco_ground_truth(tiny_prepared):
    meta = json.loads((tiny_prepared / "meta.json").read_text())
    assert sum(s["images"] for s in meta["splits"].values()) == 40
    for split in ("train", "val", "test"):
        images = np.load(tiny_prepared / split / "images.npy", mmap_mode="r")
        semantic = np.load(tiny_prepared / split / "semantic.npy", mmap_mode="r")
        boxes = np.load(tiny_prepared / split / "boxes.npy")
        offsets = np.load(tiny_prepared / split / "box_offsets.npy")
        crops = np.load(tiny_prepared / split / "crops.npy")
        gt = load_coco(tiny_prepared / split / "instances.json")
        assert images.dtype == np.uint8 and images.shape[1:] == (64, 64, 3)
        assert len(offsets) == len(images) + 1 and offsets[-1] == len(boxes) == len(crops) == len(gt.annotations)
        first = gt.annotations[gt.annotations.image_id == gt.images.image_id.iloc[0]]
        mask = decode_segmentation(first.segmentation.iloc[0], 64, 64)
        assert (semantic[0][mask] == first.category_id.iloc[0]).all()
        np.testing.assert_allclose(boxes[offsets[0]], [first.x.iloc[0], first.y.iloc[0],
                                                       first.x.iloc[0] + first.w.iloc[0], first.y.iloc[0] + first.h.iloc[0]])
    assert len(meta["mean"]) == 3 and all(0 < s < 1 for s in meta["std"])


# ---------------------------------------------------------------- scale: plan, workers, streaming (issue 20)

def _prepare(dataset, out, **kwargs):
    options = dict(seed=3, image_size=48, fractions=(0.6, 0.2, 0.2), crop_size=16, crop_context=1.25)
    return prepare_dataset(dataset, out, **{**options, **kwargs})


def test_two_workers_write_the_same_bytes_as_one(tiny_raw, tmp_path):
    dataset = import_dataset("shapes", tiny_raw)
    one = _prepare(dataset, tmp_path / "one", workers=1)
    two = _prepare(dataset, tmp_path / "two", workers=2)
    assert one["files"] == two["files"] and one["data_hash"] == two["data_hash"] and one["mean"] == two["mean"]
    for name, digest in one["files"].items():  # the streamed hashes are the files' hashes
        assert hashlib.sha256((tmp_path / "two" / name).read_bytes()).hexdigest() == digest, name
    assert (tmp_path / "one" / "train" / "instances.json").read_bytes() == \
        (tmp_path / "two" / "train" / "instances.json").read_bytes()


def test_statistics_equal_a_float_pass_over_the_written_images(tiny_prepared):
    meta = json.loads((tiny_prepared / "meta.json").read_text())
    train = np.load(tiny_prepared / "train" / "images.npy").astype(np.float64) / 255.0
    np.testing.assert_allclose(meta["mean"], train.mean(axis=(0, 1, 2)), atol=1e-6)
    np.testing.assert_allclose(meta["std"], train.std(axis=(0, 1, 2)), atol=1e-6)


def test_a_detection_plan_writes_images_and_boxes_only(tiny_raw, tmp_path):
    meta = _prepare(import_dataset("shapes", tiny_raw), tmp_path, plan=plan_for_models({"yolo": "detection"}))
    names = {p.name for p in (tmp_path / "train").iterdir()}
    assert names == {"images.npy", "boxes.npy", "box_labels.npy", "box_offsets.npy", "instances.json"}
    images = (tmp_path / "train" / "images.npy").stat().st_size
    assert sum(p.stat().st_size for p in (tmp_path / "train").glob("*.npy")) < 1.05 * images
    assert meta["arrays"] == {"arrays": ["images"], "models": {"yolo": "detection"}}
    assert meta["splits"]["train"]["crops"] == 0


def test_a_classifier_plan_writes_crops_not_scenes(tiny_raw, tmp_path):
    meta = _prepare(import_dataset("shapes", tiny_raw), tmp_path, plan=plan_for_models({"c": "classification"}))
    assert not (tmp_path / "train" / "images.npy").exists()
    crops = np.load(tmp_path / "train" / "crops.npy")
    assert len(crops) == meta["splits"]["train"]["objects"] == len(np.load(tmp_path / "train" / "crop_labels.npy"))
    assert len(meta["mean"]) == 3  # the statistics still come from the scenes


def test_instance_masks_decode_to_the_letterboxed_coco_masks(tiny_prepared):
    gt = load_coco(tiny_prepared / "val" / "instances.json")
    objects = gt.annotations[gt.annotations.iscrowd == 0]
    masks = InstanceMasks.from_prepared(tiny_prepared, "val", 64)
    decoded = masks.decode(np.arange(len(masks))[::-1])[::-1]  # any row order
    assert len(masks) == len(objects) and masks.has_mask.all()
    for row, segmentation in enumerate(objects.segmentation):
        assert (decoded[row].astype(bool) == decode_segmentation(segmentation, 64, 64)).all(), row
    batch = DetectionDataset.from_prepared(tiny_prepared, "val", with_masks=True).batch_targets([2, 0])
    assert (batch[1]["masks"].numpy() == decoded[: len(batch[1]["masks"])]).all()


def test_boxes_without_masks_decode_to_empty_rows():
    masks = InstanceMasks(np.zeros(0, np.uint8), np.zeros(3, np.int64), np.array([False, False]), 8)
    assert masks.decode(np.array([1, 0])).shape == (2, 8, 8) and not masks.decode(np.array([1])).any()


def test_mask_models_on_data_without_masks_are_refused_by_name(tiny_raw, tmp_path):
    dataset = import_dataset("shapes", tiny_raw)
    dataset.annotations["segmentation"] = None
    with pytest.raises(ConfigError, match=r"no masks.*unet \(segmentation\).*pipeline.models"):
        _prepare(dataset, tmp_path, plan=plan_for_models({"yolo": "detection", "unet": "segmentation"}))
    _prepare(dataset, tmp_path, plan=plan_for_models({"yolo": "detection"}))
    _prepare(dataset, tmp_path / "all")  # a library caller's default plan: mask arrays only from masks
    assert not (tmp_path / "all" / "train" / "semantic.npy").exists()
    assert (tmp_path / "all" / "train" / "crops.npy").exists()


def _with_source_splits(dataset, drop_class_from=()):
    ids = sorted(dataset.images.image_id)
    split = {i: "train" if k < 24 else "val" if k < 32 else "test" for k, i in enumerate(ids)}
    dataset.images["split"] = dataset.images.image_id.map(split)
    anns = dataset.annotations
    drop = anns.image_id.map(split).isin(drop_class_from) & (anns.category_id == 1)
    dataset.annotations = anns[~drop].reset_index(drop=True)
    return dataset


def test_a_class_absent_from_train_fails_or_warns_by_param(tiny_raw, tmp_path):
    dataset = _with_source_splits(import_dataset("shapes", tiny_raw), drop_class_from=("train",))
    name = dataset.class_names[0]
    with pytest.raises(DataValidationError, match=rf"class in train.*'{name}': \d+ in val, \d+ in test"):
        _prepare(dataset, tmp_path, class_absent_from_train="fail", plan=plan_for_models({"y": "detection"}))
    meta = _prepare(dataset, tmp_path, class_absent_from_train="warn", plan=plan_for_models({"y": "detection"}))
    assert meta["class_counts"]["train"][name] == 0 and meta["class_counts"]["val"][name] > 0
    assert len(meta["split_warnings"]) == 1 and name in meta["split_warnings"][0]
    per_split = {s: sum(meta["class_counts"][s].values()) for s in ("train", "val", "test")}
    assert per_split == {s: meta["splits"][s]["objects"] for s in per_split}  # the counts add up


def test_a_validation_split_without_objects_is_refused_before_tune_meets_it(tiny_raw, tmp_path):
    dataset = _with_source_splits(import_dataset("shapes", tiny_raw))
    val_ids = set(dataset.images.image_id[dataset.images.split == "val"])
    dataset.annotations = dataset.annotations[~dataset.annotations.image_id.isin(val_ids)].reset_index(drop=True)
    with pytest.raises(DataValidationError, match=r"objects in every split.*\['val'\].*yolo tune on val"):
        _prepare(dataset, tmp_path, plan=plan_for_models({"yolo": "detection"}), class_absent_from_train="warn")
    _prepare(dataset, tmp_path, class_absent_from_train="warn")  # no configured model, nothing to refuse


def test_rows_written_in_any_order_give_np_save_bytes_and_hash(tmp_path):
    array = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3)
    np.save(tmp_path / "saved.npy", array)
    file = NpyRowFile(tmp_path / "rows.npy", np.uint8, array.shape)
    target = pickle.loads(pickle.dumps(file.target()))  # what a pool worker receives
    target.write(2, array[2])
    target.write(0, array[:2])
    file.confirm(3)
    digest = file.close()
    assert (tmp_path / "rows.npy").read_bytes() == (tmp_path / "saved.npy").read_bytes()
    assert digest == hashlib.sha256((tmp_path / "saved.npy").read_bytes()).hexdigest()
    short = NpyRowFile(tmp_path / "short.npy", np.uint8, array.shape)
    short.confirm(1)
    with pytest.raises(ValueError, match="1 rows written, 3 declared"):
        short.close()


def test_the_plan_follows_pipeline_models():
    params = load_params("params.yaml")
    plan = plan_from_params(params)
    assert plan.arrays == ALL_ARRAYS  # the default six models read every array
    params["pipeline"]["models"] = ["yolo", "ssd"]
    assert plan_from_params(params).arrays == {"images"}
    params["pipeline"]["models"] = ["classifier"]
    assert plan_from_params(params).arrays == {"crops"}
