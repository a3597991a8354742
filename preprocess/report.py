"""Highlight outputs from per-second scores: merged segments, scores.csv, an mp4 reel of the segments
(PyAV: video re-encoded, audio copied where an mp4 holds it as it is) and a self-contained report.html (inline SVG
drawn by inline JS, thumbnails and the reel as data URIs, no network): the score with its segments, the emotion
timeline (speech emotion stacked areas, face expression and transcript text emotion heat strips, arousal and loudness
curves), thumbnails with face boxes, the reel playable in the page with a button per segment that seeks the reel to it.

    segments = find_segments(scores, threshold=0.5, merge_gap=2, min_segment=2, top_k=5)
    write_reel(video_path, segments, out_dir / "reel.mp4")
    write_report(out_dir / "report.html", title=..., scores=..., threshold=..., segments=..., thumbnails=...,
                 timeline=..., reel=out_dir / "reel.mp4")
"""
import base64
import bisect
import collections
import json
import math
from fractions import Fraction

import av
import numpy as np

from common import atomic_write
from preprocess.media import MediaError, _open_container, decoded_ahead, display_matrix, use_decoder_threads


def find_segments(scores, *, threshold=None, fraction=None, merge_gap=2, min_segment=2, top_k=None):
    """[{start, end (inclusive seconds), score (mean)}] sorted by start. Seconds at or above `threshold`
    (or the `fraction` of seconds with the highest scores) form runs; runs at most `merge_gap` seconds
    apart are joined, runs shorter than `min_segment` seconds dropped, and with top_k only the k runs
    with the highest mean score kept."""
    scores = np.asarray(scores, dtype=float)
    if fraction is not None:
        keep = max(1, round(fraction * len(scores)))
        marked = np.zeros(len(scores), bool)
        marked[np.argsort(-scores, kind="stable")[:keep]] = True
    else:
        marked = scores >= threshold
    runs = []
    for second in np.flatnonzero(marked):
        if runs and second - runs[-1][1] - 1 <= merge_gap:
            runs[-1][1] = int(second)
        else:
            runs.append([int(second), int(second)])
    segments = [{"start": start, "end": end, "score": float(scores[start:end + 1].mean())}
                for start, end in runs if end - start + 1 >= min_segment]
    if top_k is not None:
        segments = sorted(sorted(segments, key=lambda s: -s["score"])[:top_k], key=lambda s: s["start"])
    return segments


def write_scores_csv(path, scores):
    atomic_write(path, lambda f: f.write("second,score\n" + "".join(f"{i},{s:.6f}\n" for i, s in enumerate(scores))), binary=False)


# the reel is a preview: superfast encodes faster than veryfast, at a bigger file
REEL_PRESET = "superfast"
# audio codecs an mp4 holds as they are: the reel copies their packets instead of decoding and re-encoding them
MP4_AUDIO_AS_IS = {"aac", "mp3", "ac3", "eac3"}
# copied packets are looked for from this long before a span: longer than any packet of those codecs (AAC at 8 kHz: 128 ms)
AUDIO_PACKET_MAX_S = 0.2
# seek to a segment this long before its start (the decoder then warms up before the first frame needed)
SEEK_MARGIN_S = 1.0
# without a keyframe index, seek only past gaps longer than this (decoding on through a shorter gap is cheaper)
SEEK_MIN_GAP_S = 5.0


def stream_start(stream):
    """The stream's first timestamp in seconds, exact (a Fraction: 8.2 - 0.2 in floats falls short of 8)."""
    return stream.start_time * stream.time_base if stream.start_time is not None else Fraction(0)


