"""Embedding data options: the builtin corpora, sentence splits of training paragraphs and the held-back
unseen-domain texts."""

from __future__ import annotations

from pathlib import Path
from pydoc_data.topics import topics

from conftest import minilm_recipe, write_recipe

from minnow.core.recipe import load_recipe
from minnow.distill.data import (
    paragraphs,
    python_docstrings,
    python_licenses,
    python_text,
    sentence_splits,
    split_examples,
    stable_id,
    unseen_examples,
)


def test_sentence_splits_keep_sentences_of_enough_words_with_stable_ids():
    paragraph = "Return the value of the key. Raise KeyError when it is missing from the mapping. Done."
    got = sentence_splits(
        [{"text": paragraph, "id": "p"}, {"text": "A single sentence paragraph with words."}], min_words=4
    )
    assert [ex["text"] for ex in got] == [
        "Return the value of the key.",
        "Raise KeyError when it is missing from the mapping.",
    ]
    assert [ex["id"] for ex in got] == [stable_id({"text": ex["text"]}) for ex in got]


def test_unseen_licences_are_a_stable_sample_outside_the_training_text():
    first = unseen_examples("python-licenses", 50, exclude=set())
    assert len(first) == 50 and len({ex["text"] for ex in first}) == 50
    assert unseen_examples("python-licenses", 50, exclude=set()) == first
    rest = unseen_examples("python-licenses", 49, exclude={first[0]["text"]})
    assert rest == first[1:]
    assert not {ex["text"] for ex in first} & set(python_docstrings())


def test_python_text_adds_reference_and_readme_prose_to_the_docstrings_and_keeps_licences_out():
    text, docstrings = python_text(), set(python_docstrings())
    assert len(text) == len(set(text))
    assert len(docstrings - set(text)) < 0.01 * len(docstrings)  # only the few docstring paragraphs on licences
    reference = {p for t in topics.values() for p in paragraphs(t)}
    assert len(reference & set(text)) > 500
    readmes = set(text) - docstrings - reference
    assert len(readmes) > 500 and any("PyTorch" in p for p in readmes)
    ours = paragraphs((Path(__file__).parents[1] / "README.md").read_text())
    assert len(ours) > 20 and not set(ours) & set(text)  # Minnow's README changes with every release
    assert not set(text) & set(python_licenses())
    assert not any("copyright" in p.lower() or "license" in p.lower() for p in text)
    assert [stable_id({"text": p}) for p in text] == sorted(stable_id({"text": p}) for p in text)


def test_a_capped_python_text_recipe_trains_on_every_kind_of_its_prose(tmp_path):
    recipe = minilm_recipe({"builtin": "python-text", "heldout": 50, "max_examples": 400}, layers=[0, 5])
    train, heldout, counts = split_examples(load_recipe(write_recipe(tmp_path / "t.yaml", recipe)))
    assert (counts["train"], counts["heldout"]) == (400, 50)
    texts = [ex["text"] for ex in train]
    from_docstrings = len(set(texts) & set(python_docstrings())) / len(texts)
    assert 0.4 < from_docstrings < 0.9  # ~65% of the corpus: the cap samples it, not its first source


def test_paragraphs_fold_whitespace_and_keep_only_mid_length_prose():
    text = "One two three four five.\n\n  Six   seven\neight nine ten.\n\n>>> print(1) # a doctest of many words here"
    assert paragraphs(text, min_words=3, max_words=5) == ["One two three four five.", "Six seven eight nine ten."]
    assert paragraphs(text, min_words=6) == []
