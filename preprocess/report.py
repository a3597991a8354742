"""Highlight outputs from per-second scores: merged segments, scores.csv, an mp4 reel of the segments
(PyAV, streaming re-encode with audio) and a self-contained report.html (inline SVG drawn by inline JS,
thumbnails as data URIs, no network).

    segments = find_segments(scores, threshold=0.5, merge_gap=2, min_segment=2, top_k=5)
    write_reel(video_path, segments, out_dir / "reel.mp4")
    write_report(out_dir / "report.html", title=..., scores=..., threshold=..., segments=..., probes=..., thumbnails=...)
"""
import base64
import json
import math
from fractions import Fraction

import av
import numpy as np

from common import atomic_write
from preprocess.media import MediaError, _open_container


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


def write_reel(source, segments, out_path):
    """Re-encode the segments' frames and audio (end inclusive, whole seconds) back to back into one mp4,
    demuxing and decoding once, so memory does not grow with the video's length."""
    spans = np.array([(s["start"], s["end"] + 1) for s in segments], dtype=float).reshape(-1, 2)
    tmp_path = out_path.with_name(f".{out_path.name}.tmp.mp4")
    with _open_container(source) as container:
        video_in = container.streams.video[0] if container.streams.video else None
        audio_in = container.streams.audio[0] if container.streams.audio else None
        if video_in is None:
            raise MediaError(source, "no video stream")
        video_in.thread_type = "AUTO"
        rate = video_in.average_rate or video_in.guessed_rate or 25
        with av.open(str(tmp_path), mode="w") as output:
            video_out = output.add_stream("libx264", rate=rate)
            video_out.width, video_out.height = video_in.codec_context.width // 2 * 2, video_in.codec_context.height // 2 * 2
            video_out.pix_fmt, video_out.options = "yuv420p", {"crf": "23", "preset": "veryfast"}
            audio_out = resampler = None
            if audio_in is not None:
                layout = "mono" if audio_in.codec_context.channels == 1 else "stereo"
                audio_out = output.add_stream("aac", rate=audio_in.codec_context.sample_rate)
                audio_out.layout = layout
                resampler = av.AudioResampler(format="fltp", layout=layout, rate=audio_in.codec_context.sample_rate)
            frames_written = samples_written = 0
            origin = {stream: float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
                      for stream in (video_in, audio_in) if stream is not None}
            for packet in container.demux(*origin):
                for frame in packet.decode():
                    if frame.pts is None:
                        continue
                    start = float(frame.pts * frame.time_base) - origin[packet.stream]
                    if packet.stream is video_in:
                        if ((spans[:, 0] <= start) & (start < spans[:, 1])).any():
                            picture = frame.reformat(width=video_out.width, height=video_out.height, format="yuv420p")
                            picture.pts, picture.time_base = frames_written, 1 / rate
                            output.mux(video_out.encode(picture))
                            frames_written += 1
                        continue
                    for plain in resampler.resample(frame):
                        samples = plain.to_ndarray()  # (channels, n) fltp
                        times = start + np.arange(samples.shape[1]) / plain.sample_rate
                        keep = ((spans[:, :1] <= times) & (times < spans[:, 1:])).any(0)
                        if keep.any():
                            kept = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, keep]), format="fltp", layout=audio_out.layout.name)
                            kept.sample_rate, kept.pts = plain.sample_rate, samples_written
                            output.mux(audio_out.encode(kept))
                            samples_written += int(keep.sum())
            output.mux(video_out.encode(None))
            if audio_out is not None:
                output.mux(audio_out.encode(None))
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


def write_report(path, *, title, scores, threshold, segments, probes, thumbnails):
    """One self-contained HTML file; the data is embedded as JSON and drawn as SVG by inline JS.
    probes: {name: [value per second]}; thumbnails: [{"t": second, "src": data URI}]."""
    data = {"title": title, "scores": [round(float(s), 4) for s in scores], "threshold": threshold,
            "segments": segments, "probes": {k: [round(float(v), 4) for v in vals] for k, vals in probes.items()},
            "thumbnails": thumbnails}
    payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    html = TEMPLATE.replace("__TITLE__", _escape(title)).replace("__DATA__", payload)
    atomic_write(path, lambda f: f.write(html), binary=False)
    return path


