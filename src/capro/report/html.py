"""The run report: one self-contained HTML file (inline CSS, images as data URIs, no external URL).

Sections (element ids): ``summary``, ``config``, ``classes``, ``curves``, ``confusion``,
``samples``, ``concepts``, ``graph``. Every input artefact is optional: a missing one turns its
section into a "not available" note naming the file, never an error.
"""

from __future__ import annotations

import datetime as _dt
import html
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from PIL import Image, UnidentifiedImageError

from capro.data.layout import ClassInfo, Record, read_classes, read_split
from capro.data.validate import read_truth
from capro.errors import CaproError
from capro.eval.metrics import confusion_matrix
from capro.eval.noise import anchor_precision
from capro.report import plots
from capro.report.rundir import (
    check_run_dir,
    read_logs,
    read_optional_json,
    read_optional_jsonl,
    resolve_data_root,
)
from capro.report.verdicts import action_of, load_verdicts
from capro.utils.io import atomic_write

SECTIONS = (
    ("summary", "Summary"), ("config", "Configuration"), ("classes", "Classes"),
    ("curves", "Training curves"), ("confusion", "Confusion matrix"),
    ("samples", "Anchors and suspicious samples"), ("concepts", "Textual prototypes"),
    ("graph", "kNN graph"),
)
URL_RE = re.compile(r"(?i)\b(https?|ftp)://")

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#f6f7f9}
header{background:#23395d;color:#fff;padding:14px 28px}
header h1{margin:0;font-size:22px} header p{margin:4px 0 0;font-size:13px;opacity:.85}
nav{background:#fff;border-bottom:1px solid #ddd;padding:8px 28px;font-size:13px}
nav a{margin-right:14px;color:#23395d;text-decoration:none}
main{padding:0 28px 40px}
section{background:#fff;border:1px solid #e1e4e8;border-radius:6px;margin:18px 0;padding:12px 18px}
h2{font-size:18px;margin:4px 0 10px;color:#23395d} h3{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #e1e4e8;padding:3px 8px;text-align:right}
th{background:#f0f2f5} td.l,th.l{text-align:left}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #e1e4e8;border-radius:6px;padding:8px 12px;min-width:120px;background:#fafbfc}
.card .v{font-size:20px;font-weight:600} .card .k{font-size:12px;color:#555}
.na{color:#777;font-style:italic}
pre{background:#f6f8fa;border:1px solid #e1e4e8;padding:8px;font-size:12px;overflow:auto;max-height:300px}
pre.code{max-height:none}
.thumbs{display:flex;flex-wrap:wrap;gap:8px}
.thumb{width:136px;box-sizing:border-box;border:1px solid #e1e4e8;border-radius:4px;padding:4px;font-size:11px;background:#fafbfc;overflow-wrap:anywhere}
.thumb img{display:block;margin:0 auto 3px;image-rendering:pixelated;width:64px;height:64px;object-fit:contain}
.thumb .txt{color:#555;max-height:42px;overflow:hidden}
.kept{color:#2e7d32}.relabeled{color:#b26a00}.removed{color:#b71c1c}
.plot{max-width:100%;height:auto}
"""


@dataclass
class RunView:
    """Everything the report reads from a run directory (and its dataset when found)."""

    run: Path
    names: list[str]
    data_root: Path | None = None
    data_note: str = ""
    metrics: dict = field(default_factory=dict)
    config_text: str | None = None
    verdicts: list[dict] | None = None
    verdict_note: str = ""
    records: dict[str, Record] = field(default_factory=dict)
    truth: dict[str, dict] = field(default_factory=dict)
    anchors: list[dict] | None = None
    anchor_counts: dict | None = None
    concepts: list[dict] | None = None
    logs: dict = field(default_factory=dict)
    predictions: tuple[str, list[dict]] | None = None


def _names_from(concepts: list[dict] | None, verdicts: list[dict] | None) -> list[str]:
    if concepts:
        return [str(c.get("name", c.get("class"))) for c in concepts]
    seen: dict[str, None] = {}
    for v in verdicts or []:
        seen.update(dict.fromkeys(_as_list(v.get("web_label"))))
    return list(seen)


def load_run(run_dir: str | os.PathLike, data_root: str | os.PathLike | None = None) -> RunView:
    """Gather a run's artefacts; absent or unreadable ones are left empty."""
    run = check_run_dir(run_dir)
    classes: list[ClassInfo] = []
    root: Path | None = None
    note = ""
    try:
        root = resolve_data_root(run, data_root)
        classes = read_classes(root)
    except CaproError as exc:
        root, note = None, str(exc)
    verdicts, vnote = None, ""
    try:
        verdicts = load_verdicts(run)
    except CaproError as exc:
        vnote = str(exc)
    concepts = read_optional_jsonl(run / "text" / "concepts.jsonl")
    view = RunView(run=run, names=[c.name for c in classes] or _names_from(concepts, verdicts),
                   data_root=root, data_note=note, verdicts=verdicts, verdict_note=vnote,
                   concepts=concepts, anchors=read_optional_jsonl(run / "match" / "anchors.jsonl"),
                   logs=read_logs(run))
    metrics = read_optional_json(run / "metrics.json")
    view.metrics = metrics if isinstance(metrics, dict) else {}
    counts = read_optional_json(run / "match" / "anchor_counts.json")
    view.anchor_counts = counts if isinstance(counts, dict) else None
    if (run / "config.yaml").is_file():
        view.config_text = (run / "config.yaml").read_text(encoding="utf-8", errors="replace")
    if root is not None:
        try:
            view.records = {r.id: r for r in read_split(root, "train", classes).records}
            view.truth = read_truth(root)
        except CaproError as exc:
            view.data_note = str(exc)
    for split in ("test", "val"):
        rows = read_optional_jsonl(run / "eval" / f"{split}_predictions.jsonl")
        if rows:
            view.predictions = (split, rows)
            break
    return view


def _as_list(label: Any) -> list[str]:
    if label is None:
        return []
    return [str(x) for x in label] if isinstance(label, list) else [str(label)]


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _text(value: Any) -> str:
    """Escaped user text with URL schemes defanged (``http[:]//``), so no URL appears in the file."""
    return _e(URL_RE.sub(lambda m: f"{m.group(1)}[:]//", str(value)))


def _label(label: Any) -> str:
    return "—" if label is None else _e(", ".join(_as_list(label)))


def _pct(value: Any) -> str:
    if not isinstance(value, float | int) or isinstance(value, bool):
        return "—"
    return f"{100 * value:.1f}%"


def _na(what: str) -> str:
    return f'<p class="na">Not available: {_text(what)}</p>'


def _img(png: bytes | None, alt: str, cls: str = "plot") -> str:
    if png is None:
        return ""
    return f'<img class="{cls}" alt="{_e(alt)}" src="{plots.data_uri(png)}">'


def thumbnail_png(path: Path, *, size: int = 64) -> bytes | None:
    """A PNG of the image fitted into ``size`` px; small images upscaled with nearest-neighbour."""
    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("L" if im.mode in ("1", "L", "I;16", "I", "F") else "RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        return None
    w, h = im.size
    if max(w, h) < size:
        f = max(1, size // max(w, h))
        im = im.resize((w * f, h * f), Image.Resampling.NEAREST)
    else:
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def class_table(names: list[str], verdicts: list[dict], anchors: list[dict] | None,
                truth: dict[str, dict]) -> list[dict[str, Any]]:
    """Per-class counts over the verdicts (C rows).

    Keys: ``class``, ``web`` (samples with that web label), ``kept``, ``relabeled`` (relabelled
    away), ``relabeled_in`` (relabelled into the class), ``removed``, ``final`` (samples whose final
    label is the class), ``anchors``. With single-label truth also ``noise_web`` (share of the web
    samples whose true class differs), ``noise_final`` (the same among the final samples) and
    ``anchor_precision``; None when undefined.
    """
    index = {n: i for i, n in enumerate(names)}
    rows = [dict.fromkeys(("web", "kept", "relabeled", "relabeled_in", "removed", "final", "anchors"), 0)
            for _ in names]
    for r, n in zip(rows, names):
        r["class"] = n
    anchor_ids: set[str] = set()
    if anchors is not None:
        for a in anchors:
            if a.get("polarity", "positive") != "negative" and a.get("class") in index:
                rows[index[a["class"]]]["anchors"] += 1
                anchor_ids.add(str(a.get("id")))
    for v in verdicts:
        act = action_of(v)
        for n in _as_list(v.get("web_label")):
            if n in index:
                r = rows[index[n]]
                r["web"] += 1
                r[act] += 1
                if anchors is None and v.get("anchor"):
                    r["anchors"] += 1
                    anchor_ids.add(str(v["id"]))
        final = _as_list(v.get("label"))
        for n in final:
            if n in index:
                rows[index[n]]["final"] += 1
                if act == "relabeled" and n not in _as_list(v.get("web_label")):
                    rows[index[n]]["relabeled_in"] += 1
    single = all(not isinstance(v.get("web_label"), list) for v in verdicts)
    if truth and single:
        have = [v for v in verdicts if v["id"] in truth and v.get("web_label") in index]
        web = np.array([index[v["web_label"]] for v in have], dtype=np.int64)
        true = np.array([index.get(truth[v["id"]].get("true_label"), -1) for v in have], dtype=np.int64)
        final = np.array([index.get(v.get("label"), -2) if v.get("label") is not None else -2 for v in have],
                         dtype=np.int64)
        is_anchor = np.array([str(v["id"]) in anchor_ids for v in have], dtype=bool)
        for c, r in enumerate(rows):
            m, f = web == c, final == c
            r["noise_web"] = float(np.mean(true[m] != c)) if m.any() else None
            r["noise_final"] = float(np.mean(true[f] != c)) if f.any() else None
            r["anchor_precision"] = anchor_precision(web[m], true[m], is_anchor[m])
    return rows


def _margin(c: dict) -> str:
    """HTML cell: the chosen candidate's lead over the runner-up, its McNemar p-value and the
    rows where the two disagree (:func:`capro.engine.selection.close_call`)."""
    if c.get("margin") is None:
        return "–"
    cell = (f"{100 * c['margin']:+.1f} pts (McNemar p = {c['p_value']:.2f}; "
            f"{c['disagree']} of {c['rows']} rows decide)")
    return cell + (" <b>close call</b>" if c.get("close_call") else "")


def choices_table(m: dict) -> str:
    """HTML: what the run chose on its validation split (D21 online keep rule, D19 offline keep
    rule, D18 fine-tune guard) with every candidate's score and how close the choice was; ""
    when it chose nothing."""
    rows = []
    for key, what in (("online_rule", "online keep rule (stage 2)"), ("keep_rule", "offline keep rule (stage 3)")):
        c = m.get(key) or {}
        if c.get("rules"):
            scores = ", ".join(f"{_e(r)} {_pct(x.get('score'))}" for r, x in c["rules"].items())
            rows.append((what, _e(c.get("chosen")), scores, _margin(c), _e(c.get("split"))))
    g = m.get("fine_tune_guard") or {}
    if g:
        rows.append(("fine-tune guard", _e(g.get("kept")),
                     f"stage3b {_pct(g.get('stage3b'))}, stage2 {_pct(g.get('stage2'))}", _margin(g),
                     _e(g.get("split"))))
    if not rows:
        return ""
    body = "".join(f'<tr><td class="l">{a}</td><td class="l">{b}</td><td class="l">{c}</td><td class="l">{d}</td>'
                   f'<td>{e}</td></tr>' for a, b, c, d, e in rows)
    return ('<h3>Chosen on validation</h3><p>A lead that is not significant (McNemar p &ge; 0.05 over '
            'the rows where the two candidates disagree) is a close call: another sample of validation '
            'rows could well have chosen the other way.</p>'
            '<table><tr><th class="l">choice</th><th class="l">kept</th><th class="l">scores</th>'
            f'<th class="l">lead</th><th>split</th></tr>{body}</table>')


def _summary(v: RunView) -> str:
    m = v.metrics
    out = ['<div class="cards">']

    def card(key: str, value: str) -> None:
        out.append(f'<div class="card"><div class="v">{value}</div><div class="k">{_e(key)}</div></div>')

    card("classes", str(len(v.names)))
    if v.verdicts is not None:
        card("training samples", str(len(v.verdicts)))
    for split, ev in (m.get("eval") or {}).items():
        if isinstance(ev, dict):
            card(f"{split} top-1", _pct(ev.get("top1")))
            card(f"{split} top-5", _pct(ev.get("top5")))
    cleaning = m.get("cleaning") or {}
    total = sum(x for x in cleaning.values() if isinstance(x, int)) or None
    for key in ("kept", "relabeled", "removed"):
        if isinstance(cleaning.get(key), int):
            card(key, f"{cleaning[key]}" + (f" ({_pct(cleaning[key] / total)})" if total else ""))
    tt = m.get("train_truth") or {}
    if tt:
        card("anchor precision", _pct(tt.get("anchor_precision")))
        nd = tt.get("noise_detection") or {}
        card("noise detection P / R", f"{_pct(nd.get('precision'))} / {_pct(nd.get('recall'))}")
        card("relabel accuracy", _pct(tt.get("relabel_accuracy")))
    out.append("</div>")
    out.append(f'<p>Run: <code>{_e(v.run.resolve())}</code><br>Data: '
               + (f"<code>{_e(v.data_root.resolve())}</code>" if v.data_root else f'<span class="na">{_text(v.data_note)}</span>')
               + "</p>")
    if not m:
        out.append(_na(f"{v.run / 'metrics.json'} (the run has not finished)"))
    stages = m.get("stages") or {}
    if stages:
        out.append('<h3>Stages</h3><table><tr><th class="l">stage</th><th>seconds</th></tr>')
        for name, info in stages.items():
            sec = info.get("seconds") if isinstance(info, dict) else None
            out.append(f'<tr><td class="l">{_e(name)}</td><td>{"—" if sec is None else f"{sec:.1f}"}</td></tr>')
        out.append("</table>")
    out.append(choices_table(m))
    if m:
        out.append(f"<details><summary>metrics.json</summary><pre>{_text(json.dumps(m, indent=2))}</pre></details>")
    if v.verdicts is not None:
        out.append("<p>Per-sample verdicts: <code>stage3a/samples.jsonl</code> (fields <code>web_label</code>, "
                   "<code>suggested_label</code>, <code>label_quality</code>, <code>is_label_issue</code>, ...). "
                   f"Export the cleaned dataset with <code>capro export {_e(v.run)} --format jsonl --out DIR</code> "
                   "(or <code>--format csv|parquet</code> for the verdict table).</p>")
    return "".join(out)


def _config(v: RunView) -> str:
    if v.config_text is None:
        return _na(f"{v.run / 'config.yaml'}")
    return f"<pre>{_text(v.config_text)}</pre>"


def _classes(v: RunView) -> str:
    if v.verdicts is None:
        return _na(v.verdict_note)
    rows = class_table(v.names, v.verdicts, v.anchors, v.truth)
    has_truth = any("noise_web" in r for r in rows)
    why = _count_entries(v.anchor_counts)
    head = ["class", "web", "kept", "relabelled away", "relabelled in", "removed", "final", "anchors"]
    if why:
        head += ["texts with evidence", "anchor count set by"]
    if has_truth:
        head += ["noise (web)", "noise (final)", "anchor precision"]
    out = ["<table><tr>" + "".join(f'<th{" class=l" if i == 0 else ""}>{_e(h)}</th>' for i, h in enumerate(head)) + "</tr>"]
    for r in rows:
        cells = [r["web"], r["kept"], r["relabeled"], r["relabeled_in"], r["removed"], r["final"], r["anchors"]]
        if why:
            c = why.get(r["class"], {})
            ev = c.get("with_evidence")
            cells += ["–" if ev is None else ev, _e(c.get("why", "–"))]
        if has_truth:
            cells += [_pct(r["noise_web"]), _pct(r["noise_final"]), _pct(r["anchor_precision"])]
        out.append(f'<tr><td class="l">{_e(r["class"])}</td>' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    if has_truth:
        out.append("<p>Noise rates use <code>truth.jsonl</code>: the share of samples whose true class is "
                   "not the class (web labels, then final labels after cleaning).</p>")
    counts = {a: [r[a] for r in rows] for a in ("kept", "relabeled", "removed")}
    out.append(_img(plots.plot_cleaning(v.names, counts), "cleaning per class"))
    quality = np.array([x["label_quality"] for x in v.verdicts if x.get("label_quality") is not None], dtype=float)
    issue = np.array([bool(x.get("is_label_issue")) for x in v.verdicts if x.get("label_quality") is not None])
    if quality.size:
        out.append(_img(plots.plot_label_quality(quality, issue), "label quality histogram"))
    return "".join(out)


def _curves(v: RunView) -> str:
    png = plots.plot_curves(v.logs) if v.logs else None
    if png is None:
        return _na("no per-epoch log (stage1/log.csv, stage2/log.csv, stage3b/log.csv)")
    return f"<p>Stages: {_e(', '.join(v.logs))}.</p>" + _img(png, "training curves")


def _confusion(v: RunView) -> str:
    if v.predictions is None:
        return _na(f"{v.run / 'eval'}/<split>_predictions.jsonl")
    split, rows = v.predictions
    index = {n: i for i, n in enumerate(v.names)}

    def idx(x: Any) -> int | None:
        if isinstance(x, int) and not isinstance(x, bool) and 0 <= x < len(v.names):
            return x
        return index.get(x) if isinstance(x, str) else None

    pairs = [(idx(r.get("label")), idx(r.get("pred"))) for r in rows]
    pairs = [(t, p) for t, p in pairs if t is not None and p is not None]
    if not pairs:
        return _na(f"{split} predictions with single class labels (multi-label data has no confusion matrix)")
    t, p = np.array(pairs).T
    cm = confusion_matrix(p, t, len(v.names))
    return (f"<p>{_e(split)} split: {len(pairs)} images, top-1 {_pct(float(np.mean(t == p)))}.</p>"
            + _img(plots.plot_confusion(cm, v.names), f"confusion matrix ({split})"))


def _thumb(v: RunView, verdict: dict | None, sample_id: str, extra: str) -> str:
    rec = v.records.get(sample_id)
    png = thumbnail_png(v.data_root / rec.image) if rec is not None and v.data_root else None
    img = _img(png, sample_id, cls="") if png else '<div class="na">no image</div>'
    text = rec.text() if rec is not None else ""
    lines = [img, f"<div><b>{_e(sample_id)}</b></div>"]
    if verdict is not None:
        act = action_of(verdict)
        lines.append(f'<div>web: {_label(verdict.get("web_label"))} · <span class="{act}">{act}</span></div>')
        q = verdict.get("label_quality")
        quality = f"{q:.2f}" if isinstance(q, float | int) else "—"
        lines.append(f'<div>suggested: <b>{_label(verdict.get("suggested_label"))}</b> · quality {quality}</div>')
    if sample_id in v.truth:
        true = v.truth[sample_id].get("true_label")
        lines.append(f'<div>true: {_label(true) if true is not None else "none (out of distribution)"}</div>')
    lines.append(extra)
    lines.append(f'<div class="txt">{_text(text) if text else "<i>no web text</i>"}</div>')
    return '<div class="thumb">' + "".join(lines) + "</div>"


def _anchor_caption(a: dict) -> str:
    """Margin, the class the text fits next, and where the evidence came from."""
    parts = [f'margin {a["margin"]:+.3f}']
    if a.get("next_class"):
        parts.append(f'next: {_e(a["next_class"])}')
    if a.get("evidence"):
        parts.append(f'evidence: {_e(a["evidence"])}')
    return "<div>" + " · ".join(parts) + "</div>"


WHY = {"cap": "K = {k} reached (the cap)", "evidence": "every text that prefers this class ({e})",
       "minimum": "too little evidence: only {e} text(s) prefer this class, so its {a} best-ranked "
                  "were taken anyway", "class size": "every sample with this label (fewer than K = {k})",
       "none": "no sample has this label"}


def anchor_count_note(entry: dict | None, topk: int | None) -> str:
    """Why a class got the anchors it got, from its ``match/anchor_counts.json`` entry, or ''."""
    if not entry:
        return ""
    why = WHY.get(entry.get("why"), str(entry.get("why")))
    return why.format(k=topk, e=entry.get("with_evidence"), a=entry.get("anchors"))


def _count_entries(counts: dict | None) -> dict[str, dict]:
    """Class name -> its ``match/anchor_counts.json`` entry."""
    return {c.get("class"): c for c in (counts or {}).get("classes", [])}


def _samples(v: RunView, *, per_class: int, max_classes: int) -> str:
    if v.verdicts is None:
        return _na(v.verdict_note)
    if v.data_root is None:
        return _na(v.data_note)
    by_id = {x["id"]: x for x in v.verdicts}
    anchors: dict[str, list[dict]] = {n: [] for n in v.names}
    for a in v.anchors or []:
        if a.get("class") in anchors and a.get("polarity", "positive") != "negative":
            anchors[a["class"]].append(a)
    if v.anchors is None:
        for x in v.verdicts:
            for n in _as_list(x.get("web_label")):
                if x.get("anchor") and n in anchors:
                    anchors[n].append({"id": x["id"], "rank": len(anchors[n])})
    suspicious: dict[str, list[dict]] = {n: [] for n in v.names}
    for x in v.verdicts:
        for n in _as_list(x.get("web_label")):
            if n in suspicious:
                suspicious[n].append(x)
    order = list(v.names)
    entries = _count_entries(v.anchor_counts)
    out = []
    if len(order) > max_classes:
        order.sort(key=lambda n: -sum(bool(x.get("is_label_issue")) for x in suspicious[n]))
        order = order[:max_classes]
        out.append(f"<p>Showing the {max_classes} classes with the most label issues of {len(v.names)}.</p>")
    for n in order:
        out.append(f"<h3>{_e(n)}</h3>")
        top = sorted(anchors[n], key=lambda a: a.get("rank", 0))[:per_class]
        note = anchor_count_note(entries.get(n), (v.anchor_counts or {}).get("topk"))
        note = f"; {_e(note)}" if note else ""
        out.append(f"<div>Anchors ({len(anchors[n])}{note}; best text match first)</div><div class=thumbs>")
        out += [_thumb(v, by_id.get(a["id"]), str(a["id"]),
                       f'<div>text distance {a["distance"]:.3f}</div>' if isinstance(a.get("distance"), float | int) else "")
                for a in top]
        out.append("</div>" if top else '<span class="na">none</span></div>')
        weak = sorted((a for a in anchors[n] if isinstance(a.get("margin"), float | int)),
                      key=lambda a: a["margin"])[:per_class]
        if weak:
            out.append("<div>Lowest-margin anchors (their text fits another class almost as well; "
                       "audit these first)</div><div class=thumbs>")
            out += [_thumb(v, by_id.get(a["id"]), str(a["id"]), _anchor_caption(a)) for a in weak]
            out.append("</div>")
        worst = sorted(suspicious[n], key=lambda x: (x.get("label_quality") is None, x.get("label_quality") or 0.0))[:per_class]
        out.append("<div>Most suspicious (lowest label quality)</div><div class=thumbs>")
        out += [_thumb(v, x, str(x["id"]), "") for x in worst]
        out.append("</div>" if worst else '<span class="na">none</span></div>')
    return "".join(out)


def _concepts(v: RunView) -> str:
    if not v.concepts:
        return _na(f"{v.run / 'text' / 'concepts.jsonl'}")
    out = ['<table><tr><th class="l">class</th><th class="l">source</th><th class="l">synsets</th>'
           '<th class="l">prototype text</th></tr>']
    for c in v.concepts:
        syn = c.get("synsets")
        syn = ", ".join(map(str, syn)) if isinstance(syn, list) else (syn or "")
        out.append(f'<tr><td class="l">{_e(c.get("name", c.get("class")))}</td><td class="l">{_e(c.get("source", ""))}</td>'
                   f'<td class="l">{_e(syn)}</td><td class="l">{_text(c.get("text", ""))}</td></tr>')
    out.append("</table>")
    return "".join(out)


CLEANLAB_EXAMPLE = """\
import json
import numpy as np
import pandas as pd
import scipy.sparse as sp
from cleanlab import Datalab   # pip install "cleanlab[datalab]"

run = "{run}"
classes = [c["name"] for c in json.load(open("{data}/classes.json"))]
rows = [json.loads(line) for line in open(run + "/stage3a/samples.jsonl")]
# node i of the graph is row i of samples.jsonl (the run's training samples, in order)
data = pd.DataFrame({{"label": [classes.index(r["web_label"]) for r in rows]}})
knn_graph = sp.load_npz(run + "/graph/knn_graph.npz")   # [N, N] CSR of cosine distances
lab = Datalab(data=data, label_name="label")
{find_issues}
lab.report()
"""
FIND_WITH_PROBS = """\
lab.find_issues(pred_probs=np.load(run + "/stage3a/probs.npy"),   # [N, C] cleaning scores s_i
                knn_graph=knn_graph)"""
FIND_GRAPH_ONLY = """\
lab.find_issues(knn_graph=knn_graph)   # outliers, near duplicates, non-iid; add pred_probs=[N, C]
                                       # class probabilities to also find label issues"""


def _graph(v: RunView, link_base: Path) -> str:
    g = v.run / "graph"
    out = []
    ids = g / "knn_ids.npy"
    if ids.is_file():
        try:
            shape = np.load(ids, mmap_mode="r").shape
            out.append(f"<p>Visual kNN graph: {shape[0]} nodes × {shape[1]} neighbours "
                       "(<code>graph/knn_ids.npy</code>, <code>graph/knn_sims.npy</code>, the node itself first).</p>")
        except (OSError, ValueError) as exc:
            out.append(_na(f"{ids} is unreadable ({exc})"))
    else:
        out.append(_na(f"{ids} (the graph step has not run)"))
    npz = g / "knn_graph.npz"
    if npz.is_file():
        href = quote(Path(os.path.relpath(npz, link_base)).as_posix())
        out.append(f'<p>cleanlab graph: <a href="{href}">graph/knn_graph.npz</a> (scipy CSR, distances 1 − cosine, '
                   "self excluded, each row sorted ascending).</p>")
    else:
        out.append(f"<p>Write the cleanlab graph with <code>capro graph {_e(v.run)} export-knn --out "
                   f"{_e(v.run / 'graph' / 'knn_graph.npz')}</code>.</p>")
    find = FIND_WITH_PROBS if (v.run / "stage3a" / "probs.npy").is_file() else FIND_GRAPH_ONLY
    example = CLEANLAB_EXAMPLE.format(run=v.run.resolve(), data=v.data_root.resolve() if v.data_root else "DATA",
                                      find_issues=find)
    out.append("<p>Use it with cleanlab's Datalab:</p>")
    out.append(f'<pre class="code"><code>{_text(example)}</code></pre>')
    return "".join(out)


def build_report(run_dir: str | os.PathLike, *, data_root: str | os.PathLike | None = None,
                 link_base: str | os.PathLike | None = None, per_class: int = 8,
                 max_classes: int = 30) -> str:
    """The report HTML of ``run_dir``. ``link_base`` is the folder the file will live in (for
    relative links; default the run directory); ``per_class`` thumbnails per row, at most
    ``max_classes`` classes in the samples section."""
    v = load_run(run_dir, data_root)
    base = Path(link_base) if link_base is not None else v.run
    bodies = {
        "summary": _summary(v),
        "config": _config(v),
        "classes": _classes(v),
        "curves": _curves(v),
        "confusion": _confusion(v),
        "samples": _samples(v, per_class=per_class, max_classes=max_classes),
        "concepts": _concepts(v),
        "graph": _graph(v, base),
    }
    nav = "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title in SECTIONS)
    sections = "".join(f'<section id="{sid}"><h2>{_e(title)}</h2>{bodies[sid]}</section>' for sid, title in SECTIONS)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<title>capro report: {_e(v.run.name)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>CAPro run report</h1><p>{_e(v.run.resolve())} · generated {stamp}</p></header>"
            f"<nav>{nav}</nav><main>{sections}</main></body></html>\n")


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                 data_root: str | os.PathLike | None = None, **options: Any) -> Path:
    """Build the report and write it atomically to ``out`` (default ``RUN/report.html``)."""
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    text = build_report(run_dir, data_root=data_root, link_base=path.parent, **options)
    with atomic_write(path) as fh:
        fh.write(text)
    return path
