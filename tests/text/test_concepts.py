import warnings

import pytest

from capro.data.layout import ClassInfo, parse_classes
from capro.errors import ConfigError, DataError
from capro.text.concepts import concept_for_class, concept_texts

SNEAKER = ClassInfo("Sneaker", wnid="n03472535")
SNEAKER_TEXT = (
    "gym shoe sneaker tennis shoe a canvas shoe with a pliable rubber sole "
    "shoe footwear shaped to fit the foot (below the ankle) with a flexible upper of leather or "
    "plastic and a sole and heel of heavier material "
    "plimsoll a light gym shoe with a rubber sole and a canvas top"
)


def test_wordnet_concept_text_by_hand():
    c = concept_for_class(SNEAKER)
    assert c.source == "wordnet"
    assert c.synsets == ["gym_shoe.n.01", "shoe.n.01", "plimsoll.n.02"]
    assert c.text == SNEAKER_TEXT


def test_all_relations_are_gathered():
    # square-bashing.n.01 has a hypernym and a topic, a region and a usage domain.
    c = concept_for_class(ClassInfo("drill", wnid="n00896688"))
    assert c.synsets == ["square-bashing.n.01", "military_drill.n.01", "military.n.01",
                         "united_kingdom.n.01", "slang.n.02"]
    assert c.text.startswith("square bashing ")  # "-" becomes a space
    assert "great britain" in c.text  # lemma of the region domain, "_" becomes a space
    assert "a characteristic language of a particular group" in c.text  # gloss of the usage domain
    assert c.text == c.text.lower()
    # augean_stables.n.01 has an instance hypernym (and a topic and a usage domain).
    c = concept_for_class(ClassInfo("stables", wnid="n02758270"))
    assert c.synsets == ["augean_stables.n.01", "stable.n.01", "greek_mythology.n.01", "plural.n.01"]


def test_examples_are_included():
    c = concept_for_class(ClassInfo("drumstick", wnid="n07647870"))
    assert c.synsets[0] == "drumstick.n.01"
    # helping.n.01 (a hypernym) carries example sentences.
    assert "the helpings were all small" in c.text


def test_unpadded_wnid_resolves():
    (info,) = parse_classes([{"name": "airport", "wnid": "n2692232"}])
    assert concept_for_class(info).synsets[0] == "airport.n.01"


def test_definition_sources():
    both = ClassInfo("Sneaker", wnid="n03472535", definition="A Sports SHOE.")
    only_def = ClassInfo("Tote_bag", definition="A large open bag.")
    assert concept_for_class(both).text == SNEAKER_TEXT  # wordnet wins by default
    c = concept_for_class(both, source="definition")
    assert (c.source, c.synsets, c.text) == ("definition", [], "sneaker a sports shoe.")
    c = concept_for_class(both, source="both")
    assert (c.source, c.text) == ("both", SNEAKER_TEXT + " sneaker a sports shoe.")
    for source in ("wordnet", "definition", "both"):
        c = concept_for_class(only_def, source=source)
        assert (c.source, c.text) == ("definition", "tote bag a large open bag.")
        assert concept_for_class(SNEAKER, source=source).source == "wordnet"


def test_name_only_uses_first_noun_sense_with_a_warning():
    with pytest.warns(UserWarning, match="'drumstick' -> drumstick.n.01"):
        concepts = concept_texts([SNEAKER, ClassInfo("drumstick"), ClassInfo("T-shirt/top")])
    assert [c.source for c in concepts] == ["wordnet", "first-noun-sense", "first-noun-sense"]
    assert concepts[1].synsets[0] == "drumstick.n.01"  # the chicken leg, as released
    assert concepts[2].synsets[0] == "jersey.n.03"  # via the "T-shirt" part of the name
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        concept_texts([SNEAKER])  # no warning when every class has a wnid


def test_folder_style_names_fall_back_to_their_head_noun():
    with pytest.warns(UserWarning, match="'Ankle_boot' -> boot.n.01"):
        concepts = concept_texts([ClassInfo("Ankle_boot"), ClassInfo("Running_shoe")])
    assert [c.synsets[0] for c in concepts] == ["boot.n.01", "running_shoe.n.01"]  # a whole lemma first


def test_a_run_stops_before_stage_1_on_a_class_without_a_concept(tiny_web_data, tmp_path):
    import json
    import shutil

    from capro.config import load_config
    from capro.engine.runner import run_pipeline

    data = tmp_path / "data"
    shutil.copytree(tiny_web_data, data)
    classes = json.loads((data / "classes.json").read_text())
    old = classes[0]["name"]
    classes[0] = {"name": "Qwzx blorf"}
    (data / "classes.json").write_text(json.dumps(classes))
    for split in ("train", "val", "test"):
        rows = [json.loads(line) for line in (data / f"{split}.jsonl").read_text().splitlines()]
        rows = [{**r, "label": "Qwzx blorf" if r["label"] == old else r["label"]} for r in rows]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "truth.jsonl").unlink(missing_ok=True)
    with pytest.raises(DataError, match="'Qwzx blorf' has no wnid or definition"):
        run_pipeline(data, tmp_path / "run", load_config(preset="tiny"), progress=False)
    assert not (tmp_path / "run" / "stage1").exists()


def test_errors_name_the_class_and_the_fix():
    with pytest.raises(DataError, match=r"'Qwzx blorf'.*add a \"wnid\""):
        concept_for_class(ClassInfo("Qwzx blorf"))
    with pytest.raises(DataError, match="n00000001.*not a WordNet 3.0 noun synset"):
        concept_for_class(ClassInfo("x", wnid="n00000001"))
    with pytest.raises(ConfigError, match="concept_source"):
        concept_for_class(SNEAKER, source="wikipedia")
