"""MTCNN face detector (Zhang et al. 2016) in plain PyTorch, and the face cropper the video systems use.

    from preprocess.mtcnn import FaceCropper, MTCNN
    cropper = FaceCropper(weights_dir="weights/mtcnn", size=48, margin=2, device="cpu")
    crop, found = cropper.crop(rgb)             # uint8 (H, W, 3) -> uint8 (48, 48, 3), found=False: centre crop
    crops, found = cropper.crop_batch(frames)   # uint8 (N, 48, 48, 3), bool (N,)
    boxes = MTCNN.from_weights("weights/mtcnn").detect(rgb)   # float32 (K, 5): x1, y1, x2, y2, probability

Weights: the P-, R- and O-Net state dicts that the PyPI package facenet-pytorch ships
(`facenet_pytorch/data/{pnet,rnet,onet}.pt`, MIT licence); `make weights` copies them to weights/mtcnn/
without installing that package. The nets below use the same parameter names, so the files load with
`torch.load(..., weights_only=True)` and `load_state_dict(strict=True)`.

The cascade follows facenet-pytorch's `detect_face` step for step (pyramid of scales with min face 20 px
and factor 0.709, P-Net proposals, per-scale then global NMS, box regression, squaring, R-Net on 24x24
and O-Net on 48x48 patches, thresholds 0.6/0.7/0.7, final "min"-overlap NMS), so boxes match its
output; one fix: a box whose clipped patch is empty is dropped with its row, where the reference let its
patch and box lists go out of step. Without weights, `FaceCropper` falls back to the largest centred
square of the frame (the "true centre crop").
"""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

from common import InputError, resolve_device

NET_NAMES = ("pnet", "rnet", "onet")


# ----------------------------------------------------------------------------------------------- nets
class PNet(nn.Module):
    """Proposal net, fully convolutional: (B, 3, H, W) -> box offsets (B, 4, h, w) and face/non-face
    softmax (B, 2, h, w), one cell per 12x12 window at stride 2 (h = ceil((H - 2) / 2) - 4)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / non-face
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box offsets

    def forward(self, images):
        hidden = F.max_pool2d(self.prelu1(self.conv1(images)), 2, 2, ceil_mode=True)
        hidden = self.prelu3(self.conv3(self.prelu2(self.conv2(hidden))))
        return self.conv4_2(hidden), torch.softmax(self.conv4_1(hidden), dim=1)


def flatten_wh_c(features):
    """(B, C, H, W) -> (B, W*H*C) in (W, H, C) order: the layout the dense layers were trained on
    (the weights come from Caffe/TensorFlow via facenet-pytorch, which permutes the same way)."""
    return features.permute(0, 3, 2, 1).reshape(features.shape[0], -1)


class RNet(nn.Module):
    """Refinement net: (N, 3, 24, 24) patches -> box offsets (N, 4) and face softmax (N, 2)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)  # 576 = 3 * 3 * 64
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, patches):
        hidden = F.max_pool2d(self.prelu1(self.conv1(patches)), 3, 2, ceil_mode=True)   # (N, 28, 11, 11)
        hidden = F.max_pool2d(self.prelu2(self.conv2(hidden)), 3, 2, ceil_mode=True)    # (N, 48, 4, 4)
        hidden = self.prelu3(self.conv3(hidden))                                         # (N, 64, 3, 3)
        hidden = self.prelu4(self.dense4(flatten_wh_c(hidden)))                          # (N, 128)
        return self.dense5_2(hidden), torch.softmax(self.dense5_1(hidden), dim=1)


