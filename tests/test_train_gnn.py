"""train_gnn.py on a tiny synthetic KEMDy20 tree: the layout parser (ties, 'disqust', E4 timestamps, cp949,
irregular names, failures), all four stages, the planted signal learned well above the majority baseline,
SPELL graphs equal to a brute-force builder, no test-session node in a training graph, --resume, the
parameter count of the SPEC's GNN, and the probes of train_highlight.py on the same tree."""
import csv
import datetime
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train_gnn
from common import InputError
from models.graph import EdgeConv, SAGEConv
from models.kemdy20 import NodeEncoders, TemporalGNN, count_parameters
from preprocess.fixtures.kemdy20 import EDA_STEP, TONE_HZ
from preprocess.kemdy20 import (EMOTIONS, build_nodes, clean_transcript, header_columns, parse_e4_time, parse_emotion, read_e4,
                                scan_kemdy20)
from preprocess.media import load_audio
from preprocess.spell_graph import block_edges, brute_force_edges, build_graphs, edge_sets

ROOT = Path(__file__).resolve().parents[1]
# the release's header rows, as the issue quotes them
RELEASED_TITLE = "Numb,WAV, ,Segment ID,Total Evaluation, , ,Eval01F, , ,Eval02M,"
RELEASED_NAMES = " ,start,end, ,Emotion,Valence,Arousal,Emotion,Valence,Arousal,"
FAST = ["--val-sessions", "4", "--test-sessions", "5", "--encoder-width", "8", "--encoder-epochs", "3",
        "--encoder-batch-size", "32", "--block-size", "32", "--gnn-epochs", "40"]


