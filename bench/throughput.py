"""Training throughput of the five train scripts on their synthetic fixtures, CPU: a regression record.

    python bench/throughput.py                    # all five, epochs 1 vs 5
    python bench/throughput.py --only av gnn --extra-epochs 8

Each script runs twice in a fresh process on the same fixture and cache (fixtures, caches and the highlight
probes are made first, untimed, in the temp dir): with 1 epoch and with 1 + --extra-epochs. The difference of
the two wall times is the cost of the extra epochs alone (start-up, feature extraction, and the final test
evaluation cancel), so epoch_s = difference / extra epochs and samples_per_s = training samples / epoch_s.
A "sample" is the unit the script's split.json lists under train (see UNITS); one epoch also includes its
validation pass, as in real training. gnn varies --gnn-epochs (the encoder stage is the same in both runs).
Prints key=value lines per script, <script>_samples_per_s last for each.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MINILM = ROOT / "weights" / "all-MiniLM-L6-v2"

UNITS = {"av": "trials (RAVDESS performances)", "highlight": "videos (250-s chunks of them)", "meld": "utterances",
         "gnn": "utterances (the GNN trains on their 4-Hz nodes, in blocks)", "fv2es": "utterances"}


def scripts(work, device):
    """{name: (fixture kinds, setup commands, train command with {epochs} and {out})}."""
    data = work / "data"
    cpu = ["--device", device]
    return {
        "av": (["ravdess"], [], ["train_av.py", "--data", data / "ravdess", "-mod", "av", "--test-actors", "6", "--val-actors", "5",
                                 "--frame-size", "64", "--cache", work / "cache" / "av", "--epochs", "{epochs}", *cpu, "--out", "{out}"]),
        "highlight": (["aihub", "ravdess"],
                      [["train_highlight.py", "--train-probes", "--probe-data", data / "ravdess", "--out", work / "probes"]],
                      ["train_highlight.py", "--data", data / "aihub", "--probes", work / "probes" / "probes.pt", "-mod", "av",
                       "--image-encoder", "cnn", "--cache", work / "cache" / "highlight", "--epochs", "{epochs}", *cpu, "--out", "{out}"]),
        "meld": (["meld"], [], ["train_meld.py", "--data", data / "meld", "-mod", "tav", "--text-model", MINILM, "--frame-size", "64",
                                "--cache", work / "cache" / "meld", "--epochs", "{epochs}", *cpu, "--out", "{out}"]),
        "gnn": (["kemdy20"], [], ["train_gnn.py", "--data", data / "kemdy20", "--stage", "all", "--val-sessions", "4", "--test-sessions", "5",
                                  "--encoder-width", "8", "--encoder-epochs", "3", "--encoder-batch-size", "32", "--block-size", "32",
                                  "--gnn-epochs", "{epochs}", *cpu, "--out", "{out}"]),
        "fv2es": (["iemocap"], [], ["train_fv2es.py", "-lr", "1e-3", "-mod", "tav", "--data", data / "iemocap" / "processed",
                                    "--text-model", MINILM, "--audio-size", "tiny", "--trans-dim", "32", "--trans-nlayers", "1", "-bs", "6",
                                    "--cache", work / "cache" / "fv2es", "-ep", "{epochs}", *cpu, "--out", "{out}"]),
    }


def run(command, **fill):
    command = [str(part).format(**fill) for part in command]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
        raise RuntimeError(f"{' '.join(command[:1])} exited {result.returncode}: {last[:300]}")
    return time.perf_counter() - start


def train_samples(out):
    split = json.loads((Path(out) / "split.json").read_text(encoding="utf-8"))
    train = split["train"] if "train" in split else split[next(iter(split))]["train"]  # av --folds: one split per fold
    if isinstance(train, dict):  # av: {"groups", "trials"}; gnn: {"sessions", "segments"}
        train = train["trials"] if "trials" in train else train["segments"]
    return len(train)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(UNITS), help="these scripts only (default: all five)")
    parser.add_argument("--extra-epochs", type=int, default=4, help="epochs the second run adds (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="the scripts' --device (default %(default)s)")
    args = parser.parse_args()
    work = Path(tempfile.gettempdir()) / "bench_throughput"
    jobs = scripts(work, args.device)
    print(f"load_average_1min={os.getloadavg()[0]:.2f} cores={os.cpu_count()}")
    for name in args.only or list(jobs):
        kinds, setup, command = jobs[name]
        try:
            for kind in kinds:
                if not (work / "data" / kind).exists():
                    subprocess.run([sys.executable, "-m", "preprocess.fixtures", kind, str(work / "data" / kind)], cwd=ROOT,
                                   check=True, capture_output=True)
            for step in setup:
                if not (work / "probes" / "probes.pt").exists():
                    run(step)
            run(command, epochs=1, out=work / "runs" / f"{name}_warm")  # features into the cache, untimed
            one = run(command, epochs=1, out=work / "runs" / f"{name}_1")
            more = run(command, epochs=1 + args.extra_epochs, out=work / "runs" / f"{name}_{1 + args.extra_epochs}")
        except (RuntimeError, subprocess.CalledProcessError) as error:
            print(f"{name}_error={str(error).splitlines()[0][:300]}")
            continue
        samples = train_samples(work / "runs" / f"{name}_1")
        epoch_s = max(more - one, 1e-9) / args.extra_epochs
        print(f"{name}_unit={UNITS[name]}")
        print(f"{name}_train_samples={samples}")
        print(f"{name}_run_1_epoch_s={one:.2f} {name}_run_{1 + args.extra_epochs}_epochs_s={more:.2f}")
        print(f"{name}_epoch_s={epoch_s:.3f}")
        print(f"{name}_samples_per_s={samples / epoch_s:.1f}", flush=True)
    print(f"load_average_1min_end={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
