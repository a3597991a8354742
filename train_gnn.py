"""KEMDy20 emotion recognition with a temporal graph network (seed 001): Empatica E4 EDA/TEMP + speech ->
one node per 4-Hz in-utterance sample -> 1-D/2-D ResNet-18 node features -> SPELL graphs per session ->
3-branch EdgeConv/SAGE GNN, on session-disjoint train/val/test splits shared by both networks.

All four stages on the release (defaults = the SPEC recipe: 100 + 100 epochs, val Sess29-32, test Sess33-40):
    python train_gnn.py --data KEMDy20/ --stage all --out runs/gnn/full
One stage at a time in the same --out (each reads the previous stage's files):
    python train_gnn.py --data KEMDy20/ --stage encoders --out runs/gnn/full   # nodes.npz, encoders.pt
    python train_gnn.py --data KEMDy20/ --stage features --out runs/gnn/full   # features.npz (N, 3, 512)
    python train_gnn.py --data KEMDy20/ --stage graphs --out runs/gnn/full     # graphs.npz
    python train_gnn.py --data KEMDy20/ --stage gnn --out runs/gnn/full        # gnn.pt, metrics.json
The tiny synthetic tree (what `make gnn` runs):
    python -m preprocess.fixtures kemdy20 data/demo/kemdy20
    python train_gnn.py --data data/demo/kemdy20 --val-sessions 4 --test-sessions 5 --encoder-width 8 \\
        --encoder-epochs 3 --encoder-batch-size 32 --block-size 32 --gnn-epochs 40 --out runs/gnn/demo
Interrupted? The same command with --resume continues a training stage from its *_last.pt and skips finished ones.
Several processes or GPUs (DDP in both training stages; batch sizes are split over the processes):
    torchrun --nproc_per_node=2 train_gnn.py --data KEMDy20/ --stage all --out runs/gnn/full

Outputs in --out: args.json, split.json (sessions and segment ids per part), utterances.csv (per-utterance
emotion, valence, arousal; train_highlight.py --train-probes --probe-data reads the same folder), failures.csv,
nodes.npz, encoders.pt (best on validation) + encoders_last.pt + encoders_metrics.json (validation only),
features.npz, graphs.npz, gnn.pt + gnn_last.pt, test_predictions.npz, metrics.json {"val", "test": {"node",
"utterance"}, "gnn_parameters", ...}. Caches (nodes, features, graphs) are reused while their inputs and
settings match (nodes.npz is keyed by the --data path and flags: delete it after changing the data). A node's
time is its E4 timestamp in ms, so "same instant" means equal timestamps. The test sessions are evaluated
once, at the end of the gnn stage. Validation uses sessions of their own (--val-sessions), never training
graphs; --select macro_f1 by default because most KEMDy20 nodes are neutral.
"""
import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from common import (InputError, UNREADABLE_ARRAY_ERRORS, add_logistics_args, argument_parser, atomic_write, autocast, broadcast_object,
                    classification_report, cleanup_distributed, format_table, global_mean, keep_freed_memory, load_checkpoint,
                    make_run_dir, parse_ids, progress, resolve_device, resume_training_state, run_main, save_checkpoint,
                    save_training_state, seed_everything, setup_distributed, to_device, write_failures, write_json)
from models.kemdy20 import NodeEncoders, TemporalGNN, count_parameters
from preprocess.features import mfcc
from preprocess.kemdy20 import EMOTIONS, WINDOW_S, build_nodes, scan_kemdy20, utterance_table
from preprocess.media import MediaError, load_audio
from preprocess.spell_graph import build_graphs

SAMPLE_RATE = 16000
N_MFCC = 13
AUDIO_FRAMES = round(WINDOW_S * 100) + 1  # 2.75 s of 10-ms MFCC frames: 276
STAGES = ("encoders", "features", "graphs", "gnn")


