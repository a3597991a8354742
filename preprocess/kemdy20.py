"""KEMDy20 layout -> utterances and 4-Hz nodes (one per in-utterance E4 sample).

    DATA/annotation/SessNN_eval.csv        UTF-8 or cp949, two header rows as released:
                                               Numb,WAV, ,Segment ID,Total Evaluation, , ,Eval01F, , ,Eval02M, , ,...
                                                ,start,end, ,Emotion,Valence,Arousal,Emotion,Valence,Arousal,...
                                           (the wav start/end in s sit under WAV, the total evaluation's Emotion,
                                           Valence, Arousal under Total Evaluation, then 10 evaluators'); read by name
    DATA/wav/SessionNN/<SegmentID>.wav     and <SegmentID>.txt, the transcript in cp949, with ETRI noise tags (b/, c/,
                                           l/, n/, u/) in about half the utterances: kept in `text`, removed in
                                           `clean_text`
    DATA/EDA/SessionNN/SessNN_scriptMM_UserXXXG.csv   Empatica E4 at 4 Hz: two header lines, the start (unix s and
    DATA/TEMP/SessionNN/...                           stamp) and the rate, e.g. `1597976852.000000,2020-0821-1127-32-000`
                                                      and `4.000000,hz`; then value,YYYY-MMDD-HHMM-SS-mmm[,SegmentID]
                                                      (the third column only inside utterances)

Segment ID = SessNN_scriptMM_UserXXXG_KKK. Emotions: neutral, happy, surprise, angry, sad, disqust (sic, read
as disgust), fear, or ';'-joined ties: the first wins, or with drop_neutral_ties the first that is not
neutral. Irregular names are tolerated where the meaning is clear (any case, any zero-padding of the
session folder, files found at any depth, folders that are symbolic links, spaces around ids); anything else is skipped and reported as
(item, problem), which the scripts write to failures.csv. E4 time in ms = ((HH*60+MM)*60+SS)*1000+mmm (the
date is ignored, as in the SPEC). EDA and TEMP are z-scored per subject (speaker) over all their samples.
"""
import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import InputError
from preprocess.tree import walk_files

EMOTIONS = ("neutral", "happy", "surprise", "angry", "sad", "disgust", "fear")
SPELLINGS = {"disqust": "disgust"}
SEGMENT_PATTERN = re.compile(r"^Sess(\d+)_script(\d+)_(User\d+[FM])_(\d+)$", re.IGNORECASE)
TIME_PATTERN = re.compile(r"^\d{4}-\d{4}-(\d\d)(\d\d)-(\d\d)-(\d{1,3})$")
HEADER_NAMES = {"start": ("wav", "start"), "end": ("wav", "end"), "segment id": ("segment id", ""),  # field: (row 1, row 2)
                "emotion": ("total evaluation", "emotion"), "valence": ("total evaluation", "valence"),
                "arousal": ("total evaluation", "arousal")}
RELEASED_COLUMN = {"start": 1, "end": 2, "segment id": 3, "emotion": 4, "valence": 5, "arousal": 6}
NOISE_TAG = re.compile(r"(?<!\S)[bclnu]/")
SAMPLE_HZ = 4
WINDOW = 11          # E4 samples per node window (2.75 s)
WINDOW_S = WINDOW / SAMPLE_HZ


@dataclass(frozen=True)
class Utterance:
    segment_id: str
    session: int
    script: int
    speaker: str        # UserXXXG, the subject
    start_s: float      # WAV start / end of the annotation
    end_s: float
    emotion: int        # index into EMOTIONS
    valence: float
    arousal: float
    wav: Path
    text: str           # the transcript as released, noise tags included

    @property
    def clean_text(self):
        return clean_transcript(self.text)

    @property
    def stream(self):
        """The E4 file stem of this utterance: SessNN_scriptMM_UserXXXG (lower case, for lookups)."""
        return f"sess{self.session:02d}_script{self.script:02d}_{self.speaker.lower()}"