class _SpanReader:
    """One stream of its own container, read span by span in time order: each span is reached by seeking to
    the keyframe before it, unless reading on from where the previous span ended is cheaper, so only the
    spans and their lead-in are decoded. Items are (start_s, payload), payload = convert(frame), or the packet
    itself with decode=False; an item that reaches past a span's end is offered to the next span again (audio
    frames straddle boundaries)."""

    def __init__(self, source, kind, convert, duration, decode=True, origin=None):
        self.container = _open_container(source)
        streams = self.container.streams.video if kind == "video" else self.container.streams.audio
        self.stream = streams[0]
        for other in self.container.streams:
            if other is not self.stream:
                other.discard = av.stream.Discard.all
        if kind == "video":
            use_decoder_threads(self.stream)
        self.convert, self.duration, self.decode = convert, duration, decode
        self.origin = stream_start(self.stream) if origin is None else origin  # seconds count from here
        entries = self.stream.index_entries  # mp4: complete; mkv/webm: filled lazily, so only trusted for mp4-like files
        self.keyframes = sorted(float(entries[i].timestamp * self.stream.time_base - self.origin)
                                for i in range(len(entries)) if entries[i].is_keyframe) if kind == "video" else []
        self.indexed = kind == "video" and len(self.keyframes) > 1 and self.keyframes[-1] >= self._length() - 20
        self.packets, self.held, self.reached = self.container.demux(self.stream), collections.deque(), 0.0
        self.kind, self.span_start, self.skipping = kind, 0.0, False

    def _length(self):
        return float(self.stream.duration * self.stream.time_base) if self.stream.duration else float("inf")

    def _seconds(self, pts, time_base):
        return float(pts * time_base - self.origin)

    def _peek(self):
        while not self.held:
            packet = next(self.packets, None)
            if packet is None:
                return None
            if not self.decode:
                if packet.pts is not None and packet.size:  # not the demuxer's empty flush packet
                    self.held.append((self._seconds(packet.pts, self.stream.time_base), packet))
                continue
            # the lead-in before a span is decoded only for the frames that later ones refer to: a non-reference
            # frame shown before the span is never written, so the decoder may drop it
            skip = (self.kind == "video" and packet.pts is not None
                    and self._seconds(packet.pts, self.stream.time_base) < self.span_start)
            if skip != self.skipping:
                self.stream.codec_context.skip_frame, self.skipping = ("NONREF" if skip else "DEFAULT"), skip
            for frame in packet.decode():
                if frame.pts is not None:
                    self.held.append((self._seconds(frame.pts, frame.time_base), self.convert(frame)))
        self.reached = self.held[0][0]
        return self.held[0]

    def _seek(self, seconds):
        self.container.seek(int((seconds + self.origin) / self.stream.time_base), backward=True, stream=self.stream)
        self.packets, self.held = self.container.demux(self.stream), collections.deque()

    def span(self, span_start, span_end):
        self.span_start = span_start
        target = max(0.0, span_start - SEEK_MARGIN_S)
        if self.indexed:
            seek = self.keyframes[max(0, bisect.bisect_right(self.keyframes, target) - 1)] > self.reached
        else:
            seek = target - self.reached > SEEK_MIN_GAP_S
        if seek:
            self._seek(target)
            first = self._peek()
            if first is not None and first[0] > span_start:  # landed past the span (a poor index): from the top
                self._seek(0.0)
        while (item := self._peek()) is not None and item[0] < span_end:
            if item[0] + self.duration(item[1]) > span_end:
                yield item  # stays held for the next span
                return
            self.held.popleft()
            yield item

    def close(self):
        self.container.close()


def _span_pictures(video, spans, width, height):
    """(span index, start_s, yuv420p frame of width x height) for every frame shown inside a span, in reel order."""
    for index, (span_start, span_end) in enumerate(spans):
        for start, frame in video.span(span_start, span_end):
            if start >= span_start:
                yield index, start, frame.reformat(width=width, height=height, format="yuv420p")


