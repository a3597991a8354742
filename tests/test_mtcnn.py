"""preprocess/mtcnn.py: the nets take facenet-pytorch's state-dict layout, the cascade helpers equal brute-force
references, the centre-crop fallback is exact, and bad weight folders give one InputError.
The last tests run only when `make weights` has put the real P-/R-/O-Net files in weights/mtcnn/."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter
from torchvision.ops import batched_nms

from common import InputError
from preprocess.mtcnn import (MTCNN, FaceCropper, ONet, PNet, RNet, center_crop, crop_patches, margin_box, nms_min,
                              pnet_proposals, pyramid_scales, regress_boxes, square_boxes)

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: see conftest.py

REAL_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "mtcnn"

# The keys and shapes of facenet_pytorch/data/{pnet,rnet,onet}.pt (facenet-pytorch 2.6.0, read from the wheel).
FACENET_LAYOUT = {
    "pnet": {"conv1.weight": (10, 3, 3, 3), "conv1.bias": (10,), "prelu1.weight": (10,),
             "conv2.weight": (16, 10, 3, 3), "conv2.bias": (16,), "prelu2.weight": (16,),
             "conv3.weight": (32, 16, 3, 3), "conv3.bias": (32,), "prelu3.weight": (32,),
             "conv4_1.weight": (2, 32, 1, 1), "conv4_1.bias": (2,), "conv4_2.weight": (4, 32, 1, 1), "conv4_2.bias": (4,)},
    "rnet": {"conv1.weight": (28, 3, 3, 3), "conv1.bias": (28,), "prelu1.weight": (28,),
             "conv2.weight": (48, 28, 3, 3), "conv2.bias": (48,), "prelu2.weight": (48,),
             "conv3.weight": (64, 48, 2, 2), "conv3.bias": (64,), "prelu3.weight": (64,),
             "dense4.weight": (128, 576), "dense4.bias": (128,), "prelu4.weight": (128,),
             "dense5_1.weight": (2, 128), "dense5_1.bias": (2,), "dense5_2.weight": (4, 128), "dense5_2.bias": (4,)},
    "onet": {"conv1.weight": (32, 3, 3, 3), "conv1.bias": (32,), "prelu1.weight": (32,),
             "conv2.weight": (64, 32, 3, 3), "conv2.bias": (64,), "prelu2.weight": (64,),
             "conv3.weight": (64, 64, 3, 3), "conv3.bias": (64,), "prelu3.weight": (64,),
             "conv4.weight": (128, 64, 2, 2), "conv4.bias": (128,), "prelu4.weight": (128,),
             "dense5.weight": (256, 1152), "dense5.bias": (256,), "prelu5.weight": (256,),
             "dense6_1.weight": (2, 256), "dense6_1.bias": (2,), "dense6_2.weight": (4, 256), "dense6_2.bias": (4,),
             "dense6_3.weight": (10, 256), "dense6_3.bias": (10,)},
}
NETS = {"pnet": PNet, "rnet": RNet, "onet": ONet}


def random_state_dict(name, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=generator) * 0.3 for key, shape in FACENET_LAYOUT[name].items()}


def write_weights(folder, seed=0, *, zero_box_offsets=False):
    """Random state dicts in facenet's layout; zero_box_offsets keeps boxes where P-Net proposed them
    (random regression heads would throw them far outside the frame)."""
    folder.mkdir(parents=True, exist_ok=True)
    for offset, name in enumerate(NETS):
        state_dict = random_state_dict(name, seed + offset)
        if zero_box_offsets:
            for key in state_dict:
                if key.split(".")[0] in ("conv4_2", "dense5_2", "dense6_2"):
                    state_dict[key].zero_()
        torch.save(state_dict, folder / f"{name}.pt")
    return folder


# ------------------------------------------------------------------------------------------------- nets
@pytest.mark.parametrize("name", list(NETS))
def test_net_parameters_match_facenet_layout_and_load_strictly(name):
    net = NETS[name]()
    assert {key: tuple(value.shape) for key, value in net.state_dict().items()} == FACENET_LAYOUT[name]
    state_dict = random_state_dict(name)
    net.load_state_dict(state_dict, strict=True)
    torch.testing.assert_close(net.state_dict()["conv1.weight"], state_dict["conv1.weight"])


def test_net_output_shapes_and_softmax():
    torch.manual_seed(0)
    offsets, face_prob = PNet()(torch.randn(2, 3, 31, 40))
    map_h, map_w = -(-(31 - 2) // 2) - 4, -(-(40 - 2) // 2) - 4  # conv3x3, ceil maxpool 2, two conv3x3
    assert offsets.shape == (2, 4, map_h, map_w) and face_prob.shape == (2, 2, map_h, map_w)
    assert PNet()(torch.randn(1, 3, 12, 12))[0].shape == (1, 4, 1, 1)  # one cell per 12x12 window
    offsets, face_prob = RNet()(torch.randn(5, 3, 24, 24))
    assert offsets.shape == (5, 4) and face_prob.shape == (5, 2)
    offsets, landmarks, face_prob = ONet()(torch.randn(5, 3, 48, 48))
    assert offsets.shape == (5, 4) and landmarks.shape == (5, 10) and face_prob.shape == (5, 2)
    torch.testing.assert_close(face_prob.sum(1), torch.ones(5))


def functional_onet(state, patches):
    """O-Net written out with torch.nn.functional from the state dict; the dense input is flattened in
    (W, H, C) order, the layout of the converted Caffe weights."""
    def block(x, index, pool=None):
        x = F.prelu(F.conv2d(x, state[f"conv{index}.weight"], state[f"conv{index}.bias"]), state[f"prelu{index}.weight"])
        return F.max_pool2d(x, pool[0], pool[1], ceil_mode=True) if pool else x
    x = block(block(block(block(patches, 1, (3, 2)), 2, (3, 2)), 3, (2, 2)), 4)
    x = x.permute(0, 3, 2, 1).reshape(len(x), -1)
    x = F.prelu(F.linear(x, state["dense5.weight"], state["dense5.bias"]), state["prelu5.weight"])
    return (F.linear(x, state["dense6_2.weight"], state["dense6_2.bias"]), F.linear(x, state["dense6_3.weight"], state["dense6_3.bias"]),
            torch.softmax(F.linear(x, state["dense6_1.weight"], state["dense6_1.bias"]), 1))


def test_onet_equals_functional_reference():
    state = random_state_dict("onet")
    net = ONet()
    net.load_state_dict(state)
    patches = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        for ours, expected in zip(net(patches), functional_onet(state, patches)):
            torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_pnet_cell_sees_its_12x12_window_at_stride_2():
    """The geometry pnet_proposals assumes: output cell (r, c) depends on input rows 2r..2r+11, cols 2c..2c+11."""
    net = PNet()
    net.load_state_dict(random_state_dict("pnet"))
    image = torch.randn(1, 3, 30, 34, requires_grad=True)
    row, col = 3, 5
    net(image)[1][0, 1, row, col].backward()
    rows, cols = torch.nonzero(image.grad[0].abs().sum(0), as_tuple=True)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (2 * row, 2 * row + 11, 2 * col, 2 * col + 11)


# ------------------------------------------------------------------------------------------ box helpers
@pytest.mark.parametrize("height,width", [(10, 10), (33, 50), (480, 360), (720, 1280)])
def test_pyramid_scales_brute_force(height, width):
    expected = [0.6 * 0.709 ** k for k in range(60) if min(height, width) * 0.6 * 0.709 ** k >= 12 - 1e-9]
    np.testing.assert_allclose(pyramid_scales(height, width), expected, rtol=1e-9)
    assert pyramid_scales(100, 100, min_face_size=40, factor=0.5) == [0.3, 0.15]


def test_pnet_proposals_brute_force():
    generator = torch.Generator().manual_seed(1)
    offsets = torch.randn(2, 4, 5, 7, generator=generator)
    face_prob = torch.rand(2, 5, 7, generator=generator)
    scale, threshold = 0.37, 0.6
    boxes, image_index = pnet_proposals(offsets, face_prob, scale, threshold)
    expected = []
    for b in range(2):
        for row in range(5):
            for col in range(7):
                if face_prob[b, row, col] >= threshold:
                    x, y = 2 * col, 2 * row  # window top-left in the scaled image; the +1 is the 1-based MATLAB pixel
                    expected.append([b, np.floor((x + 1) / scale), np.floor((y + 1) / scale),
                                     np.floor((x + 12) / scale), np.floor((y + 12) / scale),
                                     float(face_prob[b, row, col]), *offsets[b, :, row, col].tolist()])
    expected = torch.tensor(expected, dtype=torch.float32)
    assert len(expected) > 5
    torch.testing.assert_close(image_index.float(), expected[:, 0])
    torch.testing.assert_close(boxes, expected[:, 1:], atol=1e-5, rtol=1e-5)


def brute_force_nms(boxes, scores, groups, threshold, mode):
    """Greedy: repeatedly keep the best remaining box, drop same-group boxes overlapping it more than threshold."""
    boxes, scores, groups = boxes.tolist(), scores.tolist(), groups.tolist()
    extra = 1.0 if mode == "min" else 0.0
    area = lambda b: (b[2] - b[0] + extra) * (b[3] - b[1] + extra)  # noqa: E731
    remaining = sorted(range(len(boxes)), key=lambda i: -scores[i])
    keep = []
    while remaining:
        best = remaining.pop(0)
        keep.append(best)
        survivors = []
        for other in remaining:
            a, b = boxes[best], boxes[other]
            inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + extra) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + extra)
            overlap = inter / min(area(a), area(b)) if mode == "min" else inter / (area(a) + area(b) - inter)
            if groups[other] != groups[best] or overlap <= threshold:
                survivors.append(other)
        remaining = survivors
    return keep


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_against_brute_force(seed):
    generator = torch.Generator().manual_seed(seed)
    top_left = torch.rand(60, 2, generator=generator) * 80
    boxes = torch.cat([top_left, top_left + 5 + torch.rand(60, 2, generator=generator) * 30], 1)
    scores = torch.rand(60, generator=generator)
    groups = torch.randint(0, 2, (60,), generator=generator)
    for threshold in (0.3, 0.5, 0.7):
        assert nms_min(boxes, scores, groups, threshold).tolist() == brute_force_nms(boxes, scores, groups, threshold, "min")
        assert batched_nms(boxes, scores, groups, threshold).tolist() == brute_force_nms(boxes, scores, groups, threshold, "union")
    assert nms_min(boxes[:0], scores[:0], groups[:0], 0.7).tolist() == []


def test_regress_and_square_boxes_brute_force():
    generator = torch.Generator().manual_seed(3)
    boxes = torch.cat([torch.rand(8, 2, generator=generator) * 50, 60 + torch.rand(8, 2, generator=generator) * 40,
                       torch.rand(8, 1, generator=generator)], 1)
    offsets = torch.randn(8, 4, generator=generator) * 0.1
    for plus_one in (True, False):
        moved = regress_boxes(boxes, offsets, plus_one=plus_one)
        for box, offset, result in zip(boxes.tolist(), offsets.tolist(), moved.tolist()):
            width, height = box[2] - box[0] + plus_one, box[3] - box[1] + plus_one
            expected = [box[0] + offset[0] * width, box[1] + offset[1] * height, box[2] + offset[2] * width,
                        box[3] + offset[3] * height, box[4]]
            np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-4)
    squared = square_boxes(boxes)
    for box, result in zip(boxes.tolist(), squared.tolist()):
        side = max(box[2] - box[0], box[3] - box[1])
        centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        expected = [centre[0] - side / 2, centre[1] - side / 2, centre[0] + side / 2, centre[1] + side / 2, box[4]]
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-4)


def test_crop_patches_uses_clipped_one_based_boxes():
    image = torch.arange(2 * 3 * 60 * 70, dtype=torch.float32).reshape(2, 3, 60, 70)
    boxes = torch.tensor([[10.7, 20.2, 33.9, 43.5],   # ints 10..33 -> columns 9:33, rows 19:43: 24x24, no resampling
                          [-5.0, -8.0, 18.0, 15.0],   # clipped at the top-left: columns 0:18, rows 0:15
                          [80.0, 10.0, 90.0, 20.0]])  # outside the image: no patch
    image_index = torch.tensor([1, 0, 0])
    patches, valid = crop_patches(image, boxes, image_index, 24)
    assert valid.tolist() == [True, True, False] and patches.shape == (2, 3, 24, 24)
    torch.testing.assert_close(patches[0], image[1, :, 19:43, 9:33])
    torch.testing.assert_close(patches[1], F.interpolate(image[0:1, :, 0:15, 0:18], size=(24, 24), mode="area")[0])


def test_margin_box_follows_facenet_semantics():
    # margin 2 at size 48: a 92-px box grows by 2 * 92 / 46 = 4 px, 2 per side, so the face fills 46 of 48 px
    assert margin_box([100.0, 50.0, 192.0, 142.0], size=48, margin=2, height=300, width=400) == (98, 48, 194, 144)
    assert margin_box([100.6, 50.2, 192.9, 142.7], size=48, margin=0, height=300, width=400) == (100, 50, 192, 142)
    assert margin_box([-3.0, 5.0, 45.0, 305.0], size=48, margin=2, height=300, width=40) == (0, 0, 40, 300)


# ------------------------------------------------------------------------------------ fallback, errors
def test_center_crop_is_the_largest_centred_square():
    frame = np.zeros((90, 160, 3), np.uint8)
    frame[:, 35:125] = (200, 30, 90)  # exactly the centred 90x90 square
    np.testing.assert_array_equal(center_crop(frame, 48), np.broadcast_to(np.uint8([200, 30, 90]), (48, 48, 3)))
    rng = np.random.default_rng(0)
    for height, width in ((90, 160), (161, 75), (37, 37), (20, 30)):
        frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        manual = np.asarray(Image.fromarray(frame[top:top + side, left:left + side]).resize((48, 48), Image.BILINEAR))
        assert np.abs(center_crop(frame, 48).astype(int) - manual).max() <= 1  # PIL antialiased bilinear, +-rounding


def test_cropper_without_weights_falls_back_to_centre_crop(tmp_path):
    for cropper in (FaceCropper(tmp_path, size=48, margin=2), FaceCropper(None), FaceCropper(tmp_path / "absent")):
        assert not cropper.has_detector
    cropper = FaceCropper(tmp_path, size=32)
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((40, 64, 3), (50, 30, 3), (40, 64, 3))]
    crop, found = cropper.crop(frames[0])
    assert not found and crop.dtype == np.uint8
    np.testing.assert_array_equal(crop, center_crop(frames[0], 32))
    crops, found = cropper.crop_batch(frames)
    assert crops.shape == (3, 32, 32, 3) and crops.dtype == np.uint8 and found.dtype == bool and not found.any()
    for frame, crop in zip(frames, crops):
        np.testing.assert_array_equal(crop, center_crop(frame, 32))
    with pytest.raises(InputError, match="uint8 RGB"):
        cropper.crop(frames[0].astype(np.float32))


def test_missing_or_corrupt_weights_give_one_input_error(tmp_path):
    with pytest.raises(InputError, match=f"{tmp_path}.*pnet.pt missing.*rnet.pt missing.*onet.pt missing.*make weights"):
        MTCNN.from_weights(tmp_path)
    folder = write_weights(tmp_path / "weights")
    MTCNN.from_weights(folder)  # random but well-formed: loads
    (folder / "rnet.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=f"{folder}.*rnet.pt unreadable"):
        MTCNN.from_weights(folder)
    torch.save(random_state_dict("pnet"), folder / "onet.pt")  # wrong keys
    with pytest.raises(InputError, match="rnet.pt unreadable.*onet.pt unreadable"):
        FaceCropper(folder)
    (folder / "rnet.pt").unlink()
    (folder / "onet.pt").unlink()
    with pytest.raises(InputError, match="rnet.pt missing"):  # a partial folder is an error, not a silent fallback
        FaceCropper(folder)


def test_cascade_plumbing_with_random_weights(tmp_path):
    """Thresholds 0 let random nets' boxes through every stage: shapes, order, and batch == single."""
    detector = MTCNN.from_weights(write_weights(tmp_path, zero_box_offsets=True), thresholds=(0.0, 0.0, 0.0), min_face_size=24)
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (2, 52, 60, 3), dtype=np.uint8)
    boxes = detector.detect(frames[0])
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 5 and len(boxes) > 0
    assert np.all(np.diff(boxes[:, 4]) <= 0) and np.all((boxes[:, 4] >= 0) & (boxes[:, 4] <= 1))
    boxes_with_points, points = detector.detect(frames[0], landmarks=True)
    np.testing.assert_array_equal(boxes_with_points, boxes)
    assert points.shape == (len(boxes), 5, 2)
    batch = detector.detect_batch(frames)
    np.testing.assert_allclose(batch[0], boxes, atol=1e-4)
    np.testing.assert_allclose(batch[1], detector.detect(frames[1]), atol=1e-4)
    assert detector.detect(np.zeros((15, 15, 3), np.uint8)).shape == (0, 5)  # smaller than the minimum face


