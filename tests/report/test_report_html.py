"""The HTML report: every section present, every image embedded, no external URL, hand-checked
class statistics, and graceful "not available" sections when artefacts are missing."""

from __future__ import annotations

import base64
import io
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_fixtures import REJECTED, A, B, C, build_run

from capro.cli import main
from capro.report.html import SECTIONS, class_table, thumbnail_png
from capro.report.verdicts import load_verdicts
from capro.utils.io import read_jsonl

SECTION_IDS = ["summary", "config", "classes", "curves", "confusion", "samples", "concepts", "graph"]


class _Parsed(HTMLParser):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.imgs: list[dict[str, str]] = []
        self.links: list[str] = []
        self.tags: set[str] = set()
        self.section_text: dict[str, str] = {}
        self._section: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "section":
            self.ids.append(a["id"])
            self._section = a["id"]
            self.section_text[self._section] = ""
        if tag == "img":
            self.imgs.append({**a, "section": self._section})
        for key in ("href", "src", "action", "data"):
            if key in a and tag != "img":
                self.links.append(a[key])

    def handle_data(self, data):
        if self._section:
            self.section_text[self._section] += data


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    s = build_run(root)
    assert main(["report", str(s.run)]) == 0
    text = (s.run / "report.html").read_text(encoding="utf-8")
    return s, text, _Parsed(text)


def test_every_section_is_present_in_order(built):
    _, _, parsed = built
    assert parsed.ids == SECTION_IDS == [sid for sid, _ in SECTIONS]


def test_every_image_is_an_embedded_png(built):
    _, _, parsed = built
    assert parsed.imgs
    for img in parsed.imgs:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        with Image.open(io.BytesIO(base64.b64decode(img["src"][len(prefix):]))) as im:
            assert im.format == "PNG" and min(im.size) > 0
    alts = {i["alt"] for i in parsed.imgs}
    assert {"training curves", "confusion matrix (test)", "cleaning per class", "label quality histogram"} <= alts
    # samples: per class its 2 anchors (best match first, then lowest margin first) and its 5
    # suspicious samples (8 allowed, 5 web samples per class)
    thumbs = [i for i in parsed.imgs if i["section"] == "samples"]
    assert len(thumbs) == 3 * (2 + 2 + 5)


def test_no_external_resource_or_url(built):
    _, text, parsed = built
    assert "http://" not in text.lower() and "https://" not in text.lower()
    assert "http[:]//shop.example.com" in text  # the web title's URL is shown defanged
    assert not {"script", "link", "iframe", "object", "embed"} & parsed.tags
    for link in parsed.links:
        assert link.startswith("#") or not (":" in link.split("/")[0] or link.startswith("//")), link
    assert "graph/knn_graph.npz" in parsed.links


def test_sections_show_the_run(built):
    s, _, parsed = built
    t = parsed.section_text
    assert "66.7%" in t["summary"] and "test top-1" in t["summary"] and "83.3%" in t["summary"]
    assert "preset: tiny" in t["config"]
    assert "test split: 6 images, top-1 66.7%" in t["confusion"]
    assert "Stages: stage1, stage2, stage3b" in t["curves"]
    assert "trouser; a garment extending" in t["concepts"] and "jersey.n.03" in t["concepts"]
    assert "15 nodes × 4 neighbours" in t["graph"] and "lab.find_issues(" in t["graph"]
    assert "none (out of distribution)" in t["samples"]  # t03's truth
    assert "Not available" not in "".join(t.values())


def test_lowest_margin_anchors_come_first_with_their_next_class_and_evidence(built):
    samples = built[2].section_text["samples"]
    first_class = samples.split("Most suspicious")[0]
    assert "Lowest-margin anchors" in first_class
    weak = first_class.split("Lowest-margin anchors")[1]
    # class A's two anchors: rank 1 (margin -0.150, neighbours) before rank 0 (+0.250, own text)
    assert weak.index("margin -0.150") < weak.index("margin +0.250")
    assert f"next: {B}" in weak and "evidence: neighbours" in weak and "evidence: own text" in weak


def test_anchor_counts_say_why_each_class_got_its_anchors(built):
    t = built[2].section_text
    # the class table: texts with evidence and what set the count, per class in order
    assert "texts with evidence" in t["classes"] and "anchor count set by" in t["classes"]
    # cell texts run together: anchors, texts with evidence, why (A 2 2, B 2 1, C 2 4)
    assert "22evidence" in t["classes"] and "21minimum" in t["classes"] and "24evidence" in t["classes"]
    heads = [h.split("; best text match")[0] for h in t["samples"].split("Anchors (")[1:]]  # A, B, C
    assert heads[0] == "2; every text that prefers this class (2)"
    assert heads[1] == ("2; too little evidence: only 1 text(s) prefer this class, so its 2 best-ranked "
                        "were taken anyway")


def test_class_table_matches_hand_counts(synthetic_run):
    verdicts = load_verdicts(synthetic_run.run)
    anchors = read_jsonl(synthetic_run.run / "match" / "anchors.jsonl")
    truth = {r["id"]: r for r in read_jsonl(synthetic_run.data / "truth.jsonl")}
    rows = class_table([A, B, C], verdicts, anchors, truth)
    got = [(r["class"], r["web"], r["kept"], r["relabeled"], r["relabeled_in"], r["removed"], r["final"], r["anchors"])
           for r in rows]
    assert got == [(A, 5, 3, 1, 1, 1, 4, 2), (B, 5, 4, 1, 1, 0, 5, 2), (C, 5, 3, 1, 1, 1, 4, 2)]
    assert [r["noise_web"] for r in rows] == pytest.approx([0.4, 0.6, 0.2])
    assert [r["noise_final"] for r in rows] == pytest.approx([0.0, 0.4, 0.0])
    assert [r["anchor_precision"] for r in rows] == pytest.approx([1.0, 0.5, 1.0])
    # without anchors.jsonl the verdicts' anchor flags count; without truth no truth columns
    bare = class_table([A, B, C], verdicts, None, {})
    assert [r["anchors"] for r in bare] == [2, 2, 2] and "noise_web" not in bare[0]