def write_reel(source, segments, out_path):
    """The segments' frames and audio (end inclusive, whole seconds) back to back in one mp4. Video is decoded
    and re-encoded (libx264), exact to the frame; audio that an mp4 holds as it is (AAC, MP3, AC-3) is copied
    packet by packet, each span's audio within half a packet (~11 ms for 48-kHz AAC) of its frames,
    other audio is decoded and re-encoded as AAC. Each frame keeps its time within its span (a variable frame rate
    stays in sync with the audio) and the source's display matrix is copied (a phone's portrait clip plays upright).
    Video and audio are each read span by span from their own container (_SpanReader: seeking, so a short reel of a
    long video decodes little of it), the video decoded a few frames ahead of the encoder in a second thread; memory
    does not grow with the video's length."""
    spans = sorted((float(s["start"]), float(s["end"] + 1)) for s in segments)
    tmp_path = out_path.with_name(f".{out_path.name}.tmp.mp4")
    with _open_container(source) as container:
        if not container.streams.video:
            raise MediaError(source, "no video stream")
        video_in, has_audio = container.streams.video[0].codec_context, bool(container.streams.audio)
        rate = container.streams.video[0].average_rate or container.streams.video[0].guessed_rate or 25
        audio_stream = container.streams.audio[0] if has_audio else None
        copy_audio = has_audio and audio_stream.codec_context.codec.canonical_name in MP4_AUDIO_AS_IS
        audio_in = audio_stream.codec_context if has_audio else None
        audio_time_base = audio_stream.time_base if has_audio else None
        origin = stream_start(container.streams.video[0])  # audio times count from the video's start too (A/V offset kept)
        video_time_base = container.streams.video[0].time_base
    video = _SpanReader(source, "video", convert=lambda frame: frame, duration=lambda frame: 0.0)
    audio = pictures = None
    try:
        with av.open(str(tmp_path), mode="w") as output:
            video_out = output.add_stream("libx264", rate=rate)
            video_out.width, video_out.height = video_in.width // 2 * 2, video_in.height // 2 * 2
            video_out.pix_fmt, video_out.options = "yuv420p", {"crf": "23", "preset": REEL_PRESET}
            video_out.codec_context.time_base = video_time_base  # frames keep their source times (VFR), offset per span
            if copy_audio:
                with _open_container(source) as container:
                    audio_out = output.add_stream_from_template(container.streams.audio[0])
                audio = _SpanReader(source, "audio", convert=None, decode=False, origin=origin,
                                    duration=lambda packet: float((packet.duration or 0) * audio_time_base))
            elif has_audio:
                layout = "mono" if audio_in.channels == 1 else "stereo"
                audio_out = output.add_stream("aac", rate=audio_in.sample_rate)
                audio_out.layout = layout
                resampler = av.AudioResampler(format="fltp", layout=layout, rate=audio_in.sample_rate)
                audio = _SpanReader(source, "audio", origin=origin, duration=lambda samples: samples.shape[1] / audio_in.sample_rate,
                                    convert=lambda frame: np.concatenate(  # (channels, n) fltp
                                        [plain.to_ndarray() for plain in resampler.resample(frame)], axis=1))
            pictures = decoded_ahead(_span_pictures(video, spans, video_out.width, video_out.height))
            picture = next(pictures, None)
            if picture is not None and display_matrix(picture[2]) is not None:  # before anything is muxed
                video_out.set_display_matrix(display_matrix(picture[2]))
            reel_start = samples_written = 0  # reel_start: where the span starts in the reel (s; spans are whole seconds)
            audio_end = 0  # copied audio: where the packets so far end, in the source's audio time base
            frame_pts = -1
            for index, (span_start, span_end) in enumerate(spans):
                if copy_audio:
                    # packets are laid end to end (an mp4 player does so anyway); a packet is taken when its middle
                    # falls inside the span and after the audio already written, so each span's audio stays within
                    # half a packet of its frames, and the error does not add up over the spans
                    span_pts = round(reel_start / audio_time_base)
                    span_ticks = round((span_end - span_start) / audio_time_base)
                    for start, packet in audio.span(span_start - AUDIO_PACKET_MAX_S, span_end):
                        middle = span_pts + round((start - span_start) / audio_time_base) + (packet.duration or 0) / 2
                        if audio_end < middle < span_pts + span_ticks:
                            packet.pts = packet.dts = audio_end
                            audio_end += packet.duration or 0  # read before mux, which rescales it to the reel's time base
                            packet.stream = audio_out
                            output.mux(packet)
                for start, samples in audio.span(span_start, span_end) if has_audio and not copy_audio else ():
                    times = start + np.arange(samples.shape[1]) / audio_in.sample_rate
                    keep = (span_start <= times) & (times < span_end)
                    if keep.any():
                        kept = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, keep]), format="fltp", layout=layout)
                        kept.sample_rate, kept.pts = audio_in.sample_rate, samples_written
                        output.mux(audio_out.encode(kept))
                        samples_written += int(keep.sum())
                while picture is not None and picture[0] == index:
                    _, start, frame = picture
                    # strictly increasing even where a damaged source repeats a timestamp
                    frame_pts = max(frame_pts + 1, round((reel_start + start - span_start) / video_time_base))
                    frame.pts, frame.time_base = frame_pts, video_time_base
                    output.mux(video_out.encode(frame))
                    picture = next(pictures, None)
                reel_start += span_end - span_start
            output.mux(video_out.encode(None))
            if has_audio and not copy_audio:
                output.mux(audio_out.encode(None))
    finally:
        if pictures is not None:
            pictures.close()  # stops the decoding thread before its container closes
        video.close()
        if audio is not None:
            audio.close()
    tmp_path.replace(out_path)
    return out_path


