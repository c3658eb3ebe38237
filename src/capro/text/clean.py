"""Clean noisy web text (titles, descriptions, tags) as the released code did (docs/method.md).

Steps, in order: lower-case; strip ``.jpg``/``.jpeg``/``.png``/``.gif``; unescape HTML entities;
remove ``<...>`` tags; remove domains and URLs; turn tabs and newlines into spaces; split into
``\\w+`` tokens; per token remove digit characters, then drop it when it has at most 2 characters,
is not alphabetic, is a stop word, or is not an English word; join with single spaces.

Two deliberate differences from the released function: tabs and newlines become spaces (the
released code deleted them, gluing the words on either side together), and the domain pattern ends
at a word boundary, so "photo.detail" is not taken for a ``.de`` domain. The English-word check is
offline (decision D10, :mod:`capro.text.wordlist`).

Examples:
    >>> clean_text("Shirts &amp; <b>cotton</b> T-shirt http://shop.com/x IMG_2041.jpg 2019")
    'shirts cotton shirt'
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable

from capro.data.layout import Record
from capro.text.wordlist import STOP_WORDS, is_english

_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif")
_TAG_RE = re.compile(r"<[^<>]*>")  # linear: never rescans past the next "<"
_TLDS = "net|com|org|info|edu|gov|uk|de|ca|jp|fr|au|us|ru|ch|it|nel|se|no|es|mil|cn"
_RUN_RE = re.compile(r"\S+\s?")
_HAS_DOMAIN_RE = re.compile(rf"\S\.(?:{_TLDS})\b")
_URL_RE = re.compile(r"http\S+")
_TOKEN_RE = re.compile(r"\w+")
_DIGIT_TABLE = str.maketrans("", "", "0123456789")


def _drop_domain_run(match: re.Match) -> str:
    """Remove a whitespace-delimited run that holds a domain (``shop.com/x``), as the released
    pattern ``\\S+\\.(tld)\\b\\S*\\s?`` does, in linear time (that pattern is quadratic on long runs)."""
    run = match.group()
    return "" if _HAS_DOMAIN_RE.search(run) else run


def _keep(token: str, words: frozenset[str] | None) -> bool:
    if len(token) <= 2 or not token.isalpha() or token in STOP_WORDS:
        return False
    return is_english(token) if words is None else token in words


def clean_text(text: str, *, words: frozenset[str] | None = None) -> str:
    """Cleaned, space-joined English tokens of ``text`` (may be ``""``).

    Args:
        text: raw web text.
        words: the allowed vocabulary (lower-case); ``None`` uses the WordNet lemmas plus their
            inflections (:func:`capro.text.wordlist.is_english`).
    """
    out = text.lower()
    for suffix in _SUFFIXES:
        out = out.replace(suffix, "")
    out = html.unescape(out)
    out = _TAG_RE.sub("", out)
    out = _RUN_RE.sub(_drop_domain_run, out)
    out = _URL_RE.sub("", out)
    out = out.replace("\t", " ").replace("\n", " ").replace("\r", " ")
    tokens = (t.translate(_DIGIT_TABLE) for t in _TOKEN_RE.findall(out))
    return " ".join(t for t in tokens if _keep(t, words))


def record_text(record: Record, fields: Iterable[str]) -> str:
    """The record's configured text fields (:meth:`Record.text`), cleaned."""
    return clean_text(record.text(tuple(fields)))