def parse_emotion(text, *, drop_neutral_ties=False):
    """'happy;neutral' -> 'happy'; 'neutral;sad' -> 'neutral' ('sad' with drop_neutral_ties); None if unknown."""
    names = [SPELLINGS.get(n.strip().lower(), n.strip().lower()) for n in text.split(";") if n.strip()]
    if drop_neutral_ties and len(names) > 1:
        names = [n for n in names if n != "neutral"] or names
    return names[0] if names and names[0] in EMOTIONS else None


def parse_e4_time(text):
    """'2020-1106-1538-43-123' -> 56323123 (ms since midnight); None when malformed."""
    match = TIME_PATTERN.match(text.strip())
    if not match:
        return None
    hours, minutes, seconds, millis = (int(part) for part in match.groups())
    return ((hours * 60 + minutes) * 60 + seconds) * 1000 + millis


def read_text(path):
    """A transcript (cp949, the release's encoding; UTF-8 accepted)."""
    raw = Path(path).read_bytes()
    for encoding in ("cp949", "utf-8-sig"):
        try:
            return raw.decode(encoding).strip()
        except UnicodeDecodeError:
            continue
    return raw.decode("cp949", errors="replace").strip()


def clean_transcript(text):
    """'c/ 어 그래? n/' -> '어 그래?': the ETRI noise tags (b/, c/, l/, n/, u/ at the start of a word) removed, spaces
    collapsed."""
    return " ".join(NOISE_TAG.sub(" ", text).split())


def header_columns(title_row, name_row):
    """({field: column}, [fields not found]) from the annotation's two header rows, by name: a second-row name
    (start, Emotion) belongs to the first-row name above it or, under a blank, the nearest one to its left (WAV,
    Total Evaluation); a first-row name with a blank under it (Segment ID) names its own column. Names compare
    lower-case with spaces collapsed; the first column that fits wins."""
    found, group = {}, ""
    for index in range(max(len(title_row), len(name_row))):
        title = " ".join(title_row[index].split()).lower() if index < len(title_row) else ""
        name = " ".join(name_row[index].split()).lower() if index < len(name_row) else ""
        group = title or group
        found.setdefault((group, name), index)
    columns = {field: found[key] for field, key in HEADER_NAMES.items() if key in found}
    return columns, [field for field in HEADER_NAMES if field not in columns]


def read_table(path):
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("cp949", errors="replace")
    return list(csv.reader(text.splitlines()))


def index_files(folder, suffix):
    """{lower-case stem: path} of every `suffix` file under folder, at any depth (linked folders followed)."""
    folder = Path(folder)
    return {path.stem.strip().lower(): path for path in walk_files(folder, {suffix})} if folder.is_dir() else {}


def scan_kemdy20(root, *, drop_neutral_ties=False):
    """(utterances sorted by session and segment id, [(item, problem)]) from the annotation tables and wavs."""
    root = Path(root)
    tables = sorted((root / "annotation").glob("*_eval.csv")) if (root / "annotation").is_dir() else []
    if not tables:
        raise InputError(f"{root}: no annotation/SessNN_eval.csv (not a KEMDy20 folder)")
    wavs, texts = index_files(root / "wav", ".wav"), index_files(root / "wav", ".txt")
    utterances, problems, seen = [], [], set()
    for table in tables:
        rows = read_table(table)
        if len(rows) < 2:
            problems.append((str(table), "fewer than two header rows"))
            continue
        column, missing = header_columns(rows[0], rows[1])
        if missing:
            problems.append((str(table), f"header names no {', '.join(missing)}; read from the released column(s) "
                                         f"{', '.join(str(RELEASED_COLUMN[field]) for field in missing)}"))
            column.update({field: RELEASED_COLUMN[field] for field in missing})
        for line, row in enumerate(rows[2:], start=3):
            if not any(cell.strip() for cell in row):
                continue
            item = f"{table.name}:{line}"
            if len(row) <= max(column.values()):
                problems.append((item, f"{len(row)} columns, expected at least {max(column.values()) + 1}"))
                continue
            segment_id = row[column["segment id"]].strip()
            match = SEGMENT_PATTERN.match(segment_id)
            if not match:
                problems.append((item, f"segment id {segment_id!r} is not SessNN_scriptMM_UserXXXG_KKK"))
                continue
            emotion = parse_emotion(row[column["emotion"]], drop_neutral_ties=drop_neutral_ties)
            if emotion is None:
                problems.append((segment_id, f"unknown emotion {row[column['emotion']]!r}"))
                continue
            try:
                start, end, valence, arousal = (float(row[column[name]]) for name in ("start", "end", "valence", "arousal"))
            except ValueError:
                problems.append((segment_id, "WAV start/end, Valence or Arousal not a number"))
                continue
            wav = wavs.get(segment_id.lower())
            if wav is None:
                problems.append((segment_id, "no wav file"))
                continue
            if segment_id.lower() in seen:
                problems.append((segment_id, f"listed twice (again in {item}); first kept"))
                continue
            seen.add(segment_id.lower())
            text = read_text(texts[segment_id.lower()]) if segment_id.lower() in texts else ""
            session, script, speaker, _ = match.groups()
            utterances.append(Utterance(segment_id, int(session), int(script), speaker[:4].capitalize() + speaker[4:].upper(),
                                        start, end, EMOTIONS.index(emotion), valence, arousal, wav, text))
    return sorted(utterances, key=lambda u: (u.session, u.segment_id.lower())), problems


