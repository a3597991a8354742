"""Speed of preprocess/mtcnn.py on a 720p frame, and its boxes against facenet-pytorch's own cascade.

    make weights                                   # weights/mtcnn/{pnet,rnet,onet}.pt
    python bench/mtcnn.py --image FACE.png         # any RGB photo with faces
    python bench/mtcnn.py --image FACE.png --reference DIR   # DIR: an unzipped facenet-pytorch wheel

A real face photo offline: `pip download --no-deps scikit-image` and unzip skimage/data/astronaut.png.
The reference is imported from the unzipped wheel's pure-Python files for this comparison only (never a
dependency; its package __init__ is skipped because it imports requests). The photo is compared as is
and pasted, scaled, into a grey 1280x720 frame, which is also the frame timed (best of --repeats, ours and the reference interleaved).
Prints key=value lines: faces, boxes, iou_vs_facenet (per face, matched greedily), prob_abs_diff,
ms_per_720p_frame, frames_per_s, reference_ms_per_720p_frame, speed_vs_facenet (ours / reference).
"""
import argparse
import importlib
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from preprocess.mtcnn import MTCNN  # noqa: E402


def load_reference(wheel_dir):
    """facenet-pytorch's MTCNN class from an unzipped wheel, without running its package __init__."""
    package = types.ModuleType("facenet_pytorch")
    package.__path__ = [str(Path(wheel_dir) / "facenet_pytorch")]
    sys.modules["facenet_pytorch"] = package
    return importlib.import_module("facenet_pytorch.models.mtcnn").MTCNN


def iou(box_a, box_b):
    width = max(0.0, min(box_a[2], box_b[2]) - max(box_a[0], box_b[0]))
    height = max(0.0, min(box_a[3], box_b[3]) - max(box_a[1], box_b[1]))
    inter = width * height
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    return inter / (area(box_a) + area(box_b) - inter)


def compare(ours, reference):
    """Greedy matching by IoU; -> per-face IoUs (one per reference face; 0 when unmatched) and prob diffs."""
    ious, prob_diffs, free = [], [], list(range(len(ours)))
    for ref_box in reference:
        scores = [iou(ours[i], ref_box) for i in free]
        if not scores:
            ious.append(0.0)
            continue
        best = free.pop(int(np.argmax(scores)))
        ious.append(float(max(scores)))
        prob_diffs.append(abs(float(ours[best][4]) - float(ref_box[4])))
    return ious, prob_diffs


def paste_into_720p(rgb):
    frame = np.full((720, 1280, 3), 128, np.uint8)
    scale = min(600 / rgb.shape[0], 1000 / rgb.shape[1])
    small = np.asarray(Image.fromarray(rgb).resize((int(rgb.shape[1] * scale), int(rgb.shape[0] * scale)), Image.BILINEAR))
    frame[60:60 + small.shape[0], 140:140 + small.shape[1]] = small
    return frame


def best_times(functions, repeats):
    """Min seconds of each function over `repeats` rounds, the functions interleaved within each round so
    that load from other processes hits them alike."""
    for function in functions:
        function()  # warm-up
    times = [[] for _ in functions]
    for _ in range(repeats):
        for function, spent in zip(functions, times):
            start = time.perf_counter()
            function()
            spent.append(time.perf_counter() - start)
    return [min(spent) for spent in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", required=True, help="an RGB photo with at least one face (required)")
    parser.add_argument("--weights", default="weights/mtcnn", help="folder with pnet.pt, rnet.pt, onet.pt (default %(default)s)")
    parser.add_argument("--reference", help="an unzipped facenet-pytorch wheel to compare against (default: none)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs, best kept (default %(default)s)")
    args = parser.parse_args()

    detector = MTCNN.from_weights(args.weights, device=args.device)
    photo = np.asarray(Image.open(args.image).convert("RGB"))
    frame = paste_into_720p(photo)
    reference = None
    if args.reference:
        reference = load_reference(args.reference)(select_largest=False, device=detector.device)
    for name, image in (("photo", photo), ("720p", frame)):
        boxes = detector.detect(image)
        print(f"{name}_faces={len(boxes)}")
        print(f"{name}_boxes={np.round(boxes, 1).tolist()}")
        if reference is not None:
            ref_boxes, ref_probs = reference.detect(image)
            ref = np.zeros((0, 5)) if ref_boxes is None else np.concatenate([ref_boxes, np.asarray(ref_probs)[:, None]], 1)
            ious, prob_diffs = compare(boxes, ref)
            print(f"{name}_reference_faces={len(ref)}")
            print(f"{name}_iou_vs_facenet={[round(value, 4) for value in ious]}")
            print(f"{name}_min_iou_vs_facenet={min(ious, default=float('nan')):.4f}")
            print(f"{name}_prob_abs_diff_max={max(prob_diffs, default=float('nan')):.2e}")
    sync = torch.cuda.synchronize if detector.device.type == "cuda" else (lambda: None)
    timed = [lambda: (detector.detect(frame), sync())]
    if reference is not None:
        timed.append(lambda: (reference.detect(frame), sync()))
    seconds, *reference_seconds = best_times(timed, args.repeats)
    print(f"threads={torch.get_num_threads()} device={detector.device}")
    print(f"ms_per_720p_frame={seconds * 1000:.1f}")
    print(f"frames_per_s={1 / seconds:.2f}")
    if reference is not None:
        reference_seconds = reference_seconds[0]
        print(f"reference_ms_per_720p_frame={reference_seconds * 1000:.1f}")
        print(f"speed_vs_facenet={reference_seconds / seconds:.2f}")


if __name__ == "__main__":
    main()
