"""Fuzzed web text: clean_text returns clean, space-joined vocabulary words for any string (control
characters, HTML, URLs, huge and empty strings), is idempotent, and never hangs."""

from __future__ import annotations

import pytest
from fuzz_strategies import NASTY_STRINGS, any_text, fuzz, watchdog
from hypothesis import given
from hypothesis import strategies as st

from capro.data.layout import Record
from capro.text.clean import clean_text, record_text
from capro.text.wordlist import STOP_WORDS, is_english

VOCAB = frozenset({"shirt", "cotton", "boot", "ankle", "sandal", "coat", "dress", "tiger", "cat",
                   "the", "and", "of", "bag", "sneaker", "pullover", "trouser", "über", "naïve"})
_pieces = st.one_of(
    st.sampled_from(sorted(VOCAB)), st.sampled_from([w.upper() for w in VOCAB]),
    st.sampled_from(["&amp;", "&lt;b&gt;", "<b>", "</i>", "<a href='x'>", "http://x.com/a?b=c",
                     "www.shop.de/page", "photo.detail", "IMG_2041.jpg", ".JPEG", "2019", "t-shirt",
                     "shirt42", "\t", "\n", "\r", "\x00", "\u00a0", "\u3000", "&#0;", "&#x110000;",
                     "&#xD800;", "<", ">", "..", "_", "ǅ", "İ"]),
    any_text,
)
texts = st.lists(_pieces, max_size=12).map("".join) | st.lists(_pieces, max_size=12).map(" ".join)


def _check_clean(out: str, words: frozenset[str]) -> None:
    assert isinstance(out, str)
    if not out:
        return
    tokens = out.split(" ")
    assert " ".join(tokens) == out and all(tokens)  # single spaces, no edge spaces
    for t in tokens:
        assert t in words and len(t) > 2 and t.isalpha() and t not in STOP_WORDS


@fuzz(400)
@given(texts)
def test_clean_text_gives_vocabulary_words_and_is_idempotent(text):
    out = clean_text(text, words=VOCAB)
    _check_clean(out, VOCAB)
    assert clean_text(out, words=VOCAB) == out


@fuzz(30)
@given(texts)
def test_clean_text_with_the_wordnet_vocabulary(text):
    out = clean_text(text)
    assert all(is_english(t) for t in out.split())
    assert clean_text(out) == out


@pytest.mark.parametrize("text", NASTY_STRINGS)
def test_nasty_strings(text):
    _check_clean(clean_text(text, words=VOCAB), VOCAB)


def test_known_cleaning():
    text = "Cotton &amp; <b>SHIRT</b>\tboot\nIMG_2041.jpg http://x.com/a 2019 shirt42 www.a.de/x"
    assert clean_text(text, words=VOCAB) == "cotton shirt boot shirt"


def test_long_ordinary_text_finishes():
    text = "cotton shirt, see www.shop.com/p?id=3 <b>boot</b> 2019! " * 20_000  # ~1 MiB
    with watchdog(60):
        out = clean_text(text, words=VOCAB)
    assert out == " ".join(["cotton shirt boot"] * 20_000)


@fuzz(150)
@given(st.builds(Record, id=st.just("r"), image=st.just("a.png"), labels=st.just((0,)),
                 title=any_text, description=any_text, tags=st.lists(any_text, max_size=4).map(tuple)),
       st.lists(st.sampled_from(["title", "description", "tags"]), unique=True))
def test_record_text_of_any_record(rec, fields):
    out = clean_text(rec.text(tuple(fields)), words=VOCAB)
    _check_clean(out, VOCAB)
    assert isinstance(record_text(rec, fields), str)


# ---- Regression: BUG-7, clean_text was quadratic on long text without spaces ---------------------

@pytest.mark.parametrize("text", ["a." * 200_000, "<" * 400_000], ids=["dots", "angles"])
def test_bug7_long_text_without_spaces_does_not_hang(text):
    with watchdog(3):  # a linear pass over 400 KB takes well under 0.1 s
        clean_text(text, words=VOCAB)
