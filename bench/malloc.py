"""CPU training step with glibc's default malloc against common.keep_freed_memory (freed heap kept for reuse), in
one run: the RAVDESS audio model (train_av -mod a with its defaults) on a batch of 3-s clips.

    python bench/malloc.py                        # batch 32, 12 timed steps per process, 3 rounds
    python bench/malloc.py --threads 1 --rounds 5

Each round starts one fresh process per setting (mallopt cannot be undone cleanly), the two settings taking
turns so that other load hits both alike; a process times --steps training steps (forward, backward, AdamW)
after 2 warm-up steps and reports seconds per step, its minor page faults per step and its peak RSS. Prints
key=value lines, keep_freed_memory_speedup (default s/step / kept s/step, median over rounds) last.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def time_steps(keep, batch, steps):
    sys.path.insert(0, ROOT)
    import torch
    import torch.nn.functional as F

    import common
    import train_av
    kept = common.keep_freed_memory(torch.device("cpu")) if keep else False
    torch.manual_seed(0)
    model = train_av.build_model(vars(train_av.build_parser().parse_args(["-mod", "a"])), 8)  # train_av's defaults
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch_input = {"audio": torch.randn(batch, 48000), "audio_lengths": torch.full((batch,), 48000)}
    labels = torch.randint(0, 8, (batch,))
    model.train()

    def step():
        loss = F.cross_entropy(model(batch_input), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    faults, started = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - started) / steps
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"kept": kept, "s_per_step": seconds, "faults_per_step": (usage.ru_minflt - faults) / steps, "peak_rss_mb": usage.ru_maxrss / 1024}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="3-s clips per step (default %(default)s)")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per process (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="processes per setting, alternating (default %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the processes; 0 = torch's default (default %(default)s)")
    parser.add_argument("--child", choices=["default", "kept"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(time_steps(args.child == "kept", args.batch, args.steps)))
        return
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    results = {"default": [], "kept": []}
    for _ in range(args.rounds):
        for setting in results:
            command = [sys.executable, __file__, "--child", setting, "--batch", str(args.batch), "--steps", str(args.steps)]
            output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
            results[setting].append(json.loads(output.strip().splitlines()[-1]))
    print(f"load_average_1min={os.getloadavg()[0]:.2f} threads={args.threads or 'default'} batch={args.batch}")
    for setting, runs in results.items():
        for key in ("s_per_step", "faults_per_step", "peak_rss_mb"):
            print(f"{setting}_{key}={statistics.median(run[key] for run in runs):.3f}")
    speedup = statistics.median(results["default"][k]["s_per_step"] / results["kept"][k]["s_per_step"] for k in range(args.rounds))
    print(f"kept_applied={all(run['kept'] for run in results['kept'])}")
    print(f"keep_freed_memory_speedup={speedup:.3f}")


if __name__ == "__main__":
    main()