def test_thumbnails_upscale_small_images_with_nearest_and_shrink_big_ones(tmp_path):
    small = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(small, mode="L").save(tmp_path / "s.png")
    with Image.open(io.BytesIO(thumbnail_png(tmp_path / "s.png"))) as im:
        arr = np.asarray(im)
    assert arr.shape == (64, 64)
    assert np.array_equal(arr[::8, ::8], small) and np.array_equal(arr[7::8, 7::8], small)
    Image.new("RGB", (200, 100), (10, 200, 30)).save(tmp_path / "b.jpg")
    with Image.open(io.BytesIO(thumbnail_png(tmp_path / "b.jpg"))) as im:
        assert im.size == (64, 32) and im.mode == "RGB"
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert thumbnail_png(tmp_path / "bad.png") is None
    assert thumbnail_png(tmp_path / "missing.png") is None


def _sections(path: Path) -> _Parsed:
    return _Parsed(path.read_text(encoding="utf-8"))


def test_missing_artefacts_give_not_available_sections(tmp_path):
    s = build_run(tmp_path)
    for p in ("config.yaml", "metrics.json", "stage1", "stage2", "stage3b", "eval", "text", "graph", "match"):
        target = s.run / p
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    out = tmp_path / "elsewhere" / "r.html"
    assert main(["report", str(s.run), "--out", str(out)]) == 0
    parsed = _sections(out)
    assert parsed.ids == SECTION_IDS
    for sid in ("config", "curves", "confusion", "concepts"):
        assert "Not available" in parsed.section_text[sid], sid
    assert "capro graph" in parsed.section_text["graph"] and "export-knn" in parsed.section_text["graph"]
    # verdicts alone still give the class table and the thumbnails (anchors from the verdict flags)
    assert "T-shirt/top" in parsed.section_text["classes"]
    assert len([i for i in parsed.imgs if i["section"] == "samples"]) == 3 * (2 + 5)


def test_an_empty_run_directory_still_gives_every_section(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert main(["report", str(run)]) == 0
    parsed = _sections(run / "report.html")
    assert parsed.ids == SECTION_IDS
    assert "pass --data DIR" in parsed.section_text["summary"]
    assert "stage 3a" in parsed.section_text["classes"]
    assert main(["report", str(tmp_path / "nope")]) == 2


def test_link_to_the_graph_is_relative_to_the_report(synthetic_run, tmp_path):
    out = tmp_path / "reports" / "run.html"
    assert main(["report", str(synthetic_run.run), "--out", str(out), "--per-class", "1",
                 "--data", str(synthetic_run.data)]) == 0
    parsed = _sections(out)
    (href,) = [link for link in parsed.links if link.endswith("knn_graph.npz")]
    assert (out.parent / href).resolve() == (synthetic_run.run / "graph" / "knn_graph.npz").resolve()
    assert len([i for i in parsed.imgs if i["section"] == "samples"]) == 3 * 3  # 1 of each strip
    assert REJECTED not in parsed.section_text["samples"]
    assert os.stat(out).st_size > 0


def test_class_table_counts_every_label_of_multilabel_rows():
    rows = [
        {"id": "m0", "web_label": ["sky", "dog"], "label": ["sky", "dog"], "kept": True, "anchor": True},
        {"id": "m1", "web_label": ["dog"], "label": ["sky"], "relabeled": True, "anchor": False},
        {"id": "m2", "web_label": ["sky"], "label": None, "removed": True, "anchor": False},
    ]
    table = {r["class"]: r for r in class_table(["sky", "dog", "cat"], rows, None, {"m0": {"true_label": ["sky"]}})}
    assert (table["sky"]["web"], table["sky"]["kept"], table["sky"]["removed"], table["sky"]["final"]) == (2, 1, 1, 2)
    assert (table["sky"]["relabeled_in"], table["sky"]["anchors"]) == (1, 1)
    assert (table["dog"]["web"], table["dog"]["kept"], table["dog"]["relabeled"], table["dog"]["final"]) == (2, 1, 1, 1)
    assert table["cat"]["web"] == 0 and "noise_web" not in table["cat"]  # no truth columns for multi-label


def test_choices_table_names_every_candidate_and_the_kept_one():
    from capro.report.html import choices_table

    assert choices_table({}) == ""
    html = choices_table({
        "online_rule": {"chosen": "top1", "split": "val",
                        "rules": {"paper": {"score": 0.804}, "top1": {"score": 0.826}}},
        "fine_tune_guard": {"split": "val", "stage3b": 0.82, "stage2": 0.826, "kept": "stage2"}})
    assert "online keep rule (stage 2)" in html and "paper 80.4%, top1 82.6%" in html
    assert "<td class=\"l\">top1</td>" in html and "stage3b 82.0%, stage2 82.6%" in html
    assert "offline keep rule" not in html
    assert html.count("<td class=\"l\">–</td>") == 2  # no lead recorded (runs before it was)
    close = choices_table({"online_rule": {"chosen": "top1", "split": "holdout", "rules": {
        "paper": {"score": 0.57}, "top1": {"score": 0.58}}, "margin": 0.01, "standard_error": 0.0274,
        "runner_up": "paper", "disagree": 30, "rows": 200, "p_value": 0.8548, "close_call": True}})
    assert "+1.0 pts (McNemar p = 0.85; 30 of 200 rows decide) <b>close call</b>" in close
