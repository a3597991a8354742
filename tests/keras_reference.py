"""An independent numpy reference for Keras 2 image graphs, for tests/test_mini_xception.py: it walks a Keras
`model_config` (the JSON an hdf5 file stores) layer by layer in Keras' own layouts (NHWC activations, HWIO
kernels, depthwise (kh, kw, C, 1)) with its own convolution code, in float64. Nothing here shares code with
models/mini_xception.py or torch.

    from tests.keras_reference import run_keras_graph
    outputs = run_keras_graph(model_config, arrays, images_nhwc)   # {layer name: float64 array}

arrays: {"layer/weight": array}, e.g. "conv2d_1/kernel", "batch_normalization_1/moving_mean".
Layers: InputLayer, Conv2D, SeparableConv2D, BatchNormalization, Activation (linear, relu, softmax),
MaxPooling2D, Add, GlobalAveragePooling2D; padding 'valid' or 'same' (TensorFlow's rule: odd pixel after).
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def tf_padding(size, kernel, stride, mode):
    if mode == "valid":
        return 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def windows(images, kernel, strides, mode, fill=0.0):
    """(N, H, W, C) -> (N, Ho, Wo, C, kh, kw) patches under TF padding."""
    (kh, kw), (sh, sw) = kernel, strides
    pad_h = tf_padding(images.shape[1], kh, sh, mode)
    pad_w = tf_padding(images.shape[2], kw, sw, mode)
    padded = np.pad(images, ((0, 0), pad_h, pad_w, (0, 0)), constant_values=fill)
    return sliding_window_view(padded, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]


def activation(values, name):
    if name == "linear":
        return values
    if name == "relu":
        return np.maximum(values, 0.0)
    if name == "softmax":
        shifted = np.exp(values - values.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    raise ValueError(f"activation {name} not in the reference")


def run_layer(kind, config, inputs, weight):
    if kind == "InputLayer":
        return inputs[0]
    if kind == "Add":
        return sum(inputs)
    (images,) = inputs
    if kind == "Conv2D":
        patches = windows(images, config["kernel_size"], config["strides"], config["padding"])
        out = np.einsum("nhwcij,ijco->nhwo", patches, weight("kernel"), optimize=True)
        return activation(out + (weight("bias") if config["use_bias"] else 0.0), config["activation"])
    if kind == "SeparableConv2D":
        assert config["depth_multiplier"] == 1
        patches = windows(images, config["kernel_size"], config["strides"], config["padding"])
        depthwise = np.einsum("nhwcij,ijc->nhwc", patches, weight("depthwise_kernel")[..., 0], optimize=True)
        out = np.einsum("nhwc,co->nhwo", depthwise, weight("pointwise_kernel")[0, 0], optimize=True)
        return activation(out + (weight("bias") if config["use_bias"] else 0.0), config["activation"])
    if kind == "BatchNormalization":
        assert config["axis"] in (-1, 3) and config["center"] and config["scale"]
        scale = weight("gamma") / np.sqrt(weight("moving_variance") + config["epsilon"])
        return (images - weight("moving_mean")) * scale + weight("beta")
    if kind == "Activation":
        return activation(images, config["activation"])
    if kind == "MaxPooling2D":
        patches = windows(images, config["pool_size"], config["strides"], config["padding"], fill=-np.inf)
        return patches.max(axis=(4, 5))
    if kind == "GlobalAveragePooling2D":
        return images.mean(axis=(1, 2))
    raise ValueError(f"layer {kind} not in the reference")


def run_keras_graph(model_config, arrays, images_nhwc):
    """Every layer's output for float images (N, H, W, C), in float64. Layers run in the config's order (Keras
    writes them topologically sorted); each reads its inbound layers' outputs by name."""
    outputs = {}
    for layer in model_config["config"]["layers"]:
        name, kind, config = layer["name"], layer["class_name"], layer["config"]
        inbound = [node[0] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
        inputs = [outputs[source] for source in inbound] if inbound else [np.asarray(images_nhwc, np.float64)]

        def weight(key, name=name):
            return np.asarray(arrays[f"{name}/{key}"], np.float64)

        outputs[name] = run_layer(kind, config, inputs, weight)
    return outputs