@pytest.fixture(scope="module")
def kemdy20(tmp_path_factory):
    root = tmp_path_factory.mktemp("kemdy20")
    result = subprocess.run([sys.executable, "-m", "preprocess.fixtures", "kemdy20", str(root / "data")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "kemdy20: wrote 205 files" in result.stdout, result.stderr
    return root / "data"


@pytest.fixture(scope="module")
def run(kemdy20, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "all"
    metrics = train_gnn.main(["--data", str(kemdy20), "--stage", "all", "--out", str(out), *FAST])
    return out, metrics


def test_layout_parsing_rules():
    assert parse_emotion("happy;neutral") == "happy" and parse_emotion("neutral;sad") == "neutral"
    assert parse_emotion("neutral;sad", drop_neutral_ties=True) == "sad" and parse_emotion("neutral", drop_neutral_ties=True) == "neutral"
    assert parse_emotion(" Disqust ") == "disgust" and parse_emotion("bored") is None
    assert parse_e4_time("2020-1106-1538-43-123") == ((15 * 60 + 38) * 60 + 43) * 1000 + 123
    assert parse_e4_time("2020-11-06 15:38:43") is None


def test_fixture_layout_and_planted_signal(kemdy20):
    utterances, problems = scan_kemdy20(kemdy20)
    assert problems == [] and len(utterances) == 5 * 2 * 8
    assert {u.speaker for u in utterances if u.session == 3} == {"User005F", "User006M"}
    assert "감정의" in utterances[0].text  # the transcript, read as cp949
    labels = [EMOTIONS[u.emotion] for u in utterances]
    assert labels.count("neutral") == 2 * labels.count("happy") and "disgust" in labels  # 'disqust' and ties read
    assert scan_kemdy20(kemdy20, drop_neutral_ties=True)[0] != utterances  # 'neutral;surprise' -> surprise
    for utterance in utterances[:6]:
        wave = load_audio(utterance.wav).numpy()
        peak_hz = np.argmax(np.abs(np.fft.rfft(wave))) * 16000 / len(wave)
        assert peak_hz == pytest.approx(TONE_HZ[EMOTIONS[utterance.emotion]], rel=0.12)
    nodes, problems = build_nodes(kemdy20, utterances)
    assert problems == [] and len(nodes["utterance"]) == 80 * 8  # 2-s utterances at 4 Hz
    # per-subject z-scoring: the subject's EDA over all its files has mean 0 / std 1; centre of a window = the sample
    files = sorted((kemdy20 / "EDA").rglob("*User001F.csv"))
    raw = np.concatenate([read_e4(path)[0] for path in files])
    values, times, segments, _ = read_e4(files[0])
    mine = np.flatnonzero([utterances[u].speaker == "User001F" and utterances[u].script == 1 for u in nodes["utterance"]])
    expected = (values[[bool(s) for s in segments]] - raw.mean()) / raw.std()
    assert np.allclose(nodes["eda"][mine, 5], expected, atol=1e-4) and np.array_equal(nodes["time_ms"][mine], times[[bool(s) for s in segments]])
    steps = [EDA_STEP[EMOTIONS[utterances[u].emotion]] for u in nodes["utterance"]]
    assert np.corrcoef(steps, nodes["eda"][:, 5])[0, 1] > 0.5  # EDA rises with the planted emotion step


def test_fixture_headers_are_the_released_ones(kemdy20):
    title, names = (kemdy20 / "annotation" / "Sess03_eval.csv").read_text(encoding="utf-8").splitlines()[:2]
    assert title.startswith(RELEASED_TITLE) and title.endswith(",Eval10M, , ") and names.startswith(RELEASED_NAMES)
    assert names == " ,start,end, ," + ",".join(["Emotion,Valence,Arousal"] * 11)
    for signal in ("EDA", "TEMP"):
        start, rate = (kemdy20 / signal / "Session02" / "Sess02_script01_User003F.csv").read_text().splitlines()[:2]
        match = re.fullmatch(r"(\d{10}\.000000),(2020-\d{4}-\d{4}-\d\d-\d{3})", start)  # e.g. 1597976852.000000,2020-0821-1127-32-000
        assert match and rate == "4.000000,hz", (start, rate)
        local = datetime.datetime.fromtimestamp(float(match[1]), datetime.timezone(datetime.timedelta(hours=9)))
        assert f"{local:%Y-%m%d-%H%M-%S}-000" == match[2]  # the unix start is the stamp's instant in Korean time
    # read: the header lines are no samples; the first sample is the first line after them
    path = kemdy20 / "EDA" / "Session02" / "Sess02_script01_User003F.csv"
    values, times, _, bad = read_e4(path)
    lines = path.read_text().splitlines()
    assert bad == 0 and len(values) == len(lines) - 2 and values[0] == float(lines[2].split(",")[0]) and values.max() < 100
    assert times[0] == parse_e4_time(lines[2].split(",")[1])
    # transcripts keep the ETRI noise tags; about half carry one, and clean_text drops it
    utterances, _ = scan_kemdy20(kemdy20)
    tagged = [u for u in utterances if re.search(r"(^| )[bclnu]/", u.text)]
    assert 0.4 <= len(tagged) / len(utterances) <= 0.6 and {u.text.split()[0] for u in tagged} & {"b/", "c/", "l/", "n/", "u/"}
    for u in utterances:
        assert "/" not in u.clean_text and u.clean_text in u.text and ("감정의" in u.clean_text)
    assert clean_transcript("c/ 어 그래? n/") == "어 그래?" and clean_transcript("l/ 하하  진짜 u/ 몰라") == "하하 진짜 몰라"
    assert clean_transcript("and/or 1/2") == "and/or 1/2"  # only a tag at the start of a word


def test_annotation_columns_are_found_by_name_not_position(kemdy20, tmp_path):
    assert header_columns(RELEASED_TITLE.split(","), RELEASED_NAMES.split(",")) == (
        {"start": 1, "end": 2, "segment id": 3, "emotion": 4, "valence": 5, "arousal": 6}, [])
    data = tmp_path / "data"
    shutil.copytree(kemdy20, data)
    table = data / "annotation" / "Sess01_eval.csv"
    rows = list(csv.reader(table.read_text(encoding="utf-8").splitlines()))
    order = [3, 0, 4, 5, 6, 1, 2] + list(range(7, len(rows[0])))  # Segment ID first, the WAV pair after the total evaluation
    moved = [[row[i] for i in order] for row in rows]
    table.write_bytes("\r\n".join(",".join(row) for row in moved).encode("cp949"))  # and cp949, as some sessions are
    assert moved[0][:7] == ["Segment ID", "Numb", "Total Evaluation", " ", " ", "WAV", " "]
    before, _ = scan_kemdy20(kemdy20)
    after, problems = scan_kemdy20(data)
    assert problems == [] and [u.segment_id for u in after] == [u.segment_id for u in before]
    assert [(u.start_s, u.end_s, u.emotion, u.valence, u.arousal) for u in after] == [(u.start_s, u.end_s, u.emotion, u.valence, u.arousal) for u in before]
    # a header without the names: listed, and the released columns used
    table.write_text("\n".join([",".join(["x"] * 37), ",".join(["y"] * 37)] + [",".join(row) for row in rows[2:]]), encoding="utf-8")
    after, problems = scan_kemdy20(data)
    assert [u.segment_id for u in after] == [u.segment_id for u in before]
    assert problems == [(str(table), "header names no start, end, segment id, emotion, valence, arousal; read from the released "
                                     "column(s) 1, 2, 3, 4, 5, 6")]


def test_e4_rate_line_is_read(kemdy20, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(kemdy20, data)
    fast = data / "TEMP" / "Session01" / "Sess01_script02_User002M.csv"
    lines = fast.read_text().splitlines()
    fast.write_text("\n".join([lines[0], "32.000000,hz", *lines[2:]]) + "\n")
    headless = data / "EDA" / "Session02" / "Sess02_script01_User003F.csv"
    headless.write_text("\n".join(headless.read_text().splitlines()[2:]) + "\n")  # no header lines: the first sample is no rate
    with pytest.raises(InputError, match=r"sampled at 32 Hz \(line 2\); the nodes need 4-Hz E4 files"):
        read_e4(fast)
    utterances, _ = scan_kemdy20(data)
    nodes, problems = build_nodes(data, utterances)
    reasons = dict(problems)
    assert set(reasons) == {"sess01_script02_user002m", "sess02_script01_user003f"}
    assert "sampled at 32 Hz" in reasons["sess01_script02_user002m"] and reasons["sess01_script02_user002m"].endswith("its 4 utterances have no nodes")
    assert "not the E4 sample rate (e.g. `4.000000,hz`)" in reasons["sess02_script01_user003f"]
    assert len(nodes["utterance"]) == (80 - 8) * 8  # the other streams go on


def test_a_tree_of_linked_session_folders_trains(kemdy20, tmp_path):
    linked = tmp_path / "linked"
    for part in ("annotation", "wav", "EDA", "TEMP"):
        (linked / part).mkdir(parents=True)
        for folder in sorted((kemdy20 / part).iterdir()):
            (linked / part / folder.name).symlink_to(folder, target_is_directory=folder.is_dir())
    (linked / "wav" / "again").symlink_to(linked, target_is_directory=True)  # a link loop (not inside the shared fixture)
    utterances, problems = scan_kemdy20(linked)
    assert problems == [] and len(utterances) == 80 and all(str(u.wav).startswith(str(linked)) for u in utterances)
    out = tmp_path / "run"
    train_gnn.main(["--data", str(linked), "--stage", "encoders", "--out", str(out), *FAST, "--encoder-epochs", "1"])
    assert (out / "encoders.pt").is_file() and len(np.load(out / "nodes.npz")["utterance"]) == 80 * 8


def test_irregular_names_and_bad_rows_are_handled_or_reported(kemdy20, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(kemdy20, data)
    (data / "wav" / "Session02").rename(data / "wav" / "session2")  # another folder spelling: still found
    (data / "wav" / "Session01" / "Sess01_script01_User001F_001.wav").unlink()
    with open(data / "annotation" / "Sess03_eval.csv", "a", newline="") as file:
        csv.writer(file).writerows([[99, 1.0, 2.0, "Sess03_scriptXX_User005F_001", "happy", 3, 3],
                                    [100, 1.0, 2.0, "Sess03_script01_User005F_002", "bored", 3, 3],
                                    [101, 1.0, 2.0, "Sess03_script01_User005F_003", "sad"]])
    (data / "TEMP" / "Session04" / "Sess04_script02_User008M.csv").unlink()
    eda_file = data / "EDA" / "Session05" / "Sess05_script01_User009F.csv"
    lines = eda_file.read_text().splitlines()
    lines[2] = lines[2].replace("2020-1106-", "2020/1106/")  # one malformed timestamp, in the first sample after the header
    eda_file.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    train_gnn.main(["--data", str(data), "--stage", "graphs", "--out", str(out), *FAST])
    with open(out / "failures.csv", newline="") as file:
        problems = {row["item"]: row["problem"] for row in csv.DictReader(file)}
    assert problems["Sess01_script01_User001F_001"] == "no wav file"
    assert "is not SessNN_scriptMM_UserXXXG_KKK" in problems["Sess03_eval.csv:19"]
    assert problems["Sess03_script01_User005F_002"] == "unknown emotion 'bored'"
    assert "columns, expected at least 7" in problems["Sess03_eval.csv:21"]
    assert "no TEMP file; its 4 utterances have no nodes" in problems["sess04_script02_user008m"]
    assert problems[str(eda_file)] == "1 malformed line(s) skipped"
    split = json.loads((out / "split.json").read_text())
    assert "Sess02_script01_User003F_001" in split["train"]["segments"] and "Sess01_script01_User001F_001" not in split["train"]["segments"]


def test_all_stages_learn_the_planted_signal(run):
    out, metrics = run
    for name in ("args.json", "split.json", "utterances.csv", "failures.csv", "nodes.npz", "encoders.pt", "encoders_last.pt",
                 "encoders_metrics.json", "features.npz", "graphs.npz", "gnn.pt", "gnn_last.pt", "metrics.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test"] == json.loads(json.dumps(metrics["test"])) and saved["sessions"]["test"] == [5]
    for level in ("node", "utterance"):
        for key in ("accuracy", "macro_f1", "weighted_f1", "per_class_f1", "confusion_matrix", "majority_baseline_accuracy"):
            assert key in saved["test"][level] and key in saved["val"][level]
    test = saved["test"]
    assert test["node"]["n"] == 2 * 8 * 8 and test["utterance"]["n"] == 2 * 8
    assert test["node"]["majority_class"] == "neutral" and test["node"]["majority_baseline_accuracy"] == 0.25
    assert test["node"]["accuracy"] >= 0.7 and test["node"]["macro_f1"] >= 0.6, test["node"]
    assert test["utterance"]["accuracy"] >= 0.7 and test["utterance"]["accuracy"] > test["utterance"]["majority_baseline_accuracy"] + 0.4
    assert saved["gnn_parameters"] == count_parameters(TemporalGNN(in_dim=8 * 8))
    features = np.load(out / "features.npz")["features"]
    assert features.shape == (5 * 128, 3, 64) and np.isfinite(features).all()
    assert "validation sessions only" in json.loads((out / "encoders_metrics.json").read_text())["protocol"]
    with open(out / "utterances.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 80 and {"segment_id", "emotion", "valence", "arousal", "wav"} <= set(rows[0])


def test_gnn_has_the_spec_parameter_count_at_the_defaults():
    defaults = train_gnn.build_parser().parse_args([])
    model = TemporalGNN(in_dim=NodeEncoders(width=defaults.encoder_width).feature_dim, hidden_dim=defaults.gnn_hidden,
                        mid_dim=defaults.gnn_mid, dropout=defaults.dropout)
    assert count_parameters(model) == 139045
    assert sum(isinstance(m, EdgeConv) for m in model.modules()) == 3 and sum(isinstance(m, SAGEConv) for m in model.modules()) == 4
    assert (defaults.block_size, defaults.time_edge, defaults.gnn_batch_size, defaults.encoder_epochs) == (2000, 7.2, 16, 100)
    x = torch.randn(6, 3, 512)
    edges, attr = block_edges(np.array([0, 0, 250, 500, 8000, 8000]), np.array([0, 1, 0, 0, 0, 1]), time_edge_ms=7200)
    logits = model.eval()(x, torch.from_numpy(edges), torch.from_numpy(attr))
    assert logits.shape == (6, 7) and torch.isfinite(logits).all()


def test_graphs_equal_the_brute_force_builder(run):
    rng = np.random.default_rng(0)
    for _ in range(20):  # random blocks with ties, several speakers, gaps around the 7.2-s limit
        times = np.sort(rng.choice(np.arange(0, 30_000, 250), size=rng.integers(1, 60)))
        times = np.sort(np.concatenate([times, times[: rng.integers(0, 5)]]))
        speakers = rng.integers(0, 3, len(times))
        fast, brute = block_edges(times, speakers, time_edge_ms=7200), brute_force_edges(times, speakers, time_edge_ms=7200)
        assert np.array_equal(fast[0], brute[0]) and np.array_equal(fast[1], brute[1])
    out, _ = run
    graphs, nodes = np.load(out / "graphs.npz"), np.load(out / "nodes.npz")
    assert np.array_equal(np.sort(graphs["nodes"]), np.arange(len(nodes["label"])))  # every node in exactly one block
    cross_speaker_same_instant = 0
    for block in range(len(graphs["block_session"])):
        ids = graphs["nodes"][graphs["node_ptr"][block]:graphs["node_ptr"][block + 1]]
        edges = graphs["edges"][:, graphs["edge_ptr"][block]:graphs["edge_ptr"][block + 1]]
        attr = graphs["edge_attr"][graphs["edge_ptr"][block]:graphs["edge_ptr"][block + 1]]
        assert 0 < len(ids) <= 32 and (nodes["session"][ids] == graphs["block_session"][block]).all()
        assert np.all(np.diff(nodes["time_ms"][ids]) >= 0)
        brute_edges, brute_attr = brute_force_edges(nodes["time_ms"][ids], nodes["speaker"][ids], time_edge_ms=7200)
        assert np.array_equal(edges, brute_edges) and np.array_equal(attr, brute_attr)
        speakers = nodes["speaker"][ids]
        cross_speaker_same_instant += int(((speakers[edges[0]] != speakers[edges[1]]) & (attr == 0)).sum())
        assert {(i, i) for i in range(len(ids))} <= set(map(tuple, edges.T))  # self-loops
        forward, backward, both = edge_sets(torch.from_numpy(edges), torch.from_numpy(attr))
        assert forward.shape[1] == backward.shape[1] and forward.shape[1] + backward.shape[1] - (attr == 0).sum() == both.shape[1]
    assert cross_speaker_same_instant > 0  # the fixture's overlapping turns
    rebuilt = build_graphs(nodes["session"], nodes["time_ms"], nodes["speaker"], block_size=2000, time_edge_ms=7200)
    assert len(rebuilt["block_session"]) == 5  # one block per session at the default size


def test_no_test_session_node_in_a_training_graph(run):
    out, _ = run
    split = json.loads((out / "split.json").read_text())
    assert [split[p]["sessions"] for p in ("train", "val", "test")] == [[1, 2, 3], [4], [5]]
    segments = {part: set(split[part]["segments"]) for part in split}
    assert not (segments["train"] & segments["test"]) and not (segments["train"] & segments["val"]) and not (segments["val"] & segments["test"])
    graphs, nodes = np.load(out / "graphs.npz"), np.load(out / "nodes.npz")
    training_blocks = np.flatnonzero(np.isin(graphs["block_session"], split["train"]["sessions"]))
    training_ids = np.concatenate([graphs["nodes"][graphs["node_ptr"][b]:graphs["node_ptr"][b + 1]] for b in training_blocks])
    held_out_ids = np.flatnonzero(np.isin(nodes["session"], split["test"]["sessions"] + split["val"]["sessions"]))
    assert len(training_ids) == 3 * 128 and not np.intersect1d(training_ids, held_out_ids).size
    training_segments = {str(nodes["utterance_ids"][u]) for u in nodes["utterance"][training_ids]}
    assert training_segments == segments["train"]


def test_stages_resume_and_refuse_a_changed_split(run, tmp_path, monkeypatch):
    out, metrics = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for name in ("gnn.pt", "gnn_last.pt", "metrics.json"):
        (copy / name).unlink()
    features_written = (copy / "features.npz").stat().st_mtime_ns
    original_save = train_gnn.save_training_state

    def save_then_stop(path, **state):  # an interruption right after epoch 5's checkpoint
        original_save(path, **state)
        if state["epoch"] == 4:
            raise KeyboardInterrupt
    monkeypatch.setattr(train_gnn, "save_training_state", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_gnn.main(["--stage", "gnn", "--out", str(copy), *FAST])  # nodes.npz is reused without --data
    monkeypatch.setattr(train_gnn, "save_training_state", original_save)
    assert not (copy / "metrics.json").is_file() and torch.load(copy / "gnn_last.pt", weights_only=True)["epoch"] == 4
    resumed = train_gnn.main(["--stage", "gnn", "--out", str(copy), "--resume", *FAST])
    assert resumed["test"] == metrics["test"] and resumed["val"] == metrics["val"]
    assert (copy / "features.npz").stat().st_mtime_ns == features_written  # cached features reused
    with pytest.raises(InputError, match="--resume needs"):
        train_gnn.main(["--stage", "gnn", "--out", str(copy), "--resume", *FAST, "--gnn-epochs", "50"])
    with pytest.raises(InputError, match="made with another split"):
        train_gnn.main(["--stage", "gnn", "--out", str(copy), *FAST, "--test-sessions", "4", "--val-sessions", "5"])
    with pytest.raises(InputError, match="encoders.pt: missing; run --stage encoders first"):
        empty = tmp_path / "empty"
        empty.mkdir()
        shutil.copy(out / "nodes.npz", empty / "nodes.npz")
        train_gnn.main(["--stage", "features", "--out", str(empty), *FAST])


def test_help_explains_every_flag_and_bad_input_is_one_line(tmp_path):
    parser = train_gnn.build_parser()
    for action in parser._actions:
        assert action.help, action.option_strings
    help_text = parser.format_help()
    assert "33-40" in help_text and "29-32" in help_text and "make gnn" in help_text
    result = subprocess.run([sys.executable, "train_gnn.py", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing'}: no annotation/SessNN_eval.csv (not a KEMDy20 folder)"]


def test_highlight_probes_train_on_the_same_tree(kemdy20, tmp_path):
    import train_highlight
    metrics = train_highlight.main(["--train-probes", "--probe-data", str(kemdy20), "--probe-val-actors", "1",
                                    "--out", str(tmp_path / "probes")])
    assert set(metrics["emotion"]["per_class_f1"]) == set(EMOTIONS) and metrics["emotion"]["n"] == 16 * 2  # 1-s windows of 2-s utterances
    assert "Sess05" in metrics["protocol"] and metrics["emotion"]["accuracy"] >= 0.5
