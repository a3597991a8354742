"""Property-based fuzzing of every loader that reads user files: mutated bytes of a valid mp4, wav, label JSON
and CSV (flipped, overwritten, inserted and deleted bytes, cuts) go to preprocess.media (probe, read_frames,
load_audio, iter_audio), the dataset readers (AI-Hub JSON, IEMOCAP/MOSEI meta.json, MELD CSV, manifest CSV,
KEMDy20 E4 CSV) and the train_av.py --predict path. Each case runs in a worker process with a timeout, so a
hang or a crash of the decoder fails the test instead of the suite; the outcome must be a result or our
InputError (MediaError included) with one line naming the file, never another exception type.
Bounded: 300 cases in all (derandomised, so every run tries the same ones), about 20 s on one core."""
import multiprocessing
import os
import tempfile
import traceback
from datetime import timedelta
from pathlib import Path

import pytest

os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "hypothesis"))  # not in the repo
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

CASE_TIMEOUT_S = 20  # a decoder that takes longer on a <10 kB file is hung (typical case: 10-50 ms)
MP4_STREAMS = {"frames": (32, 32), "fps": 5, "n_frames": 5, "audio_s": 1.0}


# ------------------------------------------------------------------------------------ the worker side

def _predict_av(path, workdir):
    import train_av
    return train_av.main(["--predict", str(path), "--ckpt", str(Path(workdir) / f"av_{'a' if path.suffix == '.wav' else 'v'}.pt")])


def _meta_json(path, workdir):
    from preprocess.fv2es_reader import read_meta
    folder = path.parent / "fuzzed case meta"
    folder.mkdir()
    path.replace(folder / "meta.json")
    return read_meta(folder)


def _meld_csv(path, workdir, *, skip_bad_rows):
    from preprocess.meld import read_split
    folder = path.parent / "fuzzed case meld"
    folder.mkdir()
    path.replace(folder / "train_sent_emo.csv")
    return read_split(folder, "train", [] if skip_bad_rows else None)


def _e4_csv(path, workdir):
    from preprocess.kemdy20 import read_e4
    return read_e4(path)


def _loaders():
    from preprocess.aihub import parse_label_file
    from preprocess.media import iter_audio, load_audio, probe, read_frames
    from preprocess.ravdess import read_manifest
    return {
        "probe": lambda path, _: probe(path), "read_frames": lambda path, _: read_frames(path, fps=2, size=16),
        "load_audio": lambda path, _: load_audio(path), "iter_audio": lambda path, _: list(iter_audio(path, chunk_seconds=0.25)),
        "predict_av": _predict_av, "aihub_json": lambda path, _: parse_label_file(path), "meta_json": _meta_json,
        "meld_csv": lambda path, workdir: _meld_csv(path, workdir, skip_bad_rows=False),
        "meld_csv_skip_rows": lambda path, workdir: _meld_csv(path, workdir, skip_bad_rows=True),
        "manifest_csv": lambda path, _: read_manifest(path), "e4_csv": _e4_csv,
    }


def _make_av_checkpoints(workdir):
    import torch
    import train_av
    from common import save_checkpoint
    for modalities in ("a", "v"):
        args = vars(train_av.build_parser().parse_args(["--data", "x", "-mod", modalities, "--frame-size", "16", "--video-frames", "2"]))
        torch.manual_seed(0)
        save_checkpoint(Path(workdir) / f"av_{modalities}.pt", {"model": train_av.build_model(args, 8).state_dict(), "args": args,
                                                                 "class_names": list(train_av.EMOTIONS)})


def serve(connection, workdir):
    """Worker loop: (loader names, file bytes, suffix) -> [(loader, outcome, detail)] per loader."""
    import contextlib
    import io
    import torch
    torch.set_num_threads(1)
    from common import InputError
    loaders = _loaders()
    _make_av_checkpoints(workdir)
    connection.send("ready")
    while True:
        names, data, suffix = connection.recv()
        results = []
        for name in names:
            case_dir = Path(tempfile.mkdtemp(dir=workdir))
            path = case_dir / f"fuzzed case{suffix}"
            path.write_bytes(data)
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    loaders[name](path, workdir)
                results.append((name, "ok", ""))
            except InputError as error:
                results.append((name, "input_error", str(error)))
            except Exception:  # anything else is what this test hunts for
                results.append((name, "escape", traceback.format_exc(limit=-4)))
        connection.send(results)


# ------------------------------------------------------------------------------------ the test side

