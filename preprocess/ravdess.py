"""RAVDESS layout and labelled-file manifests -> one record per trial.

RAVDESS names are `Actor_XX/MM-VV-EE-II-SS-RR-AA.{mp4,wav}`: modality (01 audio-visual mp4, 02 video-only
mp4, 03 audio-only wav), vocal channel (01 speech, 02 song), emotion (01-08), intensity (01 normal,
02 strong), statement (01, 02), repetition (01, 02), actor (01-24, odd male). The 01/02/03 files of one
performance are one trial: they share every field but the modality and always stay in one split.

A manifest is a CSV with columns `path,label,group` (group = speaker), paths relative to the CSV.
"""
import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from common import InputError
from preprocess.tree import walk_files

EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
FOUR_CLASSES = ("sad", "happy", "disgust", "angry")  # the seed's 4-class reduction
MODALITY_BY_CODE = {"01": "av", "02": "video", "03": "audio"}
CHANNEL_BY_CODE = {"01": "speech", "02": "song"}
NAME_PATTERN = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")
MEDIA_SUFFIXES = {".mp4", ".wav"}


@dataclass
class Trial:
    """One performance: the files that hold its audio and/or video, its label and its speaker group."""
    key: str            # e.g. "01-03-02-01-02-07" (channel..actor, modality removed) or the manifest path
    label: str
    group: str          # actor number as text ("07") or the manifest's group
    channel: str = "speech"
    files: dict = field(default_factory=dict)  # modality ("av", "video", "audio") -> Path

    def audio_path(self):
        return self.files.get("audio") or self.files.get("av")

    def video_path(self):
        return self.files.get("av") or self.files.get("video")


def parse_name(path):
    """Fields of a RAVDESS file name, or raise InputError saying which field is wrong."""
    path = Path(path)
    match = NAME_PATTERN.match(path.stem)
    if not match:
        raise InputError(f"{path}: not a RAVDESS name (expected MM-VV-EE-II-SS-RR-AA, seven 2-digit fields)")
    modality, channel, emotion, intensity, statement, repetition, actor = match.groups()
    checks = [("modality", modality, MODALITY_BY_CODE), ("vocal channel", channel, CHANNEL_BY_CODE),
              ("emotion", emotion, {f"{i:02d}" for i in range(1, 9)}), ("intensity", intensity, {"01", "02"}),
              ("statement", statement, {"01", "02"}), ("repetition", repetition, {"01", "02"}),
              ("actor", actor, {f"{i:02d}" for i in range(1, 25)})]
    for name, value, allowed in checks:
        if value not in allowed:
            raise InputError(f"{path}: unknown {name} code {value}")
    expected_suffix = ".wav" if modality == "03" else ".mp4"
    if path.suffix.lower() != expected_suffix:
        raise InputError(f"{path}: modality {modality} should be a {expected_suffix} file")
    return {"modality": MODALITY_BY_CODE[modality], "channel": CHANNEL_BY_CODE[channel],
            "emotion": EMOTIONS[int(emotion) - 1], "intensity": int(intensity), "statement": int(statement),
            "repetition": int(repetition), "actor": int(actor),
            "trial_key": "-".join([channel, emotion, intensity, statement, repetition, actor])}


def scan_ravdess(root, *, channel="speech"):
    """All trials under `root` (Actor_XX folders, any depth, folders that are symbolic links followed). Returns
    (trials, problems) where problems is a list of (path, reason) for files that do not parse; they are reported,
    never guessed."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: RAVDESS folder not found")
    trials, problems = {}, []
    for path in walk_files(root, MEDIA_SUFFIXES):
        try:
            fields = parse_name(path)
            folder_actor = re.fullmatch(r"Actor_(\d{2})", path.parent.name)
            if folder_actor and int(folder_actor.group(1)) != fields["actor"]:
                raise InputError(f"{path}: actor {fields['actor']:02d} in the name but folder {path.parent.name}")
        except InputError as error:
            problems.append((path, str(error).split(": ", 1)[1]))
            continue
        if channel != "all" and fields["channel"] != channel:
            continue
        trial = trials.setdefault(fields["trial_key"], Trial(fields["trial_key"], fields["emotion"], f"{fields['actor']:02d}", fields["channel"]))
        trial.files[fields["modality"]] = path
    return list(trials.values()), problems


def read_manifest(csv_path):
    """Trials from a `path,label,group` CSV; each file is its own trial (its modality from the suffix)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError(f"{csv_path}: manifest not found")
    with open(csv_path, newline="", encoding="utf-8-sig", errors="replace") as file:  # bad bytes show as U+FFFD, not a crash
        reader = csv.DictReader(file)
        missing = {"path", "label", "group"} - set(reader.fieldnames or [])
        if missing:
            raise InputError(f"{csv_path}: missing column(s) {', '.join(sorted(missing))} (need path,label,group)")
        trials, problems = [], []
        for line_number, row in enumerate(reader, start=2):
            path = (csv_path.parent / row["path"]).resolve() if row["path"] else None
            if not path or not row["label"] or not row["group"]:
                problems.append((csv_path, f"line {line_number}: empty path, label or group"))
            elif not path.is_file():
                problems.append((path, f"listed on line {line_number} of {csv_path.name} but not found"))
            else:
                modality = "audio" if path.suffix.lower() in {".wav", ".flac", ".mp3", ".ogg"} else "av"
                trials.append(Trial(str(path), row["label"].strip(), row["group"].strip(), files={modality: path}))
    return trials, problems
