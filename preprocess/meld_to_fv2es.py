"""MELD CSVs -> the FV2ES processed layout (preprocess.fv2es_layout), text only, for `train_fv2es.py --dataset meld -mod t`.

    python -m preprocess.meld_to_fv2es MELD/ data/meld_fv2es
    python train_fv2es.py --dataset meld -mod t --data data/meld_fv2es --text-model weights/all-MiniLM-L6-v2 -lr 1e-3

Writes <OUT>/MELD_RAW_PROCESSED/meta.json {id: {label, text, speaker, start_time, end_time}}, ids
`<split>_dia<D>_utt<U>` (the label one of preprocess.meld.EMOTIONS, the text as train_meld.py reads it), and
<OUT>/MELD_SPLIT/{train,valid,test}_split.txt = MELD's own train, dev and test splits, so a dialogue never spans two;
test_split.txt is empty when there is no test_sent_emo.csv. No audio, frames, faces or hand-crafted features are
written: only -mod t trains on it. CSV rows that do not parse are skipped and listed in <OUT>/failures.csv.
"""
import argparse
from pathlib import Path

from common import InputError, atomic_write, run_main, write_failures, write_json
from preprocess.fv2es_layout import LAYOUT
from preprocess.meld import SPLIT_CSV, read_split

SPLIT_NAMES = {"train": "train", "dev": "valid", "test": "test"}  # MELD split -> FV2ES split file


def utterance_id(utterance):
    return f"{utterance.split}_dia{utterance.dialogue}_utt{utterance.utterance}"


def convert(data_dir, out_dir):
    """Write the layout; returns {FV2ES split: [id]} and the skipped rows [(item, problem)]."""
    if not Path(data_dir).is_dir():
        raise InputError(f"{data_dir}: not a folder")
    processed_dir, split_dir = Path(out_dir) / LAYOUT["meld"][0], Path(out_dir) / LAYOUT["meld"][1]
    meta, splits, failures = {}, {}, []
    for split, fv2es_split in SPLIT_NAMES.items():
        rows = read_split(data_dir, split, failures)
        if rows is None and split != "test":
            raise InputError(f"{Path(data_dir) / SPLIT_CSV[split]}: not found (train and dev CSVs are required)")
        splits[fv2es_split] = []
        for utterance in rows or []:
            meta[utterance_id(utterance)] = {"label": utterance.emotion, "text": utterance.text, "speaker": utterance.speaker,
                                             "start_time": utterance.start_s, "end_time": utterance.end_s}
            splits[fv2es_split].append(utterance_id(utterance))
    write_json(processed_dir / "meta.json", meta)
    for split, ids in splits.items():
        atomic_write(split_dir / f"{split}_split.txt", lambda file, ids=ids: file.write("".join(f"{i}\n" for i in ids)), binary=False)
    write_failures(out_dir, failures)
    return splits, failures


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m preprocess.meld_to_fv2es", description=__doc__.splitlines()[0])
    parser.add_argument("data", help="MELD folder with {train,dev}_sent_emo.csv (test_sent_emo.csv optional) (required)")
    parser.add_argument("out", help="output folder for MELD_RAW_PROCESSED/ and MELD_SPLIT/ (required)")
    args = parser.parse_args(argv)
    splits, failures = convert(args.data, args.out)
    print(f"{args.out}: " + ", ".join(f"{split} {len(ids)}" for split, ids in splits.items()) + " utterances"
          + (f"; {len(failures)} row(s) skipped, listed in failures.csv" if failures else ""))
    return splits


if __name__ == "__main__":
    run_main(main)