def read_e4(path):
    """(values float64 (n,), times_ms int64 (n,), segment ids [str] ('' outside utterances), bad line count) of one
    E4 file. Its two header lines are the start (`1597976852.000000,2020-0821-1127-32-000`, never a sample) and the
    rate (`4.000000,hz`; a bare `4.000000` is accepted); a second line that is no rate, or a rate other than 4 Hz,
    is an InputError: the node windows count 4-Hz samples."""
    values, times, segments, bad = [], [], [], 0
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as file:
        rows = list(csv.reader(file))
    rate_line = [cell.strip().lower() for cell in rows[1]] if len(rows) > 1 else []
    try:
        rate = float(rate_line[0]) if [cell for cell in rate_line[1:] if cell] in ([], ["hz"]) else None
    except (IndexError, ValueError):
        rate = None
    if rate is None:
        raise InputError(f"{path}: line 2 is {','.join(rate_line)[:40]!r}, not the E4 sample rate (e.g. `4.000000,hz`)")
    if not math.isclose(rate, SAMPLE_HZ):
        raise InputError(f"{path}: sampled at {rate:g} Hz (line 2); the nodes need {SAMPLE_HZ}-Hz E4 files")
    for row in rows[2:]:
        if not row or not any(cell.strip() for cell in row):
            continue
        time_ms = parse_e4_time(row[1]) if len(row) > 1 else None
        try:
            value = float(row[0])
        except ValueError:
            value = None
        if time_ms is None or value is None or not math.isfinite(value):  # NaN/inf would poison the z-scores
            bad += 1
            continue
        values.append(value), times.append(time_ms), segments.append(row[2].strip().lower() if len(row) > 2 else "")
    return np.asarray(values, np.float64), np.asarray(times, np.int64), segments, bad


def window_around(values, centres, width=WINDOW):
    """values (n,), centres (m,) -> (m, width) windows centred on each index, edge-padded."""
    half = width // 2
    padded = np.pad(values, half, mode="edge")
    return padded[centres[:, None] + np.arange(width)[None, :]]