def build_parser():
    parser = argument_parser(__doc__)
    data = parser.add_argument_group("Data")
    data.add_argument("--data", help="KEMDy20 folder (annotation/, wav/, EDA/, TEMP/), needed to build nodes.npz (default: none)")
    data.add_argument("--drop-neutral-ties", action="store_true", help="of ';'-joined tied labels take the first that is not neutral (default: off, the first)")
    split = parser.add_argument_group("Splits (by session; encoders and GNN share them)")
    split.add_argument("--val-sessions", default="29-32", help="sessions (1,2,5-7) that pick the checkpoints (default %(default)s)")
    split.add_argument("--test-sessions", default="33-40", help="sessions held out for the single final test (default %(default)s)")
    stage = parser.add_argument_group("Stages")
    stage.add_argument("--stage", default="all", choices=[*STAGES, "all"], help="the stage to run, or all four in order (default %(default)s)")
    encoders = parser.add_argument_group("Encoders (1-D ResNet-18 on EDA and TEMP, 2-D on 13 MFCC; four heads, sum of four CEs)")
    encoders.add_argument("--encoder-width", type=int, default=64, help="first ResNet stage width; features are 8x this (default %(default)s)")
    encoders.add_argument("--encoder-epochs", type=int, default=100, help="training epochs of the encoders (default %(default)s)")
    encoders.add_argument("--encoder-batch-size", type=int, default=128, help="global batch of nodes (default %(default)s)")
    encoders.add_argument("--encoder-lr", type=float, default=3e-4, help="Adam learning rate (default %(default)s)")
    encoders.add_argument("--encoder-step", type=int, default=40, help="StepLR: the rate times 0.1 every N epochs (default %(default)s)")
    graphs = parser.add_argument_group("Graphs (SPELL: per session, sorted by time)")
    graphs.add_argument("--block-size", type=int, default=2000, help="nodes per graph, each session cut into blocks (default %(default)s)")
    graphs.add_argument("--time-edge", type=float, default=7.2, help="seconds within which same-speaker nodes are joined (default %(default)s)")
    gnn = parser.add_argument_group("GNN (3 branches: EdgeConv -> shared SAGE -> SAGE; logits summed)")
    gnn.add_argument("--gnn-hidden", type=int, default=64, help="input projection and EdgeConv width (default %(default)s)")
    gnn.add_argument("--gnn-mid", type=int, default=16, help="width of the shared SAGE layer (default %(default)s)")
    gnn.add_argument("--dropout", type=float, default=0.2, help="dropout after the EdgeConv and the shared SAGE layer (default %(default)s)")
    gnn.add_argument("--gnn-epochs", type=int, default=100, help="training epochs of the GNN, also the cosine schedule's length (default %(default)s)")
    gnn.add_argument("--gnn-batch-size", type=int, default=16, help="graphs (blocks) per global batch (default %(default)s)")
    gnn.add_argument("--gnn-lr", type=float, default=1e-3, help="Adam learning rate (default %(default)s)")
    train = parser.add_argument_group("Training")
    train.add_argument("--select", default="macro_f1", choices=["macro_f1", "accuracy"], help="validation metric that picks each stage's checkpoint (default %(default)s)")
    train.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for the encoders (default %(default)s)")
    train.add_argument("--amp", action="store_true", help="bf16 autocast of the encoders' training forward pass (default: off)")
    run = parser.add_argument_group("Run")
    run.add_argument("--out", help="run folder shared by all stages (default: a new runs/gnn/NNN)")
    run.add_argument("--resume", action="store_true", help="continue a training stage from its *_last.pt, skip finished ones (default: off)")
    add_logistics_args(parser)
    return parser


# ---------------------------------------------------------------- nodes and split

