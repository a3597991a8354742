"""Speed of the hand-written models.lstm.LSTM against torch.nn.LSTM, measured in the same run.

    python bench/lstm.py                      # T=100, B=32, input=hidden=256, 1 layer, CPU, float32
    python bench/lstm.py --threads 1 --repeats 20

Inference is the forward pass under torch.no_grad(); training is forward + backward of output.sum() with
respect to the input and all weights. Each figure is the median of --repeats timed runs after warm-up.
Prints key=value lines; the ratios are ours / nn (lower is better), the training ratio last.
"""
import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from models.lstm import LSTM  # noqa: E402


def median_ms(runs, repeats, warmup=3):
    """{name: callable} -> {name: median milliseconds}; the callables take turns, so that load from other
    processes on the machine hits all of them alike."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(seconds) for name, seconds in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=100, help="time steps T (default %(default)s)")
    parser.add_argument("--batch", type=int, default=32, help="sequences per batch B (default %(default)s)")
    parser.add_argument("--hidden", type=int, default=256, help="hidden and input size (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs, the median counts (default %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads, 0 = torch's default (default %(default)s)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    reference = nn.LSTM(args.hidden, args.hidden, batch_first=True)
    ours = LSTM(args.hidden, args.hidden)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(args.batch, args.seq_len, args.hidden, requires_grad=True)

    def infer(model):
        with torch.no_grad():
            model(x)

    def train(model):
        output, _ = model(x)
        output.sum().backward()
        x.grad = None
        model.zero_grad(set_to_none=True)

    timings = {}
    for mode, step in (("infer", infer), ("train", train)):
        runs = {f"lstm_{mode}_ms_{name}": (lambda model=model: step(model))
                for name, model in (("nn", reference), ("ours", ours))}
        timings.update(median_ms(runs, args.repeats))
    print(f"threads={torch.get_num_threads()} seq_len={args.seq_len} batch={args.batch} hidden={args.hidden}")
    for key, value in timings.items():
        print(f"{key}={value:.2f}")
    print(f"lstm_infer_ratio={timings['lstm_infer_ms_ours'] / timings['lstm_infer_ms_nn']:.2f}")
    print(f"lstm_train_ratio={timings['lstm_train_ms_ours'] / timings['lstm_train_ms_nn']:.2f}")


if __name__ == "__main__":
    main()