class Worker:
    """One spawned worker process; a timeout or a crash kills it and the next call starts a fresh one."""

    def __init__(self, workdir):
        self.context, self.workdir, self.process = multiprocessing.get_context("spawn"), workdir, None

    def start(self):
        self.connection, child = self.context.Pipe()
        env_threads = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"
        try:
            self.process = self.context.Process(target=serve, args=(child, str(self.workdir)), daemon=True)
            self.process.start()
        finally:
            if env_threads is None:
                os.environ.pop("OMP_NUM_THREADS")
            else:
                os.environ["OMP_NUM_THREADS"] = env_threads
        if not self.connection.poll(300) or self.connection.recv() != "ready":
            raise RuntimeError("fuzz worker did not start")

    def run(self, names, data, suffix):
        if self.process is None or not self.process.is_alive():
            self.start()
        self.connection.send((names, data, suffix))
        if not self.connection.poll(CASE_TIMEOUT_S * len(names)):
            self.stop()
            return [(name, "hang", f"no answer in {CASE_TIMEOUT_S * len(names)} s") for name in names]
        try:
            return self.connection.recv()
        except EOFError:
            self.process.join()
            exit_code = self.process.exitcode
            self.process = None
            return [(name, "crash", f"worker died with exit code {exit_code}") for name in names]

    def stop(self):
        if self.process is not None:
            self.process.kill()
            self.process.join()
            self.process = None


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    worker = Worker(tmp_path_factory.mktemp("fuzz_worker"))
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """The valid files the mutations start from, each with the byte range its `hot` mutations aim at."""
    import json
    from preprocess.fixtures.writers import solid_frame, tone, write_video, write_wav
    folder = tmp_path_factory.mktemp("fuzz_seeds")
    height, width = MP4_STREAMS["frames"]
    frames = [solid_frame(height, width, (20 * k, 90, 160)) for k in range(MP4_STREAMS["n_frames"])]
    mp4 = write_video(folder / "clip.mp4", frames, fps=MP4_STREAMS["fps"], audio=tone(440, MP4_STREAMS["audio_s"], 16000)).read_bytes()
    wav = write_wav(folder / "clip.wav", tone(440, 0.3, 16000), 16000).read_bytes()
    label = {"metadata": {"length": 40, "class_code": 3, "title": "유튜브"},
             "timelines": [{"id": 1, "start": 3, "end": 6, "attributes": {}}, {"id": 2, "start": 20, "end": 22}]}
    meta = {"Ses01F_impro01_F000": {"start_time": 0.5, "end_time": 2.0, "label": "hap", "text": "hi", "sr": 16000, "fps": 30}}
    meld = ("Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"
            "1,Oh my God!,Rachel,surprise,positive,0,0,1,1,\"00:16:16,059\",\"00:16:21,731\"\n"
            "2,Hi.,Ross,neutral,neutral,0,1,1,1,\"00:16:22,000\",\"00:16:23,100\"\n")
    (folder / "a.wav").write_bytes(wav)
    manifest = "path,label,group\na.wav,happy,s1\nmissing.wav,sad,s2\n"
    e4 = "1604631600.000000,2020-1106-1200-00-000\n4.000000,hz\n0.51,2020-1106-1200-00-000\n0.52,2020-1106-1200-00-250,Sess01_script01_User001F_001\n"
    everywhere = (0, 1 << 30)
    return {"mp4": (mp4, (mp4.find(b"moov") - 4, len(mp4))), "wav": (wav, (0, 44)),  # the index / the RIFF + fmt header
            "json": (json.dumps(label, ensure_ascii=False).encode(), everywhere), "meta": (json.dumps(meta).encode(), everywhere),
            "meld": (meld.encode("utf-8"), everywhere), "manifest": (manifest.encode(), everywhere), "e4": (e4.encode(), everywhere)}


MUTATION = st.tuples(st.sampled_from(["flip", "overwrite", "insert", "delete", "cut"]), st.booleans(),
                     st.integers(0, 2**31 - 1), st.binary(min_size=1, max_size=16))


def mutate(data, hot_range, mutations):
    """Apply mutations; `hot` ones land in data[hot_range[0]:hot_range[1]] (the mp4 index, the wav header), the others anywhere."""
    data = bytearray(data)
    for kind, hot, position, payload in mutations:
        low, high = hot_range if hot and hot_range[0] < len(data) else (0, len(data))
        at = low + position % max(1, min(high, len(data)) - low)
        if kind == "flip" and data:
            data[min(at, len(data) - 1)] ^= payload[0] or 0xFF
        elif kind == "overwrite":
            data[at:at + len(payload)] = payload
        elif kind == "insert":
            data[at:at] = payload
        elif kind == "delete":
            del data[at:at + len(payload) * 8]
        elif kind == "cut":
            del data[at:]
    return bytes(data)


CASES = {  # seed -> (suffix, loaders, number of cases)
    "mp4": (".mp4", ["probe", "read_frames", "load_audio", "predict_av"], 100),
    "wav": (".wav", ["probe", "load_audio", "iter_audio", "predict_av"], 60),
    "json": (".json", ["aihub_json"], 40),
    "meta": (".json", ["meta_json"], 25),
    "meld": (".csv", ["meld_csv", "meld_csv_skip_rows"], 30),
    "manifest": (".csv", ["manifest_csv"], 25),
    "e4": (".csv", ["e4_csv"], 20),
}
assert sum(count for *_, count in CASES.values()) == 300


@pytest.mark.parametrize("seed_name", sorted(CASES))
def test_mutated_files_give_a_result_or_one_clear_error(worker, seeds, seed_name):
    suffix, loaders, cases = CASES[seed_name]
    data, hot_range = seeds[seed_name]
    outcomes = {"ok": 0, "input_error": 0}

    @settings(max_examples=cases, deadline=timedelta(seconds=CASE_TIMEOUT_S * len(loaders) + 5), derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.lists(MUTATION, min_size=1, max_size=4))
    def check(mutations):
        fuzzed = mutate(data, hot_range, mutations)
        for name, outcome, detail in worker.run(loaders, fuzzed, suffix):
            assert outcome in ("ok", "input_error"), f"{name} on {len(fuzzed)} mutated bytes of {seed_name}: {outcome}\n{detail}"
            if outcome == "input_error":
                assert "\n" not in detail and "fuzzed case" in detail, f"{name}: the error must be one line naming the file: {detail!r}"
            outcomes[outcome] += 1

    check()
    if seed_name != "e4":  # read_e4 counts malformed sample lines instead of raising; the others must have said no sometimes
        assert outcomes["input_error"] > 0
