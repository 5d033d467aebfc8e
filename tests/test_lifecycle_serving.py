"""The registered pyfunc's pre- and post-processing (cvpipe.serving) on hand-built ONNX graphs with known outputs:
letterboxing in, boxes and masks mapped back to the caller's pixels, tuned thresholds and their overrides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cvpipe.export import save_onnx
from cvpipe.errors import ConfigError
from cvpipe.serving import OnnxVisionModel, decode_column, signature

SIZE = 32


def _constant_graph(path: Path, outputs: dict[str, np.ndarray], metadata: dict) -> Path:
    """images float [B, 3, SIZE, SIZE] → each output = 0 × mean(images) + constant (broadcast over the batch)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ReduceMean", ["images", "axes"], ["mean"], keepdims=1),  # [B, 1, 1, 1]
             helper.make_node("Mul", ["mean", "zero"], ["zeros4"])]
    inits = [numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
             numpy_helper.from_array(np.zeros(1, np.float32), "zero")]
    graph_outputs = []
    for name, value in outputs.items():
        value = value.astype(np.float32)[None]  # [1, ...]
        inits += [numpy_helper.from_array(value, f"{name}_const"),
                  numpy_helper.from_array(np.array([-1] + [1] * (value.ndim - 1), np.int64), f"{name}_shape")]
        nodes += [helper.make_node("Reshape", ["zeros4", f"{name}_shape"], [f"{name}_zeros"]),
                  helper.make_node("Add", [f"{name}_zeros", f"{name}_const"], [name])]
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *value.shape[1:]]))
    graph = helper.make_graph(nodes, "constant", [helper.make_tensor_value_info(
        "images", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])], graph_outputs, inits)
    return save_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), path, metadata)


def test_detection_keeps_tuned_detections_and_maps_boxes_back_through_the_letterbox(tmp_path):
    boxes = np.array([[2, 4, 10, 12], [2, 4, 10, 12.5], [16, 16, 30, 24]], np.float32)  # [A, 4] xyxy px
    scores = np.array([[0.9, 0.05], [0.8, 0.1], [0.2, 0.6]], np.float32)  # [A, K]
    path = _constant_graph(tmp_path / "det.onnx", {"boxes": boxes, "scores": scores},
                           {"class_names": ["cat", "dog"], "uses_nms": True, "score_threshold": 0.5,
                            "nms_iou_threshold": 0.5, "max_detections": 100})
    model = OnnxVisionModel()
    model.load_onnx(path, task="detection")
    same = model.predict(None, np.zeros((2, SIZE, SIZE, 3), np.uint8))
    assert len(same) == 2
    assert same.boxes[0] == [[2.0, 4.0, 10.0, 12.0], [16.0, 16.0, 30.0, 24.0]]  # NMS drops the overlapping box
    assert same.scores[0] == pytest.approx([0.9, 0.6]) and same.labels[0] == [0, 1]
    assert same.class_names[1] == ["cat", "dog"]
    # A 64 × 48 image is letterboxed at scale 0.5: boxes come back in its own pixels.
    wide = model.predict(None, np.zeros((1, 48, 64, 3), np.uint8))
    assert wide.boxes[0] == [[4.0, 8.0, 20.0, 24.0], [32.0, 32.0, 60.0, 48.0]]
    looser = model.predict(None, np.zeros((1, SIZE, SIZE, 3), np.uint8),
                           params={"score_threshold": 0.15, "nms_iou_threshold": 0.99})
    assert len(looser.scores[0]) == 4