class ONet(nn.Module):
    """Output net: (N, 3, 48, 48) patches -> box offsets (N, 4), five landmarks (N, 10: x1..x5, y1..y5
    as fractions of the box) and face softmax (N, 2)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)  # 1152 = 3 * 3 * 128
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, patches):
        hidden = F.max_pool2d(self.prelu1(self.conv1(patches)), 3, 2, ceil_mode=True)   # (N, 32, 23, 23)
        hidden = F.max_pool2d(self.prelu2(self.conv2(hidden)), 3, 2, ceil_mode=True)    # (N, 64, 10, 10)
        hidden = F.max_pool2d(self.prelu3(self.conv3(hidden)), 2, 2, ceil_mode=True)    # (N, 64, 4, 4)
        hidden = self.prelu4(self.conv4(hidden))                                         # (N, 128, 3, 3)
        hidden = self.prelu5(self.dense5(flatten_wh_c(hidden)))                          # (N, 256)
        return self.dense6_2(hidden), self.dense6_3(hidden), torch.softmax(self.dense6_1(hidden), dim=1)


# -------------------------------------------------------------------------------------- box helpers
def pyramid_scales(height, width, *, min_face_size=20, factor=0.709):
    """Image scales at which P-Net's 12-px window sees faces from `min_face_size` px up to the whole
    shorter side: 12/min_face_size, times `factor` while the scaled shorter side stays >= 12 px."""
    scale = 12.0 / min_face_size
    shorter = min(height, width) * scale
    scales = []
    while shorter >= 12:
        scales.append(scale)
        scale *= factor
        shorter *= factor
    return scales


def pnet_proposals(offsets, face_prob, scale, threshold):
    """P-Net maps at one scale -> candidate boxes in original-image pixels.

    offsets (B, 4, h, w), face_prob (B, h, w) -> boxes (K, 9): x1, y1, x2, y2, score, 4 offsets, and
    image_index (K,). Cell (row, col) covers the 12x12 window at (2 col, 2 row) of the scaled image."""
    image_index, rows, cols = torch.nonzero(face_prob >= threshold, as_tuple=True)
    cell_xy = torch.stack([cols, rows], dim=1).to(offsets.dtype)                     # (K, 2)
    top_left = torch.floor((2 * cell_xy + 1) / scale)
    bottom_right = torch.floor((2 * cell_xy + 12) / scale)
    score = face_prob[image_index, rows, cols].unsqueeze(1)
    box_offsets = offsets.permute(0, 2, 3, 1)[image_index, rows, cols]                # (K, 4)
    return torch.cat([top_left, bottom_right, score, box_offsets], dim=1), image_index


def regress_boxes(boxes, offsets, *, plus_one=True):
    """Move each box edge by offset * box size. boxes (K, >=4), offsets (K, 4) -> a new (K, ...) tensor.
    Sizes are x2 - x1 + 1 (the R-/O-Net convention) or x2 - x1 (P-Net stage, plus_one=False)."""
    extra = 1.0 if plus_one else 0.0
    width = boxes[:, 2] - boxes[:, 0] + extra
    height = boxes[:, 3] - boxes[:, 1] + extra
    moved = boxes.clone()
    moved[:, :4] = boxes[:, :4] + offsets * torch.stack([width, height, width, height], dim=1)
    return moved


def square_boxes(boxes):
    """Grow the shorter side of each box about its centre to make it square; a new tensor."""
    width = boxes[:, 2] - boxes[:, 0]
    height = boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(width, height)
    squared = boxes.clone()
    squared[:, 0] = boxes[:, 0] + (width - side) * 0.5
    squared[:, 1] = boxes[:, 1] + (height - side) * 0.5
    squared[:, 2] = squared[:, 0] + side
    squared[:, 3] = squared[:, 1] + side
    return squared


def nms_min(boxes, scores, group, threshold):
    """Greedy NMS where overlap = intersection / smaller area (inclusive pixel areas), within each group:
    the O-Net stage's "Min" rule, which also removes a small box inside a larger one. -> kept indices,
    highest score first."""
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    offset = group.to(boxes.dtype)[:, None] * (boxes.max() + 1)  # separates groups in space
    shifted = boxes + offset
    area = (shifted[:, 2] - shifted[:, 0] + 1) * (shifted[:, 3] - shifted[:, 1] + 1)
    order = torch.argsort(scores, descending=True, stable=True)
    keep = []
    while len(order) > 0:
        best, rest = order[0], order[1:]
        keep.append(best)
        top_left = torch.maximum(shifted[best, :2], shifted[rest, :2])
        bottom_right = torch.minimum(shifted[best, 2:], shifted[rest, 2:])
        overlap_wh = (bottom_right - top_left + 1).clamp(min=0)
        intersection = overlap_wh[:, 0] * overlap_wh[:, 1]
        overlap = intersection / torch.minimum(area[best], area[rest])
        order = rest[overlap <= threshold]
    return torch.stack(keep)


def crop_patches(images, boxes, image_index, size):
    """Cut each box out of its image (clipped to the image, as facenet-pytorch does) and resize to
    size x size with area averaging. images (B, 3, H, W) float -> patches (K', 3, size, size) and the
    bool mask (K,) of boxes whose clipped patch was non-empty."""
    height, width = images.shape[2:]
    corners = boxes[:, :4].trunc().long().cpu()
    x1 = corners[:, 0].clamp(min=1) - 1  # the 1-based MATLAB convention of the original code
    y1 = corners[:, 1].clamp(min=1) - 1
    x2 = corners[:, 2].clamp(max=width)
    y2 = corners[:, 3].clamp(max=height)
    valid = (x2 > x1) & (y2 > y1)
    image_index = image_index.cpu()
    patches = [F.interpolate(images[image_index[k], None, :, y1[k]:y2[k], x1[k]:x2[k]], size=(size, size), mode="area")
               for k in torch.nonzero(valid).flatten().tolist()]
    empty = images.new_zeros(0, 3, size, size)
    return (torch.cat(patches) if patches else empty), valid.to(boxes.device)


def normalise_for_mtcnn(images):
    return (images - 127.5) * 0.0078125


# ---------------------------------------------------------------------------------------- detector
class MTCNN(nn.Module):
    """The three-stage cascade. `detect(rgb)` -> float32 (K, 5) boxes x1, y1, x2, y2, probability in
    original-image pixels, highest probability first; `detect_batch` for several same-size frames."""

    def __init__(self, *, min_face_size=20, thresholds=(0.6, 0.7, 0.7), factor=0.709):
        super().__init__()
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        self.min_face_size = min_face_size
        self.thresholds = tuple(thresholds)
        self.factor = factor
        self.eval()

    @classmethod
    def from_weights(cls, weights_dir, *, device="cpu", **settings):
        """Load pnet.pt, rnet.pt, onet.pt (facenet-pytorch state dicts) from `weights_dir`; any missing or
        unreadable file -> one InputError naming the folder and each bad file."""
        weights_dir = Path(weights_dir)
        detector = cls(**settings)
        problems = []
        for name in NET_NAMES:
            path = weights_dir / f"{name}.pt"
            if not path.is_file():
                problems.append(f"{name}.pt missing")
                continue
            try:
                state_dict = torch.load(path, map_location="cpu", weights_only=True)
                getattr(detector, name).load_state_dict(state_dict, strict=True)
            except Exception as error:  # pickle errors, wrong keys or shapes: all mean "not these weights"
                problems.append(f"{name}.pt unreadable ({type(error).__name__}: {str(error).splitlines()[0][:120]})")
        if problems:
            raise InputError(f"{weights_dir}: MTCNN weights not usable: {'; '.join(problems)} "
                             "(run `make weights` to collect them from the facenet-pytorch wheel)")
        return detector.to(resolve_device(str(device)))

    @property
    def device(self):
        return self.pnet.conv1.weight.device

    def detect(self, rgb, *, landmarks=False):
        """rgb uint8 (H, W, 3) -> boxes float32 (K, 5) [and landmarks float32 (K, 5, 2) as (x, y)]."""
        return self.detect_batch(check_rgb(rgb)[None], landmarks=landmarks)[0]

    @torch.no_grad()
    def detect_batch(self, frames, *, landmarks=False):
        """frames uint8 (B, H, W, 3) or a list of same-size (H, W, 3) frames -> a list of B `detect` results."""
        frames = np.stack([check_rgb(frame) for frame in frames])  # a fresh writable (B, H, W, 3) copy
        images = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float()  # (B, 3, H, W), channels-last strides
        batch_size = images.shape[0]
        boxes, image_index = self._pnet_stage(images)
        if len(boxes):
            boxes, image_index = self._rnet_stage(images, boxes, image_index)
        points = boxes.new_zeros(0, 5, 2)
        if len(boxes):
            boxes, image_index, points = self._onet_stage(images, boxes, image_index)
        boxes, points, image_index = boxes.float().cpu().numpy(), points.float().cpu().numpy(), image_index.cpu().numpy()
        results = []
        for index in range(batch_size):
            mine = image_index == index
            results.append((boxes[mine], points[mine]) if landmarks else boxes[mine])
        return results

    def _pnet_stage(self, images):
        """Pyramid -> P-Net -> NMS 0.5 per scale, NMS 0.7 over scales -> regressed, squared boxes (K, 5)."""
        height, width = images.shape[2:]
        all_boxes, all_index = [], []
        for scale in pyramid_scales(height, width, min_face_size=self.min_face_size, factor=self.factor):
            scaled = F.interpolate(images, size=(int(height * scale + 1), int(width * scale + 1)), mode="area")
            offsets, face_prob = self.pnet(normalise_for_mtcnn(scaled))
            boxes, image_index = pnet_proposals(offsets, face_prob[:, 1], scale, self.thresholds[0])
            keep = batched_nms(boxes[:, :4], boxes[:, 4], image_index, 0.5)
            all_boxes.append(boxes[keep])
            all_index.append(image_index[keep])
        if not all_boxes:  # frame smaller than the minimum face
            return images.new_zeros(0, 5), torch.zeros(0, dtype=torch.long, device=images.device)
        boxes, image_index = torch.cat(all_boxes), torch.cat(all_index)
        keep = batched_nms(boxes[:, :4], boxes[:, 4], image_index, 0.7)
        boxes, image_index = boxes[keep], image_index[keep]
        boxes = regress_boxes(boxes[:, :5], boxes[:, 5:9], plus_one=False)
        return square_boxes(boxes), image_index

    def _rnet_stage(self, images, boxes, image_index):
        patches, valid = crop_patches(images, boxes, image_index, 24)
        boxes, image_index = boxes[valid], image_index[valid]
        offsets, face_prob = self.rnet(normalise_for_mtcnn(patches))
        passed = face_prob[:, 1] > self.thresholds[1]
        boxes = torch.cat([boxes[passed, :4], face_prob[passed, 1:2]], dim=1)
        image_index, offsets = image_index[passed], offsets[passed]
        keep = batched_nms(boxes[:, :4], boxes[:, 4], image_index, 0.7)
        return square_boxes(regress_boxes(boxes[keep], offsets[keep])), image_index[keep]

    def _onet_stage(self, images, boxes, image_index):
        patches, valid = crop_patches(images, boxes, image_index, 48)
        boxes, image_index = boxes[valid], image_index[valid]
        offsets, landmark_fractions, face_prob = self.onet(normalise_for_mtcnn(patches))
        passed = face_prob[:, 1] > self.thresholds[2]
        boxes = torch.cat([boxes[passed, :4], face_prob[passed, 1:2]], dim=1)
        image_index, offsets, landmark_fractions = image_index[passed], offsets[passed], landmark_fractions[passed]
        width = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        height = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        points_x = width * landmark_fractions[:, :5] + boxes[:, 0:1] - 1
        points_y = height * landmark_fractions[:, 5:] + boxes[:, 1:2] - 1
        points = torch.stack([points_x, points_y], dim=2)                               # (K, 5, 2)
        boxes = regress_boxes(boxes, offsets)
        keep = nms_min(boxes[:, :4], boxes[:, 4], image_index, 0.7)
        return boxes[keep], image_index[keep], points[keep]


# ------------------------------------------------------------------------------------------ cropper
def check_rgb(rgb):
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
        raise InputError(f"face crop: expected a uint8 RGB frame (H, W, 3), got {rgb.dtype} {rgb.shape}")
    return rgb


def resize_uint8(rgb, size):
    """uint8 (h, w, 3) -> uint8 (size, size, 3): bilinear with antialiasing (PIL-like; good for both
    shrinking and enlarging), rounded."""
    image = torch.from_numpy(np.array(rgb, order="C")).permute(2, 0, 1)[None].float()  # (1, 3, h, w)
    resized = F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def center_square(height, width):
    """(x1, y1, x2, y2) of the largest centred square of a height x width frame."""
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return left, top, left + side, top + side


def center_crop(rgb, size):
    """The fallback face: the largest centred square of the frame, resized to size x size."""
    x1, y1, x2, y2 = center_square(*check_rgb(rgb).shape[:2])
    return resize_uint8(rgb[y1:y2, x1:x2], size)


def margin_box(box, *, size, margin, height, width):
    """facenet-pytorch's extract_face box: `margin` is in pixels of the final size x size crop, so the
    face box grows by margin * box_size / (size - margin) in total, half per side, then is clipped to
    the frame and truncated to ints. -> (x1, y1, x2, y2)."""
    grow_x = margin * (box[2] - box[0]) / (size - margin)
    grow_y = margin * (box[3] - box[1]) / (size - margin)
    return (int(max(box[0] - grow_x / 2, 0)), int(max(box[1] - grow_y / 2, 0)),
            int(min(box[2] + grow_x / 2, width)), int(min(box[3] + grow_y / 2, height)))


def largest_box(boxes):
    """The row of (K, 5) boxes with the largest area (facenet-pytorch's select_largest)."""
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return boxes[int(np.argmax(areas))]


class FaceCropper:
    """Largest face of a frame as a size x size uint8 crop, or the centre crop when no detector or no face.

    weights_dir without the three weight files -> `has_detector` False and centre crops only; files
    present but unusable -> InputError (a broken `make weights` should not silently turn off faces)."""

    def __init__(self, weights_dir="weights/mtcnn", *, size=48, margin=2, device="cpu", min_face_size=20,
                 thresholds=(0.6, 0.7, 0.7), factor=0.709):
        self.size, self.margin = size, margin
        self.detector = None
        present = weights_dir is not None and any((Path(weights_dir) / f"{name}.pt").exists() for name in NET_NAMES)
        if present:
            self.detector = MTCNN.from_weights(weights_dir, device=device, min_face_size=min_face_size,
                                               thresholds=thresholds, factor=factor)

    @property
    def has_detector(self):
        return self.detector is not None

    def crop_box(self, rgb, boxes):
        """The crop for already-detected boxes (K, 5): (crop, found)."""
        height, width = rgb.shape[:2]
        if len(boxes):
            x1, y1, x2, y2 = margin_box(largest_box(boxes), size=self.size, margin=self.margin, height=height, width=width)
            if x2 > x1 and y2 > y1:
                return resize_uint8(rgb[y1:y2, x1:x2], self.size), True
        return center_crop(rgb, self.size), False

    def crop(self, rgb):
        """rgb uint8 (H, W, 3) -> (uint8 (size, size, 3), found)."""
        rgb = check_rgb(rgb)
        boxes = self.detector.detect(rgb) if self.detector is not None else np.zeros((0, 5), np.float32)
        return self.crop_box(rgb, boxes)

    def crop_batch(self, frames, *, detect_batch_size=8):
        """A list of uint8 (H, W, 3) frames (sizes may differ) -> uint8 (N, size, size, 3), bool (N,).
        Same-size frames go through the detector together, `detect_batch_size` at a time."""
        frames = [check_rgb(frame) for frame in frames]
        crops = np.zeros((len(frames), self.size, self.size, 3), np.uint8)
        found = np.zeros(len(frames), bool)
        by_shape = {}
        for index, frame in enumerate(frames):
            by_shape.setdefault(frame.shape, []).append(index)
        chunks = [indices[start:start + detect_batch_size] for indices in by_shape.values()
                  for start in range(0, len(indices), detect_batch_size)]
        for indices in chunks:
            if self.detector is not None:
                all_boxes = self.detector.detect_batch(np.stack([frames[i] for i in indices]))
            else:
                all_boxes = [np.zeros((0, 5), np.float32)] * len(indices)
            for index, boxes in zip(indices, all_boxes):
                crops[index], found[index] = self.crop_box(frames[index], boxes)
        return crops, found
