"""DDP under torchrun on the CPU (gloo): train_meld.py -mod ta, and -mod t --text-joint, on its tiny synthetic MELD tree, 2 processes vs 1.

Why the two runs must agree, and to what tolerance:
- Same samples per step: both runs draw the same seeded dialogue order each epoch; the 2-process run splits every
  global --batch-size 4 batch of dialogues rank-strided (2 + 2 dialogues; the last batch of 2 gives 1 + 1), so
  the union of the ranks' batches is exactly the 1-process batch.
- Same loss: dialogues differ in length, so the ranks hold different numbers of utterances. Each rank's loss is
  its class-weighted sum * world_size / (weight sum all-reduced over the ranks) (common.global_mean), so DDP's
  gradient AVERAGE equals the gradient of the 1-process class-weighted mean over the global batch exactly (a
  plain per-rank mean would not: the average of per-rank means is the global mean only for equal-sized shards).
- No per-rank randomness or batch statistics: --dropout 0, and the MELD model has LayerNorm, no BatchNorm.
- What is left is float32 summation order (the all-reduce adds two partial gradients): after 6 AdamW steps the
  weights agree to ~6e-8; the test allows ATOL = 1e-6 and checks that training moved the weights by far more
  (> 100 * ATOL), so equality is not trivially true. One slice is left out: the key part of the attention's
  in_proj_bias. Its true gradient is exactly zero (adding q.b_k to every score of a query leaves the softmax
  unchanged), so both runs update it with Adam-normalised rounding noise (~lr per step, 6e-5 apart here). AdamW is almost invariant to a constant gradient scale,
  so the Adam moments in last.pt (exp_avg = running mean of the gradients, exp_avg_sq) are compared too: a
  gradient summed instead of averaged over the ranks would double exp_avg and fail the test.
The 2-process run has its own empty --cache, so it also exercises the sharded feature extraction (each rank
computes its share of the per-clip audio features and of the per-split text arrays) before training.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertModel

import train_meld
from common import load_checkpoint
from models.meld_emotion import MELDEmotionClassifier
from processes import free_port
from preprocess.fixtures.meld import FIXTURE_WORDS, make_meld
from preprocess.meld import EMOTIONS

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-6
FLAGS = ["-mod", "ta", "--hidden", "8", "--d-model", "16", "--heads", "2", "--dropout", "0", "--batch-size", "4",
         "--epochs", "2", "--lr", "3e-3", "--device", "cpu", "--seed", "3"]


def tiny_bert(folder, dropout=0.1):
    """A random-weight 1-layer BERT (hidden 32) with a WordPiece vocabulary of the fixture's words."""
    from transformers import BertConfig, BertModel, BertTokenizer
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(FIXTURE_WORDS))]
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64, hidden_dropout_prob=dropout,
                         attention_probs_dropout_prob=dropout)).save_pretrained(folder)
    return folder


def train_once_and_under_torchrun(common, tmp_path):
    """train_meld.py with the flags `common`: in this process (cache1 -> one/) and as 2 torchrun processes
    (cache2 -> two/); returns the torchrun run's CompletedProcess, checked to have exited 0."""
    train_meld.main([*common, "--cache", str(tmp_path / "cache1"), "--out", str(tmp_path / "one")])
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                           f"--master_addr=127.0.0.1", f"--master_port={free_port()}", str(ROOT / "train_meld.py"),
                           *common, "--cache", str(tmp_path / "cache2"), "--out", str(tmp_path / "two")],
                          cwd=ROOT, env=environment, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_two_processes_train_the_same_weights_as_one(tmp_path):
    make_meld(tmp_path / "meld", seed=0)
    common = ["--data", str(tmp_path / "meld"), "--text-model", str(tiny_bert(tmp_path / "bert")), *FLAGS]
    done = train_once_and_under_torchrun(common, tmp_path)


    # rank 0 alone wrote the run folder, once
    for name in ("args.json", "split.json", "failures.csv", "model.pt", "last.pt", "metrics.json"):
        assert (tmp_path / "two" / name).is_file(), name
    assert done.stdout.count("run folder:") == 1 and done.stdout.count("epoch 2:") == 1, done.stdout
    # the sharded extraction wrote the same cache files as the single process
    assert sorted(p.name for p in (tmp_path / "cache2").rglob("*.npy")) == sorted(p.name for p in (tmp_path / "cache1").rglob("*.npy"))

    one, two = load_checkpoint(tmp_path / "one" / "last.pt"), load_checkpoint(tmp_path / "two" / "last.pt")
    torch.manual_seed(3)  # train_meld seeds the initial weights with --seed
    initial = MELDEmotionClassifier(input_dims=load_checkpoint(tmp_path / "one" / "model.pt")["input_dims"],
                                    num_classes=len(EMOTIONS), hidden=8, d_model=16, heads=2, dropout=0.0).state_dict()
    assert one["model"].keys() == two["model"].keys() == initial.keys()
    for state in (one["model"], two["model"], initial):  # the key bias: zero true gradient, see the docstring
        state["attention.in_proj_bias"] = torch.cat([state["attention.in_proj_bias"][:16], state["attention.in_proj_bias"][32:]])
    moved = max((one["model"][k] - initial[k]).abs().max().item() for k in initial)
    weight_gap = max((one["model"][k] - two["model"][k]).abs().max().item() for k in initial)
    moment_gap = max((a[name] - b[name]).abs().max().item() / (a[name].abs().max().item() + 1e-12)
                     for a, b in zip(one["optimizer"]["state"].values(), two["optimizer"]["state"].values())
                     for name in ("exp_avg", "exp_avg_sq"))
    print(f"max |w_1proc - w_2proc| = {weight_gap:.2e}; max |w_1proc - w_init| = {moved:.2e}; "
          f"max relative Adam-moment gap = {moment_gap:.2e}")
    assert moved > 100 * ATOL
    assert weight_gap < ATOL
    assert moment_gap < 1e-3  # a factor-2 gradient (summed, not averaged) would give 0.5 here


def test_joint_text_model_two_processes_train_the_same_weights_as_one(tmp_path):
    """--text-joint: the encoder trains inside the DDP model, so its gradients are averaged over the processes too
    (the tiny BERT without dropout, whose random masks would differ between one process and two)."""
    make_meld(tmp_path / "meld", seed=0, with_clips=False)
    common = ["--data", str(tmp_path / "meld"), "--text-model", str(tiny_bert(tmp_path / "bert", dropout=0.0)), *FLAGS,
              "-mod", "t", "--text-joint", "--text-finetune-lr", "1e-3"]
    train_once_and_under_torchrun(common, tmp_path)
    one, two = load_checkpoint(tmp_path / "one" / "last.pt")["model"], load_checkpoint(tmp_path / "two" / "last.pt")["model"]
    encoder = [k for k in one if k.startswith("encoder.model.encoder.")]
    initial = BertModel.from_pretrained(tmp_path / "bert").state_dict()
    moved = max((one[k] - initial[k.removeprefix("encoder.model.")]).abs().max().item() for k in encoder)
    weight_gap = max((one[k] - two[k]).abs().max().item() for k in one if k != "classifier.attention.in_proj_bias")
    print(f"max |w_1proc - w_2proc| = {weight_gap:.2e}; encoder max |w_1proc - w_init| = {moved:.2e}")
    assert encoder and moved > 1e-3
    assert weight_gap < 1e-5
