"""Embedding data options: sentence splits of training paragraphs and the held-back unseen-domain texts."""

from __future__ import annotations

from minnow.distill.data import python_docstrings, sentence_splits, stable_id, unseen_examples


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
