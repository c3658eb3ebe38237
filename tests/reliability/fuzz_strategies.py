"""Shared hypothesis strategies and settings for the fuzz tests.

Example counts are small so that every fuzz test together runs in well under a minute on two
busy cores; set ``CAPRO_FUZZ_SCALE=20`` (say) to fuzz longer locally. Runs are derandomised (the
same examples every time, so CI never flakes) and keep no example database in the repository.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
from collections.abc import Iterator

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image

SCALE = float(os.environ.get("CAPRO_FUZZ_SCALE", "1"))


def fuzz(max_examples: int) -> settings:
    """Bounded, deterministic hypothesis settings for one fuzz test."""
    return settings(max_examples=max(1, int(max_examples * SCALE)), deadline=None,
                    derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture,
                                           HealthCheck.large_base_example])


# Text: every code point class, lone surrogates included (JSON can spell them, "\\ud800", and
# they must be refused, not crash an encoder: BUG-2), with control characters, line separators,
# RTL marks and NULs, plus a few fixed nasty strings.
NASTY_STRINGS = ["", " ", "\x00", "\n", "\r\n", "\t", "\u2028", "\ufeff", "\u202e", "..", "../x",
                 "/etc/passwd", "C:\\x", "\U0001f600" * 3,  "ǅ", "İ", "\x1b[2J", "\ud800", "a\udfffb"]
any_text = st.one_of(st.text(st.characters(exclude_categories=()), max_size=40),
                     st.sampled_from(NASTY_STRINGS), st.integers(200, 3000).map(lambda n: "ab\u00df " * n))
# Non-blank valid Unicode of any other class: control characters and line breaks included (they
# are valid in ids and config keys, and every message must still show them on one line: BUG-1, BUG-5).
nonblank_text = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=20).filter(str.strip)

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                    st.floats(allow_nan=True, allow_infinity=True), any_text)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(any_text, inner, max_size=4)), max_leaves=12)

CLASS_NAMES = ["cat", "dog", "Ankle boot", "tiger cat", "ß"]
CLASS_INDEX = {name: i for i, name in enumerate(CLASS_NAMES)}

good_rows = st.fixed_dictionaries({
    "id": nonblank_text, "image": st.sampled_from(["a.png", "b.png"]),
    "label": st.one_of(st.sampled_from(CLASS_NAMES), st.lists(st.sampled_from(CLASS_NAMES),
                                                             min_size=1, max_size=3)),
}, optional={"title": any_text, "description": any_text, "tags": st.lists(any_text, max_size=3)})
_ROW_KEYS = ["id", "image", "label", "title", "description", "tags", "extra"]
_bad_values = st.one_of(json_values, st.sampled_from(["../up.png", "/abs.png", "c:x.png", "",
                                                      "x\x00.png", "unknown class", []]))


def _mutate(row: dict, changes: dict, drop: set) -> dict:
    return {k: v for k, v in {**row, **changes}.items() if k not in drop}


# A manifest row: a good row with up to two fields given wrong types or nasty values and maybe
# one field removed (about a third stay valid).
row_objects = st.builds(_mutate, good_rows,
                        st.dictionaries(st.sampled_from(_ROW_KEYS), _bad_values, max_size=2),
                        st.sets(st.sampled_from(_ROW_KEYS), max_size=1))

# One manifest line as bytes: JSON rows, raw junk, bad UTF-8, deep nesting, blank lines. A lone
# surrogate in a row is an escape ("\\ud800") with ensure_ascii, else raw (invalid UTF-8) bytes.
manifest_lines = st.one_of(
    good_rows.map(lambda r: json.dumps(r).encode()),
    row_objects.map(lambda r: json.dumps(r).encode()),
    row_objects.map(lambda r: json.dumps(r, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=60),
    st.sampled_from([b"", b"   ", b"\t", b"\xff\xfe{}", b"{\"id\": \"\xc3\x28\"}", b"[" * 5000,
                     b"{\"a\":" * 2000, b"1" * 5000, b"NaN", b"{}", b"null", b"\x00" * 10,
                     b"\xef\xbb\xbf{\"id\": \"x\", \"image\": \"a.png\", \"label\": \"cat\"}"]),
)


def write_manifest(path: os.PathLike, lines: list[bytes]) -> bytes:
    """Write ``lines`` joined by newlines; return the exact bytes written."""
    data = b"\n".join(lines)
    with open(path, "wb") as fh:
        fh.write(data)
    return data


def nonblank_lines(data: bytes) -> list[int]:
    """1-based numbers of the lines of ``data`` that hold more than whitespace (as files iterate)."""
    return [i for i, line in enumerate(io.BytesIO(data), start=1) if line.strip()]


IMAGE_FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]


def image_bytes(fmt: str, size: tuple[int, int] = (8, 6), mode: str = "RGB") -> bytes:
    """A real image encoded by PIL."""
    buf = io.BytesIO()
    im = Image.new(mode, size, (200, 30, 90) if mode == "RGB" else 128)
    im.putpixel((0, 0), (1, 2, 3) if mode == "RGB" else 7)
    im.save(buf, format=fmt)
    return buf.getvalue()


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Raise :class:`TimeoutError` in the main thread after ``seconds`` (a hang detector, with a
    margin of 100x or more over the normal run time; it also interrupts a running regex)."""
    def _fire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, _fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
