"""Speed of the FV2ES visual CNN (models.fv2es.VisualCNN) with multi-branch RepVGG blocks against its fused copy
(models.repvgg.fuse_repvgg: one 3x3 conv per block), same weights, same input, eval mode, in one run.

    python bench/repvgg.py                         # 64 faces of 48x48, CPU, float32
    python bench/repvgg.py --batch 256 --threads 1 --repeats 20

Each figure is the median of --repeats timed forward passes under torch.no_grad() after warm-up; the two
models take turns so that other load on the machine hits both alike. Prints key=value lines, fused_speedup
(unfused ms / fused ms, higher is better) last.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from models.fv2es import VisualCNN  # noqa: E402
from models.repvgg import fuse_repvgg  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="faces per forward pass (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=10, help="timed passes per model (default %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    unfused = VisualCNN(64).to(device)
    with torch.no_grad():  # non-trivial BN statistics, so the fusion has something to fold
        unfused.train()
        unfused(torch.randn(32, 3, 48, 48, device=device))
    unfused.eval()
    fused = fuse_repvgg(unfused).eval()
    faces = torch.randn(args.batch, 3, 48, 48, device=device)
    models = {"unfused": unfused, "fused": fused}
    times = {name: [] for name in models}
    with torch.no_grad():
        max_difference = (unfused(faces) - fused(faces)).abs().max().item()
        for _ in range(2):
            for model in models.values():
                model(faces)
        for _ in range(args.repeats):
            for name, model in models.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                model(faces)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
    unfused_ms, fused_ms = (1000 * statistics.median(times[name]) for name in ("unfused", "fused"))
    print(f"device={device}")
    print(f"threads={torch.get_num_threads()}")
    print(f"batch={args.batch}")
    print(f"max_abs_difference={max_difference:.2e}")
    print(f"unfused_ms={unfused_ms:.2f}")
    print(f"fused_ms={fused_ms:.2f}")
    print(f"unfused_faces_per_s={args.batch / unfused_ms * 1000:.0f}")
    print(f"fused_faces_per_s={args.batch / fused_ms * 1000:.0f}")
    print(f"fused_speedup={unfused_ms / fused_ms:.2f}")


if __name__ == "__main__":
    main()