def build_nodes(root, utterances):
    """One node per EDA sample whose third column names a known utterance.

    Returns (nodes, problems): nodes = {"utterance" (N,) index into utterances, "time_ms" (N,) int64, "eda",
    "temp" (N, 11) float32 windows of the per-subject z-scored signals, "offset_s" (N,) the sample's time
    after the utterance's first E4 sample (where its audio window is centred)}. TEMP is read at the
    nearest timestamp of the same subject's TEMP file."""
    root = Path(root)
    files = {signal: index_files(root / signal, ".csv") for signal in ("EDA", "TEMP")}
    by_stream, problems = {}, []
    for index, utterance in enumerate(utterances):
        by_stream.setdefault(utterance.stream, {})[utterance.segment_id.lower()] = index
    streams = {}
    for stream, segment_index in by_stream.items():
        missing = [signal for signal in files if stream not in files[signal]]
        if missing:
            problems.append((stream, f"no {'/'.join(missing)} file; its {len(segment_index)} utterances have no nodes"))
            continue
        try:
            loaded = {signal: read_e4(files[signal][stream]) for signal in files}
        except InputError as error:
            problems.append((stream, f"{error}; its {len(segment_index)} utterances have no nodes"))
            continue
        for signal, (values, _, _, bad) in loaded.items():
            if bad:
                problems.append((str(files[signal][stream]), f"{bad} malformed line(s) skipped"))
            if not len(values):
                problems.append((str(files[signal][stream]), "no samples"))
        if all(len(loaded[signal][0]) for signal in files):
            streams[stream] = loaded
    subject_stats = {}
    for stream, loaded in streams.items():
        subject = stream.split("_")[-1]
        for signal in files:
            subject_stats.setdefault((subject, signal), []).append(loaded[signal][0])
    subject_stats = {key: (np.concatenate(parts).mean(), np.concatenate(parts).std() + 1e-6) for key, parts in subject_stats.items()}
    columns = {name: [] for name in ("utterance", "time_ms", "eda", "temp", "offset_s")}
    for stream, loaded in sorted(streams.items()):
        subject = stream.split("_")[-1]
        (eda, eda_ms, eda_segments, _), (temp, temp_ms, _, _) = loaded["EDA"], loaded["TEMP"]
        eda = (eda - subject_stats[subject, "EDA"][0]) / subject_stats[subject, "EDA"][1]
        temp = (temp - subject_stats[subject, "TEMP"][0]) / subject_stats[subject, "TEMP"][1]
        inside = np.array([i for i, segment in enumerate(eda_segments) if segment], dtype=np.int64)
        unknown = sorted({eda_segments[i] for i in inside if eda_segments[i] not in by_stream[stream]})
        if unknown:
            problems.append((str(files["EDA"][stream]), f"{len(unknown)} segment id(s) not in the annotation, e.g. {unknown[0]}"))
        inside = np.array([i for i in inside if eda_segments[i] in by_stream[stream]], dtype=np.int64)
        if not len(inside):
            continue
        utterance_ids = np.array([by_stream[stream][eda_segments[i]] for i in inside])
        first_ms = {u: eda_ms[inside[utterance_ids == u]].min() for u in np.unique(utterance_ids)}
        temp_order = np.argsort(temp_ms, kind="stable")
        nearest = temp_order[np.clip(np.searchsorted(temp_ms[temp_order], eda_ms[inside]), 0, len(temp_ms) - 1)]
        columns["utterance"].append(utterance_ids)
        columns["time_ms"].append(eda_ms[inside])
        columns["eda"].append(window_around(eda, inside))
        columns["temp"].append(window_around(temp, nearest))
        columns["offset_s"].append(np.array([(eda_ms[i] - first_ms[u]) / 1000 for i, u in zip(inside, utterance_ids)]))
    without = sorted(set(range(len(utterances))) - set(np.concatenate(columns["utterance"]).tolist() if columns["utterance"] else []))
    for index in without:
        if utterances[index].stream in streams:
            problems.append((utterances[index].segment_id, "no E4 sample inside this utterance; no nodes"))
    if not columns["utterance"]:
        raise InputError(f"{root}: no E4 samples inside any annotated utterance (EDA/TEMP folders)")
    dtypes = {"utterance": np.int64, "time_ms": np.int64, "eda": np.float32, "temp": np.float32, "offset_s": np.float32}
    return {name: np.concatenate(parts).astype(dtypes[name]) for name, parts in columns.items()}, problems


def utterance_table(utterances):
    """Rows for utterances.csv: the per-utterance emotion/arousal/valence table (what the highlight probes read)."""
    yield ("segment_id", "session", "speaker", "emotion", "valence", "arousal", "start_s", "end_s", "wav", "text", "clean_text")
    for u in utterances:
        yield (u.segment_id, u.session, u.speaker, EMOTIONS[u.emotion], u.valence, u.arousal, u.start_s, u.end_s, str(u.wav), u.text,
               u.clean_text)
