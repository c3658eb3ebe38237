"""Concept texts: what each class's textual prototype is built from (docs/method.md).

For a class with a WordNet id the text gathers the synset and its neighbours
``S = [syn] + hypernyms + instance hypernyms + hyponyms + instance hyponyms + topic, region and
usage domains``; for each synset in ``S`` its lemma names (``_`` and ``-`` as spaces), its gloss
and its examples, all joined by spaces and lower-cased, as released.

A user ``definition`` from ``classes.json`` is the class name followed by the definition. With
``source="wordnet"`` it is used only for classes without a wnid; ``"definition"`` prefers it over
WordNet; ``"both"`` concatenates the two when a class has both. A class with only a name takes its
first WordNet noun sense (as released for NUS-WIDE) with a warning.

Examples:
    >>> concept_for_class(ClassInfo("Sneaker", wnid="n03472535")).synsets[:2]
    ['gym_shoe.n.01', 'shoe.n.01']
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

from capro.data.layout import ClassInfo
from capro.errors import ConfigError, DataError
from capro.text.wordlist import wordnet

SOURCES = ("wordnet", "definition", "both")


@dataclass
class Concept:
    """The text a textual prototype is encoded from and where it came from.

    ``source`` is ``wordnet``, ``definition``, ``both`` or ``first-noun-sense``; ``synsets`` lists
    the WordNet synsets (``gym_shoe.n.01``) whose lemmas, glosses and examples make up ``text``.
    """

    name: str
    source: str
    synsets: list[str]
    text: str


def _phrase(text: str) -> str:
    return text.lower().replace("_", " ").replace("-", " ").strip()


def _neighbourhood(syn) -> list:
    return (
        [syn] + syn.hypernyms() + syn.instance_hypernyms() + syn.hyponyms()
        + syn.instance_hyponyms() + syn.topic_domains() + syn.region_domains()
        + syn.usage_domains()
    )


def synset_text(syn) -> tuple[list[str], str]:
    """(names of the synsets in S, concept text) for a ``wn`` synset."""
    group = _neighbourhood(syn)
    parts: list[str] = []
    for s in group:
        parts.extend(_phrase(n) for n in s.lemma_names())
        parts.append(_phrase(s.definition()))
        parts.extend(_phrase(e) for e in s.examples())
    return [s.name() for s in group], " ".join(parts)


def _synset_for_wnid(info: ClassInfo):
    try:
        return wordnet().synset_from_pos_and_offset("n", info.offset)
    except Exception as exc:  # wn raises its own WordNetError (or KeyError) for unknown offsets
        raise DataError(
            f"classes.json: class {info.name!r} has wnid {info.wnid}, which is not a WordNet 3.0 "
            "noun synset; fix the wnid or give a \"definition\" instead"
        ) from exc


def _first_noun_sense(name: str):
    """The first WordNet noun sense of a class name: the whole name (``_`` and ``-`` read as
    spaces too), each part of a name like ``a/b``, then the last word (the head noun of
    ``ankle boot``)."""
    spaced = re.sub(r"[_\s]+", " ", name).strip()
    parts = [p for p in re.split(r"[/,;]", spaced) if p.strip()]
    heads = [p.split()[-1] for p in parts if len(p.split()) > 1]
    candidates = [name, spaced, spaced.replace("-", " "), *parts, *heads]
    for cand in dict.fromkeys(candidates):
        lemma = "_".join(cand.strip().lower().split())
        senses = wordnet().synsets(lemma, pos="n") if lemma else []
        if senses:
            return senses[0]
    raise DataError(
        f"classes.json: class {name!r} has no wnid or definition and is not a WordNet noun; "
        "add a \"wnid\" (e.g. n04197391) or a \"definition\" to its entry"
    )


def _definition_text(info: ClassInfo) -> str:
    return f"{_phrase(info.name)} {info.definition.strip().lower()}".strip()


def concept_for_class(info: ClassInfo, *, source: str = "wordnet") -> Concept:
    """The concept text of one class; ``source`` is ``wordnet``, ``definition`` or ``both``."""
    if source not in SOURCES:
        raise ConfigError(f"config key 'text.concept_source': {source!r} is not one of {', '.join(SOURCES)}")
    has_def = bool(info.definition and info.definition.strip())
    use_def = has_def and (source in ("definition", "both") or info.wnid is None)
    use_wn = info.wnid is not None and (source in ("wordnet", "both") or not has_def)
    if use_wn:
        synsets, text = synset_text(_synset_for_wnid(info))
        if use_def:
            return Concept(info.name, "both", synsets, f"{text} {_definition_text(info)}")
        return Concept(info.name, "wordnet", synsets, text)
    if use_def:
        return Concept(info.name, "definition", [], _definition_text(info))
    syn = _first_noun_sense(info.name)
    synsets, text = synset_text(syn)
    return Concept(info.name, "first-noun-sense", synsets, text)


def concept_texts(classes: list[ClassInfo], *, source: str = "wordnet") -> list[Concept]:
    """Concepts of all classes, in class order; warns once listing the name-only classes."""
    concepts = [concept_for_class(c, source=source) for c in classes]
    guessed = [f"{c.name!r} -> {c.synsets[0]}" for c in concepts if c.source == "first-noun-sense"]
    if guessed:
        warnings.warn(
            f"{len(guessed)} class(es) have only a name; their first WordNet noun sense was used "
            f"({', '.join(guessed[:10])}{', ...' if len(guessed) > 10 else ''}). Add a \"wnid\" or "
            "\"definition\" in classes.json to choose the sense",
            UserWarning,
            stacklevel=2,
        )
    return concepts