def load_cached(path, key):
    """The arrays of an .npz written by save_cached with the same key, else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            if "key" not in stored or str(stored["key"]) != json.dumps(key, sort_keys=True):
                return None
            return {name: stored[name] for name in stored.files if name != "key"}
    except UNREADABLE_ARRAY_ERRORS:  # cut short or corrupt: rebuilt
        print(f"{path}: unreadable cache, rebuilding it")
        return None


def save_cached(path, key, arrays):
    atomic_write(path, lambda file: np.savez(file, key=np.array(json.dumps(key, sort_keys=True)), **arrays))
    return arrays


def file_sha1(path):
    digest = hashlib.sha1()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def prepare_nodes(args, run_dir):
    """nodes.npz: per node (utterance, time_ms, eda/temp windows, label, session, speaker, audio_start) and the
    13-MFCC of every utterance with nodes, concatenated (13, frames); plus utterances.csv and failures.csv."""
    if not args.data:
        if (run_dir / "nodes.npz").is_file():
            try:
                with np.load(run_dir / "nodes.npz", allow_pickle=False) as stored:
                    return {name: stored[name] for name in stored.files if name != "key"}
            except UNREADABLE_ARRAY_ERRORS:
                raise InputError(f"{run_dir / 'nodes.npz'}: unreadable (cut short?); give --data KEMDy20_DIR to rebuild it") from None
        raise InputError(f"{run_dir / 'nodes.npz'}: not built yet; give --data KEMDy20_DIR")
    key = {"data": str(Path(args.data).resolve()), "drop_neutral_ties": args.drop_neutral_ties, "frames": AUDIO_FRAMES}
    cached = load_cached(run_dir / "nodes.npz", key)
    if cached is not None:
        return cached
    utterances, failures = scan_kemdy20(args.data, drop_neutral_ties=args.drop_neutral_ties)
    atomic_write(run_dir / "utterances.csv", lambda f: csv.writer(f).writerows(utterance_table(utterances)), binary=False)
    nodes, problems = build_nodes(args.data, utterances)
    failures += problems
    pad = round(WINDOW_S / 2 * SAMPLE_RATE)  # zeros either side, so every node's 2.75-s window exists
    mfcc_parts, audio_offset, total = [], {}, 0
    for index in progress(np.unique(nodes["utterance"]), desc="MFCC", leave=False):
        try:
            wave = load_audio(utterances[index].wav, sample_rate=SAMPLE_RATE)
        except MediaError as error:
            failures.append((utterances[index].segment_id, str(error)))
            continue
        coefficients = mfcc(F.pad(wave, (pad, pad)), n_mfcc=N_MFCC).numpy()  # (13, frames)
        mfcc_parts.append(coefficients)
        audio_offset[index] = (total, coefficients.shape[1])
        total += coefficients.shape[1]
    write_failures(run_dir, failures)
    if not mfcc_parts:
        raise InputError(f"{args.data}: no readable wav among the utterances with E4 samples (see {run_dir / 'failures.csv'})")
    keep = np.array([u in audio_offset for u in nodes["utterance"]])
    nodes = {name: values[keep] for name, values in nodes.items()}
    start = np.array([audio_offset[u][0] + min(max(0, round(float(s) * 100)), audio_offset[u][1] - AUDIO_FRAMES)
                      for u, s in zip(nodes["utterance"], nodes["offset_s"])], np.int64)
    speakers = sorted({u.speaker for u in utterances})
    if failures:
        print(f"{len(failures)} item(s) skipped, listed in {run_dir / 'failures.csv'}")
    return save_cached(run_dir / "nodes.npz", key, {
        **nodes, "audio_start": start, "mfcc": np.concatenate(mfcc_parts, 1).astype(np.float32),
        "label": np.array([utterances[u].emotion for u in nodes["utterance"]], np.int64),
        "session": np.array([utterances[u].session for u in nodes["utterance"]], np.int64),
        "speaker": np.array([speakers.index(utterances[u].speaker) for u in nodes["utterance"]], np.int64),
        "utterance_ids": np.array([u.segment_id for u in utterances]),
        "utterance_labels": np.array([u.emotion for u in utterances], np.int64)})


def session_split(nodes, args, run_dir):
    """{"train"|"val"|"test": node indices}; the sessions and segment ids go to split.json (an --out that already
    holds another split is refused, so encoders and GNN always share one)."""
    present = sorted(set(nodes["session"].tolist()))
    val, test = set(parse_ids(args.val_sessions, flag="--val-sessions")), set(parse_ids(args.test_sessions, flag="--test-sessions"))
    if val & test:
        raise InputError(f"--val-sessions and --test-sessions share session(s) {sorted(val & test)}")
    sessions = {"train": [s for s in present if s not in val | test], "val": [s for s in present if s in val],
                "test": [s for s in present if s in test]}
    for part, chosen in sessions.items():
        if not chosen:
            raise InputError(f"the {part} split has no sessions (sessions present: {present}); set --val-sessions/--test-sessions")
    record = {part: {"sessions": chosen, "segments": sorted({str(nodes["utterance_ids"][u]) for u in
                                                                 nodes["utterance"][np.isin(nodes["session"], chosen)]})}
              for part, chosen in sessions.items()}
    if (run_dir / "split.json").is_file():
        old = json.loads((run_dir / "split.json").read_text())
        if {p: old[p]["sessions"] for p in old} != sessions:
            raise InputError(f"{run_dir / 'split.json'}: this --out was made with another split; use a new --out")
    write_json(run_dir / "split.json", record)
    return {part: np.flatnonzero(np.isin(nodes["session"], chosen)) for part, chosen in sessions.items()}


# ---------------------------------------------------------------- shared training loop

def fit(name, *, model, train_model, optimizer, scheduler, loader, sampler, loss_of, evaluate, epochs, args, run_dir, dist, info):
    """Epochs of loss_of(batch) -> loss; rank 0 validates with evaluate() -> report, keeps the best as {name}.pt and
    {name}_last.pt for --resume (the schedule depends on `epochs`: resuming with others is refused). Returns the best epoch."""
    start_epoch, best_score, best_epoch = 0, -1.0, -1
    last = run_dir / f"{name}_last.pt"
    if args.resume and last.is_file():
        start_epoch, best_score, best_epoch = resume_training_state(last, model=model, optimizer=optimizer, scheduler=scheduler,
                                                                    total_steps=epochs * len(loader))
        if start_epoch >= epochs:
            print(f"{name}: finished earlier (best epoch {best_epoch + 1}), kept")
    for epoch in range(start_epoch, epochs):
        train_model.train()
        if sampler is not None:
            sampler.set_epoch(epoch)
        torch.manual_seed(args.seed + epoch)  # the shuffle order, reproducible after --resume
        loss_sum = 0.0
        for batch in progress(loader, enabled=dist.is_main, desc=f"{name} epoch {epoch + 1}/{epochs}", leave=False):
            loss = loss_of(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item()
        scheduler.step()
        if dist.is_main:
            report = evaluate()
            improved = report[args.select] > best_score
            if improved:
                best_score, best_epoch = report[args.select], epoch
                save_checkpoint(run_dir / f"{name}.pt", {"model": model.state_dict(), "epoch": epoch, **info})
            save_training_state(last, model=model, optimizer=optimizer, scheduler=scheduler, epoch=epoch,
                                best_score=best_score, best_epoch=best_epoch, total_steps=epochs * len(loader))
            print(f"{name} epoch {epoch + 1}: loss {loss_sum / max(1, len(loader)):.3f}  val accuracy {report['accuracy']:.3f}  "
                  f"macro-F1 {report['macro_f1']:.3f}{'  *' if improved else ''}", flush=True)
        if dist.enabled:
            torch.distributed.barrier()
    return best_epoch


def make_loader(dataset, batch_size, args, dist, **kwargs):
    """Shuffled training batches (a DistributedSampler's share under torchrun) of batch_size // processes items."""
    sampler = DistributedSampler(dataset, shuffle=True, seed=args.seed) if dist.enabled else None
    loader = DataLoader(dataset, batch_size=max(1, batch_size // dist.world_size), shuffle=sampler is None, sampler=sampler, **kwargs)
    return loader, sampler


# ---------------------------------------------------------------- stage 1-2: encoders and features

class NodeWindows(Dataset):
    """(eda (11,), temp (11,), mfcc (13, 276), label) of the given nodes."""

    def __init__(self, nodes, indices):
        self.nodes, self.indices = nodes, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, position):
        node, nodes = self.indices[position], self.nodes
        start = nodes["audio_start"][node]
        return (torch.from_numpy(nodes["eda"][node]), torch.from_numpy(nodes["temp"][node]),
                torch.from_numpy(nodes["mfcc"][:, start:start + AUDIO_FRAMES]), int(nodes["label"][node]))


@torch.no_grad()
def encode(model, nodes, indices, device, batch_size=512):
    """-> (fusion logits (n, 7), features (n, 3, F)) of the given nodes, in order."""
    model.eval()
    logits, features = [], []
    for eda, temp, coefficients, _ in DataLoader(NodeWindows(nodes, indices), batch_size=batch_size):
        head_logits, node_features = model(eda.to(device), temp.to(device), coefficients.to(device))
        logits.append(head_logits["fusion"].cpu()), features.append(node_features.cpu())
    return torch.cat(logits).numpy(), torch.cat(features).numpy()


def stage_encoders(nodes, split, args, run_dir, device, dist):
    seed_everything(args.seed)  # each training stage starts from the seed, so a stage run alone gives the same result
    model = NodeEncoders(width=args.encoder_width, num_classes=len(EMOTIONS), n_mfcc=N_MFCC).to(device)
    sample = split["train"][::max(1, len(split["train"]) // 2000)]  # per-coefficient MFCC statistics of <= ~2000 train windows
    frames = nodes["mfcc"][:, (nodes["audio_start"][sample][:, None] + np.arange(AUDIO_FRAMES)).ravel()]  # (13, n * 276)
    model.mfcc_mean.copy_(torch.from_numpy(frames.mean(1, keepdims=True)))
    model.mfcc_std.copy_(torch.from_numpy(frames.std(1, keepdims=True) + 1e-5))
    loader, sampler = make_loader(NodeWindows(nodes, split["train"]), args.encoder_batch_size, args, dist,
                                  num_workers=args.workers, pin_memory=device.type == "cuda",
                                  drop_last=len(split["train"]) > args.encoder_batch_size)  # no 1-node batch for BatchNorm
    optimizer = torch.optim.Adam(model.parameters(), lr=args.encoder_lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.encoder_step, gamma=0.1)
    train_model = DistributedDataParallel(model) if dist.enabled else model

    def loss_of(batch):
        eda, temp, coefficients, labels = to_device(batch, device)
        with autocast(device, args.amp):
            logits, _ = train_model(eda, temp, coefficients)
        return sum(F.cross_entropy(head.float(), labels) for head in logits.values())  # four CEs on logits

    def evaluate():
        logits, _ = encode(model, nodes, split["val"], device)
        return classification_report(nodes["label"][split["val"]], logits.argmax(1), class_names=list(EMOTIONS))

    info = {"args": vars(args), "class_names": list(EMOTIONS), "width": args.encoder_width}
    best_epoch = fit("encoders", model=model, train_model=train_model, optimizer=optimizer, scheduler=scheduler, loader=loader,
                     sampler=sampler, loss_of=loss_of, evaluate=evaluate, epochs=args.encoder_epochs, args=args,
                     run_dir=run_dir, dist=dist, info=info)
    if dist.is_main:
        model.load_state_dict(load_checkpoint(run_dir / "encoders.pt")["model"])
        report = classification_report(nodes["label"][split["val"]], encode(model, nodes, split["val"], device)[0].argmax(1),
                                       class_names=list(EMOTIONS), train_labels=nodes["label"][split["train"]])
        write_json(run_dir / "encoders_metrics.json", {"protocol": f"fusion head, node level, validation sessions only; "
                                                       f"best {args.select} at epoch {best_epoch + 1}", "val": report})


def stage_features(nodes, args, run_dir, device):
    """features.npz (N, 3, F) float32 for every node (no labels are read), keyed by the encoders' checksum."""
    if not (run_dir / "encoders.pt").is_file():
        raise InputError(f"{run_dir / 'encoders.pt'}: missing; run --stage encoders first")
    key = {"encoders": file_sha1(run_dir / "encoders.pt"), "nodes": file_sha1(run_dir / "nodes.npz")}
    cached = load_cached(run_dir / "features.npz", key)
    if cached is not None:
        return cached
    state = load_checkpoint(run_dir / "encoders.pt")
    model = NodeEncoders(width=state["width"], num_classes=len(EMOTIONS), n_mfcc=N_MFCC).to(device)
    model.load_state_dict(state["model"])
    _, features = encode(model, nodes, np.arange(len(nodes["label"])), device)
    return save_cached(run_dir / "features.npz", key, {"features": features.astype(np.float32)})


# ---------------------------------------------------------------- stage 3-4: graphs and GNN

def stage_graphs(nodes, args, run_dir):
    key = {"block_size": args.block_size, "time_edge_ms": round(args.time_edge * 1000), "nodes": file_sha1(run_dir / "nodes.npz")}
    cached = load_cached(run_dir / "graphs.npz", key)
    if cached is not None:
        return cached
    graphs = build_graphs(nodes["session"], nodes["time_ms"], nodes["speaker"], block_size=args.block_size,
                          time_edge_ms=key["time_edge_ms"])
    return save_cached(run_dir / "graphs.npz", key, graphs)


class Blocks(Dataset):
    def __init__(self, indices):
        self.indices = indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, position):
        return int(self.indices[position])


def batch_blocks(blocks, graphs, features, labels):
    """Blocks -> one disjoint-union graph: (x (N, 3, F), edge_index (2, E), edge_attr (E,), labels (N,), node ids (N,))."""
    node_parts, edge_parts, attr_parts, offset = [], [], [], 0
    for block in blocks:
        nodes = graphs["nodes"][graphs["node_ptr"][block]:graphs["node_ptr"][block + 1]]
        low, high = graphs["edge_ptr"][block], graphs["edge_ptr"][block + 1]
        node_parts.append(nodes), edge_parts.append(graphs["edges"][:, low:high] + offset), attr_parts.append(graphs["edge_attr"][low:high])
        offset += len(nodes)
    node_ids = np.concatenate(node_parts)
    return (torch.from_numpy(features[node_ids]), torch.from_numpy(np.concatenate(edge_parts, 1)),
            torch.from_numpy(np.concatenate(attr_parts)), torch.from_numpy(labels[node_ids]), node_ids)


@torch.no_grad()
def predict_nodes(model, blocks, graphs, features, labels, device, batch_size):
    """-> (node ids, probabilities (n, 7)) over the given blocks."""
    model.eval()
    ids, probabilities = [], []
    for start in range(0, len(blocks), batch_size):
        x, edges, attr, _, node_ids = batch_blocks(blocks[start:start + batch_size], graphs, features, labels)
        probabilities.append(model(x.to(device), edges.to(device), attr.to(device)).softmax(-1).cpu())
        ids.append(node_ids)
    return np.concatenate(ids), torch.cat(probabilities).numpy()


def reports(nodes, node_ids, probabilities, train_ids):
    """Node-level and utterance-level (node probabilities averaged per segment) classification reports."""
    labels, names = nodes["label"], list(EMOTIONS)
    utterances, inverse = np.unique(nodes["utterance"][node_ids], return_inverse=True)
    pooled = np.zeros((len(utterances), probabilities.shape[1]))
    np.add.at(pooled, inverse, probabilities)
    train_utterances = np.unique(nodes["utterance"][train_ids])
    return {"node": classification_report(labels[node_ids], probabilities.argmax(1), class_names=names, train_labels=labels[train_ids]),
            "utterance": classification_report(nodes["utterance_labels"][utterances], pooled.argmax(1), class_names=names,
                                                train_labels=nodes["utterance_labels"][train_utterances])}


def stage_gnn(nodes, split, features, graphs, args, run_dir, device, dist):
    features = features["features"]
    blocks = {part: np.flatnonzero(np.isin(graphs["block_session"], np.unique(nodes["session"][ids]))) for part, ids in split.items()}
    settings = {"in_dim": features.shape[-1], "hidden_dim": args.gnn_hidden, "mid_dim": args.gnn_mid,
                "num_classes": len(EMOTIONS), "dropout": args.dropout}
    seed_everything(args.seed)
    model = TemporalGNN(**settings).to(device)
    labels = nodes["label"]
    loader, sampler = make_loader(Blocks(blocks["train"]), args.gnn_batch_size, args, dist, collate_fn=lambda b: b)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.gnn_lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.gnn_epochs)
    train_model = DistributedDataParallel(model) if dist.enabled else model

    def loss_of(batch):
        x, edges, attr, batch_labels, _ = batch_blocks(batch, graphs, features, labels)
        logits = train_model(x.to(device), edges.to(device), attr.to(device))
        # on logits (the seed applied softmax twice); the mean over the nodes of the GLOBAL batch of blocks, whose
        # ranks' shares hold different numbers of nodes
        return global_mean(F.cross_entropy(logits, batch_labels.to(device), reduction="sum"), len(batch_labels), dist)

    def evaluate():
        ids, probabilities = predict_nodes(model, blocks["val"], graphs, features, labels, device, args.gnn_batch_size)
        return classification_report(labels[ids], probabilities.argmax(1), class_names=list(EMOTIONS))

    best_epoch = fit("gnn", model=model, train_model=train_model, optimizer=optimizer, scheduler=scheduler, loader=loader,
                     sampler=sampler, loss_of=loss_of, evaluate=evaluate, epochs=args.gnn_epochs, args=args, run_dir=run_dir,
                     dist=dist, info={"args": vars(args), "settings": settings, "class_names": list(EMOTIONS)})
    if not dist.is_main:
        return None
    model.load_state_dict(load_checkpoint(run_dir / "gnn.pt")["model"])
    metrics = {"protocol": f"session-disjoint split shared by encoders and GNN; checkpoint = best validation node {args.select} "
                           f"(epoch {best_epoch + 1}); utterance level = node probabilities averaged per segment; "
                           "majority baseline = most frequent training class; test evaluated once",
               "sessions": {part: sorted(set(nodes["session"][ids].tolist())) for part, ids in split.items()},
               "gnn_parameters": count_parameters(model), "graphs": {part: len(b) for part, b in blocks.items()}}
    if (run_dir / "encoders_metrics.json").is_file():
        metrics["encoders_val"] = json.loads((run_dir / "encoders_metrics.json").read_text())["val"]
    for part in ("val", "test"):
        ids, probabilities = predict_nodes(model, blocks[part], graphs, features, labels, device, args.gnn_batch_size)
        metrics[part] = reports(nodes, ids, probabilities, split["train"])
        if part == "test":
            atomic_write(run_dir / "test_predictions.npz", lambda f: np.savez(f, node_ids=ids, probabilities=probabilities, labels=labels[ids]))
    write_json(run_dir / "metrics.json", metrics)
    rows = [{"split": part, "level": level, **{k: metrics[part][level][k] for k in ("n", "accuracy", "macro_f1", "weighted_f1",
                                                                                   "majority_baseline_accuracy")}}
            for part in ("val", "test") for level in ("node", "utterance")]
    print(format_table(rows, ["split", "level", "n", "accuracy", "macro_f1", "weighted_f1", "majority_baseline_accuracy"]))
    return metrics


# ---------------------------------------------------------------- main

def main(argv=None):
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    dist = setup_distributed(device)
    keep_freed_memory(device)
    seed_everything(args.seed)
    stages = STAGES if args.stage == "all" else (args.stage,)
    run_dir = split = None
    if dist.is_main:
        run_dir = make_run_dir(args.out, args, default_root="runs/gnn")
        nodes = prepare_nodes(args, run_dir)
        split = session_split(nodes, args, run_dir)
    if dist.enabled:  # the other ranks read rank 0's run folder, nodes.npz and split
        run_dir, split = broadcast_object(dist, (run_dir, split) if dist.is_main else None)
        if not dist.is_main:
            nodes = prepare_nodes(args, run_dir)
    metrics = None
    for stage in stages:
        if stage == "encoders":
            stage_encoders(nodes, split, args, run_dir, device, dist)
        elif stage in ("features", "graphs"):
            if dist.is_main:
                stage_features(nodes, args, run_dir, device) if stage == "features" else stage_graphs(nodes, args, run_dir)
            if dist.enabled:
                torch.distributed.barrier()
        else:
            for needed, made_by in (("features.npz", "features"), ("graphs.npz", "graphs")):
                if not (run_dir / needed).is_file():
                    raise InputError(f"{run_dir / needed}: missing; run --stage {made_by} first")
            metrics = stage_gnn(nodes, split, stage_features(nodes, args, run_dir, device), stage_graphs(nodes, args, run_dir),
                                args, run_dir, device, dist)
    cleanup_distributed(dist)
    if dist.is_main:
        print(f"run folder: {run_dir}")
    return metrics


if __name__ == "__main__":
    run_main(main)