def jpeg_data_uri(frame, height=72):
    """uint8 RGB (H, W, 3) -> a small JPEG (PyAV's mjpeg encoder) as a data: URI."""
    width = max(2, round(frame.shape[1] * height / frame.shape[0]) // 2 * 2)
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height, encoder.pix_fmt, encoder.time_base = width, height, "yuvj420p", Fraction(1, 25)
    picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24").reformat(width=width, height=height, format="yuvj420p")
    jpeg = b"".join(bytes(packet) for packet in [*encoder.encode(picture), *encoder.encode(None)])
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


def thumbnail_stride(duration_s, count=48):
    return max(1, math.ceil((duration_s or 1) / count))


# the reel is put inside report.html (a data: URI) up to this size; a bigger one is linked as reel.mp4 beside it
REPORT_EMBED_MAX_BYTES = 25_000_000


def write_report(path, *, title, scores, threshold, segments, probes=None, thumbnails=(), timeline=None, reel=None,
                 scores_from=""):
    """One self-contained HTML file; the data is embedded as JSON and drawn as SVG by inline JS.
    probes: {name: [value per second]} (the seed's audio probes); thumbnails: [{"t": second, "src": data URI}];
    timeline: preprocess.timeline's arrays (speech emotion as stacked areas, face expressions and text emotion as heat
    strips, arousal curves, face boxes on the thumbnails); reel: the reel mp4, played in the page (embedded up to
    REPORT_EMBED_MAX_BYTES, else linked by its name, so it must stay beside the report); each segment's play button
    seeks the reel to that segment."""
    def rounded(values):
        return [None if not np.isfinite(v) else round(float(v), 3) for v in np.asarray(values, dtype=float)]
    data = {"title": title, "scores": [round(float(s), 4) for s in scores], "threshold": threshold, "scores_from": scores_from,
            "segments": segments, "probes": {k: rounded(vals) for k, vals in (probes or {}).items()},
            "thumbnails": list(thumbnails), "reel": None}
    if timeline is not None:
        speech = timeline["speech"].astype(bool)
        data["timeline"] = {"speech": [int(v) for v in speech], "loudness": rounded(timeline["loudness_dbfs"]),
                            "width": timeline.get("frame_width", 0), "height": timeline.get("frame_height", 0)}
        if "speech_probabilities" in timeline:
            data["timeline"]["speech_classes"] = list(timeline["speech_classes"])
            data["timeline"]["speech_probabilities"] = [rounded(row) if spoken else None
                                                        for row, spoken in zip(timeline["speech_probabilities"], speech)]
            data["timeline"]["speech_arousal"] = rounded(np.where(speech, timeline["speech_arousal"], np.nan))
        if "face_box" in timeline:
            data["timeline"]["face_box"] = [rounded(box) if np.isfinite(box).all() else None for box in timeline["face_box"]]
        if "text_probabilities" in timeline:
            data["timeline"]["text_classes"] = list(timeline["text_classes"])
            data["timeline"]["text_probabilities"] = [rounded(row) if np.isfinite(row).all() else None for row in timeline["text_probabilities"]]
        if "face_probabilities" in timeline:
            data["timeline"]["face_classes"] = list(timeline["face_classes"])
            data["timeline"]["face_probabilities"] = [rounded(row) if np.isfinite(row).all() else None for row in timeline["face_probabilities"]]
            data["timeline"]["face_arousal"] = rounded(timeline["face_arousal"])
    if reel is not None and reel.is_file():
        embed = reel.stat().st_size <= REPORT_EMBED_MAX_BYTES
        data["reel"] = "data:video/mp4;base64," + base64.b64encode(reel.read_bytes()).decode() if embed else reel.name
    payload = json.dumps(data, ensure_ascii=False, allow_nan=False).replace("</", "<\\/")
    html = TEMPLATE.replace("__TITLE__", _escape(title)).replace("__DATA__", payload)
    atomic_write(path, lambda f: f.write(html), binary=False)
    return path


def _escape(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Highlights: __TITLE__</title>
<style>
body{font:14px system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","Noto Sans CJK KR","Noto Sans KR","Apple SD Gothic Neo",
"Malgun Gothic","Nanum Gothic","Noto Sans CJK JP","Noto Sans CJK SC","Hiragino Sans","Microsoft YaHei",sans-serif;margin:20px;color:#222;max-width:1040px}
svg{background:#fafafa;border:1px solid #ddd;display:block}h2{margin:22px 0 6px;font-size:17px}
.segment{fill:#f5a623;opacity:.35}#score-line{fill:none;stroke:#1565c0;stroke-width:1.5}
.threshold{stroke:#c62828;stroke-dasharray:4 3}.axis{font-size:11px;fill:#555}.label{font-size:11px;fill:#333}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px}.legend span{margin-right:10px;white-space:nowrap}
.thumb{position:relative;display:inline-block;margin:1px;line-height:0}.thumb img{height:72px}
.face-box{position:absolute;border:2px solid #00e676;box-sizing:border-box}.thumb small{position:absolute;left:2px;bottom:2px;
color:#fff;font-size:10px;line-height:1;text-shadow:0 0 2px #000}video{max-width:640px;max-height:360px;background:#000}
button{cursor:pointer}.note{color:#666}
</style></head><body>
<h1>Highlights: __TITLE__</h1>
<p id="summary"></p>
<h2>Highlight score per second</h2><svg id="timeline" width="1000" height="200"></svg>
<div id="emotions"></div>
<h2>Reel</h2><div id="reel-box"></div>
<h2>Segments</h2><table id="segments"><tr><th>#</th><th>start (s)</th><th>end (s)</th><th>mean score</th><th>thumbnail</th><th>play</th></tr></table>
<h2>Thumbnails</h2><div id="thumbs"></div>
<script id="report-data" type="application/json">__DATA__</script>
<script>
const data = JSON.parse(document.getElementById('report-data').textContent);
const NS = 'http://www.w3.org/2000/svg', W = 1000, PAD = 30;
const n = Math.max(1, data.scores.length);
const x = t => PAD + (W - 2 * PAD) * t / n;
const COLOURS = {neutral: '#9e9e9e', calm: '#80cbc4', happy: '#fdd835', joy: '#fdd835', sad: '#1e88e5', sadness: '#1e88e5',
  angry: '#e53935', anger: '#e53935', fearful: '#8e24aa', fear: '#8e24aa', disgust: '#43a047', surprised: '#fb8c00', surprise: '#fb8c00'};
const SPARE = ['#1565c0', '#2e7d32', '#c62828', '#6a1b9a', '#ef6c00', '#00838f', '#5d4037', '#ad1457', '#000', '#777'];
const colour = (name, i) => COLOURS[name] || SPARE[i % SPARE.length];
function el(parent, name, attrs, text) { const e = document.createElementNS(NS, name); for (const k in attrs) e.setAttribute(k, attrs[k]); if (text !== undefined) e.textContent = text; parent.appendChild(e); return e; }
function chart(id, title, height) {
  const box = document.getElementById('emotions');
  box.insertAdjacentHTML('beforeend', '<h2>' + title + '</h2>');
  const svg = el(box, 'svg', {id: id, width: W, height: height});
  el(svg, 'line', {x1: PAD, y1: height - PAD, x2: W - PAD, y2: height - PAD, stroke: '#999'});
  for (let i = 0; i <= 10; i++) { const t = Math.round(n * i / 10); el(svg, 'text', {x: x(t), y: height - 10, class: 'axis', 'text-anchor': 'middle'}, t + 's'); }
  return svg;
}
function legend(names, colours) { const div = document.getElementById('emotions').appendChild(document.createElement('div')); div.className = 'legend';
  names.forEach((name, i) => div.insertAdjacentHTML('beforeend', '<span><span style="color:' + (colours ? colours[i] : colour(name, i)) + '">&#9632;</span> ' + name + '</span>')); }
function yOf(v, height) { return height - PAD - (height - 2 * PAD) * v; }
function steps(values, height) {  // one level per second, joined across consecutive seconds, broken at nulls
  let d = '', pen = false;
  values.forEach((v, t) => { if (v === null) { pen = false; return; }
    d += (pen ? 'L' : 'M') + x(t).toFixed(1) + ',' + yOf(v, height).toFixed(1) + 'L' + x(t + 1).toFixed(1) + ',' + yOf(v, height).toFixed(1); pen = true; });
  return d;
}
function line(values, height) {  // a path through the non-null values, broken at nulls
  let d = '', pen = false;
  values.forEach((v, t) => { if (v === null) { pen = false; return; } d += (pen ? 'L' : 'M') + x(t + 0.5).toFixed(1) + ',' + yOf(v, height).toFixed(1); pen = true; });
  return d;
}
// highlight score, threshold and segments
const timeline = document.getElementById('timeline'), H = 200;
el(timeline, 'line', {x1: PAD, y1: H - PAD, x2: W - PAD, y2: H - PAD, stroke: '#999'});
for (let i = 0; i <= 10; i++) { const t = Math.round(n * i / 10); el(timeline, 'text', {x: x(t), y: H - 10, class: 'axis', 'text-anchor': 'middle'}, t + 's'); }
data.segments.forEach(s => el(timeline, 'rect', {class: 'segment', x: x(s.start), y: PAD, width: x(s.end + 1) - x(s.start), height: H - 2 * PAD}));
if (data.threshold !== null) el(timeline, 'line', {class: 'threshold', x1: PAD, x2: W - PAD, y1: yOf(data.threshold, H), y2: yOf(data.threshold, H)});
el(timeline, 'path', {id: 'score-line', d: line(data.scores, H)});
const tl = data.timeline;
if (tl && tl.speech_probabilities) {  // stacked areas, one band per class, drawn where the energy rule hears speech
  const names = tl.speech_classes, h = 200, svg = chart('speech-emotion', 'Speech emotion per second (stacked; blank: no speech)', h);
  const bottom = new Array(n).fill(0);
  names.forEach((name, c) => {
    let d = '';
    tl.speech_probabilities.forEach((row, t) => { if (row === null) return;
      const y0 = yOf(bottom[t], h), y1 = yOf(bottom[t] + row[c], h);
      d += 'M' + x(t).toFixed(1) + ',' + y0.toFixed(1) + 'L' + x(t + 1).toFixed(1) + ',' + y0.toFixed(1) + 'L' + x(t + 1).toFixed(1) + ',' + y1.toFixed(1) + 'L' + x(t).toFixed(1) + ',' + y1.toFixed(1) + 'Z';
      bottom[t] += row[c]; });
    el(svg, 'path', {class: 'speech-area', d: d, fill: colour(name, c), stroke: 'none'}).appendChild(document.createElementNS(NS, 'title')).textContent = name;
  });
  legend(names);
}
function heatStrip(id, title, names, rows, cellClass) {  // one row per class, more opaque = more probable; grey: nothing read
  const row = 14, h = PAD + row * names.length + 4, svg = chart(id, title, h + PAD);
  names.forEach((name, c) => el(svg, 'text', {x: PAD - 3, y: 4 + row * c + row - 3, class: 'label', 'text-anchor': 'end'}, name.slice(0, 4)));
  rows.forEach((probabilities, t) => names.forEach((name, c) => el(svg, 'rect', {class: cellClass, x: x(t), y: 4 + row * c,
    width: Math.max(0.5, x(t + 1) - x(t)), height: row - 1, fill: probabilities === null ? '#e0e0e0' : colour(name, c),
    'fill-opacity': probabilities === null ? 1 : Math.max(0.04, probabilities[c]).toFixed(3)})));
}
if (tl && tl.face_probabilities) heatStrip('face-expression', 'Face expression per second (heat strip; grey: no face)', tl.face_classes, tl.face_probabilities, 'face-cell');
if (tl && tl.text_probabilities) heatStrip('text-emotion', 'Text emotion of the transcript line per second (grey: no line)', tl.text_classes, tl.text_probabilities, 'text-cell');
if (tl && (tl.speech_arousal || tl.face_arousal)) {
  const h = 160, svg = chart('arousal', 'Arousal (0 calm - 1 excited) and loudness', h);
  const loud = tl.loudness.map(v => Math.max(0, Math.min(1, (v + 60) / 60)));
  el(svg, 'path', {id: 'loudness-line', d: line(loud, h), fill: 'none', stroke: '#bdbdbd'});
  if (tl.speech_arousal) el(svg, 'path', {id: 'arousal-line', d: steps(tl.speech_arousal, h), fill: 'none', stroke: '#d81b60', 'stroke-width': 2});
  if (tl.face_arousal) el(svg, 'path', {id: 'face-arousal-line', d: steps(tl.face_arousal, h), fill: 'none', stroke: '#3949ab', 'stroke-width': 1.5});
  const shown = [[tl.speech_arousal, 'speech arousal', '#d81b60'], [tl.face_arousal, 'face arousal', '#3949ab'], [true, 'loudness (-60..0 dBFS)', '#bdbdbd']].filter(p => p[0]);
  legend(shown.map(p => p[1]), shown.map(p => p[2]));
}
if (Object.keys(data.probes).length) {
  const h = 200, svg = chart('probes', 'Audio emotion probes over time', h);
  Object.entries(data.probes).forEach(([name, values], i) => {
    const scaled = name === 'arousal' || name === 'valence' ? values.map(v => v === null ? null : (v - 1) / 4) : values;
    el(svg, 'path', {class: 'probe-line', d: line(scaled, h), fill: 'none', stroke: SPARE[i % SPARE.length]});
  });
  legend(Object.keys(data.probes), Object.keys(data.probes).map((_, i) => SPARE[i % SPARE.length]));
}
// thumbnails, with the face box where one was found that second
function thumbnail(th) {
  const box = document.createElement('span'); box.className = 'thumb'; box.title = th.t + ' s';
  const img = document.createElement('img'); img.src = th.src; box.appendChild(img);
  const face = tl && tl.face_box ? tl.face_box[th.t] : null;
  if (face && tl.width && tl.height) { const f = document.createElement('span'); f.className = 'face-box';
    f.style.left = (100 * face[0] / tl.width) + '%'; f.style.top = (100 * face[1] / tl.height) + '%';
    f.style.width = (100 * (face[2] - face[0]) / tl.width) + '%'; f.style.height = (100 * (face[3] - face[1]) / tl.height) + '%'; box.appendChild(f); }
  box.insertAdjacentHTML('beforeend', '<small>' + th.t + 's</small>');
  return box;
}
const thumbs = document.getElementById('thumbs');
data.thumbnails.forEach(th => thumbs.appendChild(thumbnail(th)));
const nearest = t => data.thumbnails.reduce((best, th) => Math.abs(th.t - t) < Math.abs(best.t - t) ? th : best, data.thumbnails[0]);
// the reel holds the segments back to back: segment i starts where the ones before it end
let video = null, stopAt = null;
if (data.reel) {
  video = document.createElement('video'); video.id = 'reel'; video.controls = true; video.preload = 'metadata'; video.src = data.reel;
  video.addEventListener('timeupdate', () => { if (stopAt !== null && video.currentTime >= stopAt) { video.pause(); stopAt = null; } });
  document.getElementById('reel-box').appendChild(video);
} else { document.getElementById('reel-box').innerHTML = '<p class="note">no reel (no segment, or no video stream)</p>'; }
const table = document.getElementById('segments');
let offset = 0;
data.segments.forEach((s, i) => { const row = table.insertRow(); [i + 1, s.start, s.end + 1, s.score.toFixed(3)].forEach(v => row.insertCell().textContent = v);
  const cell = row.insertCell(); if (data.thumbnails.length) cell.appendChild(thumbnail(nearest(s.start)));
  const start = offset, length = s.end - s.start + 1; offset += length;
  if (video) { const button = document.createElement('button'); button.className = 'play-segment'; button.textContent = '\u25B6 ' + length + ' s';
    button.dataset.reelStart = start; button.onclick = () => { video.currentTime = start; stopAt = start + length; video.play(); };
    row.insertCell().appendChild(button); } else row.insertCell().textContent = '-'; });
document.getElementById('summary').textContent = n + ' s scored' + (data.scores_from ? ' (' + data.scores_from + ')' : '') + '; ' +
  data.segments.length + ' highlight segment(s)' + (data.threshold !== null ? ', threshold ' + data.threshold : '');
document.body.dataset.drawn = 'yes';
</script></body></html>
"""