# ---------------------------------------------------------------------------------- real weights (optional)
def drawn_face_frame(face_size=100, height=240, width=320, left=150, top=60):
    """A grey-blue frame with a cartoon face (skin ellipse, hair, eyes, brows, nose, mouth, slight blur);
    the real MTCNN finds it with p ~0.99. -> frame, the face ellipse's box."""
    image = Image.new("RGB", (width, height), (90, 110, 140))
    draw = ImageDraw.Draw(image)
    cx, cy, r = left + face_size // 2, top + face_size // 2, face_size // 2
    draw.ellipse([cx - r * 0.8, cy - r, cx + r * 0.8, cy + r], fill=(224, 172, 140))
    draw.ellipse([cx - r * 0.82, cy - r * 1.05, cx + r * 0.82, cy - r * 0.35], fill=(60, 40, 30))
    for side in (-1, 1):
        eye_x = cx + side * r * 0.35
        draw.ellipse([eye_x - r * 0.16, cy - r * 0.12, eye_x + r * 0.16, cy + r * 0.04], fill=(250, 250, 250))
        draw.ellipse([eye_x - r * 0.07, cy - r * 0.1, eye_x + r * 0.07, cy + r * 0.03], fill=(40, 30, 30))
        draw.line([eye_x - r * 0.2, cy - r * 0.25, eye_x + r * 0.2, cy - r * 0.22], fill=(60, 40, 30), width=max(2, r // 12))
    draw.polygon([(cx, cy), (cx - r * 0.1, cy + r * 0.3), (cx + r * 0.1, cy + r * 0.3)], fill=(200, 140, 115))
    draw.chord([cx - r * 0.3, cy + r * 0.35, cx + r * 0.3, cy + r * 0.65], 0, 180, fill=(170, 60, 60))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(1.5))).copy(), (cx - r * 0.8, cy - r, cx + r * 0.8, cy + r)