def _escape(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Highlights: __TITLE__</title>
<style>
body{font:14px sans-serif;margin:20px;color:#222}svg{background:#fafafa;border:1px solid #ddd}
.segment{fill:#f5a623;opacity:.35}#score-line{fill:none;stroke:#1565c0;stroke-width:1.5}
.threshold{stroke:#c62828;stroke-dasharray:4 3}.axis{font-size:11px;fill:#555}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px}#thumbs img{margin:1px}
</style></head><body>
<h1>Highlights: __TITLE__</h1>
<p id="summary"></p>
<h2>Highlight score per second</h2><svg id="timeline" width="1000" height="220"></svg>
<h2>Audio emotion probes over time</h2><svg id="probes" width="1000" height="220"></svg><div id="legend"></div>
<h2>Thumbnails</h2><div id="thumbs"></div>
<h2>Segments</h2><table id="segments"><tr><th>#</th><th>start (s)</th><th>end (s)</th><th>mean score</th><th>thumbnail</th></tr></table>
<script id="report-data" type="application/json">__DATA__</script>
<script>
const data = JSON.parse(document.getElementById('report-data').textContent);
const NS = 'http://www.w3.org/2000/svg', W = 1000, H = 220, PAD = 30;
const n = Math.max(1, data.scores.length);
const x = t => PAD + (W - 2 * PAD) * t / n, y = (v, lo, hi) => H - PAD - (H - 2 * PAD) * (v - lo) / ((hi - lo) || 1);
function el(svg, name, attrs, text) { const e = document.createElementNS(NS, name); for (const k in attrs) e.setAttribute(k, attrs[k]); if (text !== undefined) e.textContent = text; svg.appendChild(e); return e; }
function axes(svg) { el(svg, 'line', {x1: PAD, y1: H - PAD, x2: W - PAD, y2: H - PAD, stroke: '#999'});
  for (let i = 0; i <= 10; i++) { const t = Math.round(n * i / 10); el(svg, 'text', {x: x(t), y: H - 10, class: 'axis', 'text-anchor': 'middle'}, t + 's'); } }
function line(values, lo, hi) { return values.map((v, t) => (t ? 'L' : 'M') + x(t + 0.5).toFixed(1) + ',' + y(v, lo, hi).toFixed(1)).join(''); }
const timeline = document.getElementById('timeline');
axes(timeline);
data.segments.forEach(s => el(timeline, 'rect', {class: 'segment', x: x(s.start), y: PAD, width: x(s.end + 1) - x(s.start), height: H - 2 * PAD}));
if (data.threshold !== null) el(timeline, 'line', {class: 'threshold', x1: PAD, x2: W - PAD, y1: y(data.threshold, 0, 1), y2: y(data.threshold, 0, 1)});
el(timeline, 'path', {id: 'score-line', d: line(data.scores, 0, 1)});
const probes = document.getElementById('probes'), colours = ['#1565c0', '#2e7d32', '#c62828', '#6a1b9a', '#ef6c00', '#00838f', '#5d4037', '#ad1457', '#000', '#777'];
axes(probes);
Object.entries(data.probes).forEach(([name, values], i) => {
  const scaled = name === 'arousal' || name === 'valence' ? values.map(v => (v - 1) / 4) : values;
  el(probes, 'path', {class: 'probe-line', d: line(scaled, 0, 1), fill: 'none', stroke: colours[i % colours.length]});
  document.getElementById('legend').insertAdjacentHTML('beforeend', '<span style="color:' + colours[i % colours.length] + '">&#9632; ' + name + '</span> ');
});
const thumbs = document.getElementById('thumbs');
data.thumbnails.forEach(th => { const img = document.createElement('img'); img.src = th.src; img.title = th.t + ' s'; thumbs.appendChild(img); });
const nearest = t => data.thumbnails.reduce((best, th) => Math.abs(th.t - t) < Math.abs(best.t - t) ? th : best, data.thumbnails[0] || {t: 0, src: ''});
const table = document.getElementById('segments');
data.segments.forEach((s, i) => { const row = table.insertRow(); [i + 1, s.start, s.end + 1, s.score.toFixed(3)].forEach(v => row.insertCell().textContent = v);
  const img = document.createElement('img'); img.src = nearest(s.start).src; row.insertCell().appendChild(img); });
document.getElementById('summary').textContent = n + ' s scored; ' + data.segments.length + ' highlight segment(s)' + (data.threshold !== null ? ', threshold ' + data.threshold : '');
document.body.dataset.drawn = 'yes';
</script></body></html>
"""