def test_segmentation_applies_the_tuned_cleaning_and_returns_label_maps_at_input_size(tmp_path):
    logits = np.full((3, SIZE, SIZE), -5.0, np.float32)
    logits[0] = 5.0  # background everywhere ...
    logits[1, 4:20, 4:20], logits[0, 4:20, 4:20] = 9.0, 0.0  # ... but a 16 × 16 square of class 1
    logits[2, 28:30, 28:30], logits[0, 28:30, 28:30] = 9.0, 0.0  # and a 2 × 2 speck of class 2
    path = _constant_graph(tmp_path / "seg.onnx", {"logits": logits},
                           {"class_names": ["a", "b"], "binary": False, "mask_threshold": None, "min_area": 10,
                            "fill_holes": False})
    model = OnnxVisionModel()
    model.load_onnx(path, task="segmentation")
    labels = model.predict(None, np.zeros((2, SIZE, SIZE, 3), np.uint8))
    assert labels.shape == (2, SIZE, SIZE) and labels.dtype == np.int64
    assert (labels[0, 4:20, 4:20] == 1).all() and labels.sum() == 2 * 16 * 16  # the speck is below min_area
    raw = model.predict(None, np.zeros((1, SIZE, SIZE, 3), np.uint8), params={"min_area": 0})
    assert (raw[0, 28:30, 28:30] == 2).all()
    tall = model.predict(None, np.zeros((1, 64, 32, 3), np.uint8))  # letterboxed at 0.5 into the left half
    assert tall.shape == (1, 64, 32) and (tall[0, 8:40, 8:32] == 1).all() and tall.sum() == 32 * 24
    # A task the registry does not know cannot be served: its post-processing would be a guess.
    with pytest.raises(ConfigError, match="task 'keypoints' is unknown; choose one of"):
        model.load_onnx(path, task="keypoints")


def test_instance_segmentation_returns_one_rle_per_instance_on_the_callers_grid(tmp_path):
    from pycocotools import mask as mask_utils

    left = np.zeros((SIZE, SIZE), np.float32)
    left[8:20, 4:16] = 1
    right = np.zeros((SIZE, SIZE), np.float32)
    right[8:20, 16:28] = 1
    protos = np.stack([left, right]) * 8 - 4  # ±4 logits, prototypes at the input resolution
    boxes = np.array([[4, 8, 16, 20], [16, 8, 28, 20], [0, 0, 4, 4]], np.float32)
    scores = np.array([[0.9], [0.8], [0.1]], np.float32)  # two touching squares of one class, one weak candidate
    coeffs = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    path = _constant_graph(tmp_path / "inst.onnx", {"boxes": boxes, "scores": scores, "mask_coeffs": coeffs,
                                                    "protos": protos},
                           {"class_names": ["square"], "score_threshold": 0.5, "nms_iou_threshold": 0.5,
                            "max_detections": 100, "mask_threshold": 0.5})
    model = OnnxVisionModel()
    model.load_onnx(path, task="instance_segmentation")
    out = model.predict(None, np.zeros((1, SIZE, SIZE, 3), np.uint8))
    assert out.labels[0] == [0, 0] and out.class_names[0] == ["square", "square"]
    masks = mask_utils.decode([{"size": r["size"], "counts": r["counts"].encode()} for r in out.masks[0]])
    assert np.array_equal(masks[..., 0], left.astype(np.uint8)) and np.array_equal(masks[..., 1], right.astype(np.uint8))
    # a 64 × 64 input is scaled by 0.5 into the model: boxes and masks come back at 64 × 64
    big = model.predict(None, np.zeros((1, 2 * SIZE, 2 * SIZE, 3), np.uint8))
    assert big.boxes[0][0] == [8.0, 16.0, 32.0, 40.0] and big.masks[0][0]["size"] == [2 * SIZE, 2 * SIZE]
    big_left = mask_utils.decode({"size": big.masks[0][0]["size"], "counts": big.masks[0][0]["counts"].encode()})
    assert big_left.sum() == 4 * left.sum() and big_left[16:40, 8:32].all()
    assert len(model.predict(None, np.zeros((1, SIZE, SIZE, 3), np.uint8), params={"score_threshold": 0.05}).masks[0]) == 3
    assert signature("instance_segmentation").outputs.input_names()[-1] == "masks"


def test_bad_inputs_are_named_and_the_signature_states_the_contract():
    model = OnnxVisionModel()
    with pytest.raises(ValueError, match="uint8"):
        model.predict(None, np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        model.predict(None, np.zeros((1, 3, 8, 8), np.uint8))
    with pytest.raises(ConfigError, match="task '' is unknown"):
        model.load_onnx("unused.onnx", task="")
    sig = signature("detection")
    assert sig.inputs is None  # two input forms (uint8 tensor, base64 DataFrame): predict checks them itself
    with pytest.raises(ValueError, match="column 'image'"):
        decode_column(pd.DataFrame({"pixels": [1]}))
    assert sig.outputs.input_names() == ["boxes", "scores", "labels", "class_names"]
    assert {p.name for p in sig.params} == {"score_threshold", "nms_iou_threshold", "max_detections"}