def box_iou(a, b):
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.skipif(not (REAL_WEIGHTS / "onet.pt").is_file(), reason="no weights/mtcnn (run `make weights`)")
def test_real_weights_find_a_drawn_face_and_nothing_in_a_blank_frame():
    cropper = FaceCropper(REAL_WEIGHTS, size=48, margin=2)
    assert cropper.has_detector
    frame, face_box = drawn_face_frame()
    boxes = cropper.detector.detect(frame)
    assert len(boxes) == 1 and boxes[0, 4] > 0.9 and box_iou(boxes[0], face_box) > 0.5
    crop, found = cropper.crop(frame)
    assert found and crop.shape == (48, 48, 3)
    x1, y1, x2, y2 = margin_box(boxes[0], size=48, margin=2, height=240, width=320)
    manual = np.asarray(Image.fromarray(frame[y1:y2, x1:x2]).resize((48, 48), Image.BILINEAR))
    assert np.abs(crop.astype(int) - manual).max() <= 1
    blank = np.full((240, 320, 3), 128, np.uint8)
    assert cropper.detector.detect(blank).shape == (0, 5)
    crops, found = cropper.crop_batch([frame, blank, frame[:, 100:]])  # a third size, face kept whole
    assert found.tolist() == [True, False, True]
    np.testing.assert_array_equal(crops[0], crop)
    np.testing.assert_array_equal(crops[1], center_crop(blank, 48))
