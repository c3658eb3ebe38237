"""The documents a user reads: README's promises, links that resolve, a config reference that is
current, a command table that matches the parsers."""

import re
import subprocess
from pathlib import Path

import pytest

from capro.cli import build_parser
from capro.config_docs import markdown, rows

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
INDEXES = [ROOT / "benchmarks" / "studies" / "README.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """A Markdown heading's anchor, as GitHub makes it."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


@pytest.mark.parametrize("page", [README, *DOCS, *INDEXES], ids=lambda p: p.name)
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        assert dest.exists(), f"{page.name}: link to {target} does not resolve"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{page.name}: no heading #{anchor} in {dest.name}"


def test_every_doc_page_is_reachable_from_the_readme():
    seen, todo = set(), [README]
    while todo:
        page = todo.pop()
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            file = target.partition("#")[0]
            if file.endswith(".md") and not re.match(r"^[a-z]+://", file):
                dest = (page.parent / file).resolve()
                if dest not in seen and dest.exists():
                    seen.add(dest)
                    todo.append(dest)
    assert {p.resolve() for p in DOCS} <= seen


def test_readme_is_the_users_page():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 180
    head = "\n".join(lines[:40])
    for promise in ("pip install", "capro demo", "bash scripts/test.sh", "capro convert", "capro run"):
        assert promise in head, promise
    assert not re.search(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b", text), "a commit hash"
    assert "NeurIPS" in text and "@inproceedings" in text and "github.com/yuleiqin/capro" in text


def test_the_readme_test_command_is_what_ci_runs():
    first = README.read_text(encoding="utf-8").split("```bash", 1)[1].split("```", 1)[0]
    assert "bash scripts/test.sh" in first and ".venv/bin/capro demo" in first
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_config_reference_is_current_and_covers_every_key():
    page = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert page == markdown(), "docs/config.md is stale: run `python -m capro.config_docs > docs/config.md`"
    for key, _, _, doc in rows():
        assert f"| `{key}` |" in page and doc, key


def test_readme_command_table_matches_the_parsers():
    parser = build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    table = [line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith("| `capro ")]
    named = set()
    for line in table:
        cell = re.split(r"(?<!\\)\|", line)[1].replace("\\|", "|")
        for usage in re.findall(r"`capro ([^`]*)`", cell):
            name, *rest = usage.split()
            assert name in subs, f"README names `capro {name}`, which does not exist"
            named.add(name)
            options = {s for a in subs[name]._actions for s in a.option_strings}
            for flag in re.findall(r"--[a-z][a-z-]*", " ".join(rest)):
                assert flag in options, f"README: `capro {name}` has no {flag}"
            formats = re.search(r"--format ([\w|-]+)", " ".join(rest))
            if formats:
                action = next(a for a in subs[name]._actions if "--format" in a.option_strings)
                assert set(formats.group(1).split("|")) <= set(action.choices), (name, formats.group(1))
    assert named == set(subs), f"commands missing from README's table: {set(subs) - named}"


def test_no_source_file_cites_a_document_outside_the_repository():
    out = subprocess.run(["grep", "-r", "capro-method.md", str(ROOT / "src")], capture_output=True, text=True)
    assert out.stdout == ""
