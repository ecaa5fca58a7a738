"""Generation-level figures: ROUGE-L of a model's answer against the teacher's, and how much an answer loops."""

import pytest

from minnow.distill.metrics import rouge_l, seq_rep


@pytest.mark.parametrize(
    "candidate, reference, expected",
    [
        ("the cat sat on the mat", "the cat is on the mat", 2 * 5 / 12),  # LCS: the cat on the mat
        ("a b c", "c b a", 2 * 1 / 6),
        ("Paris is the capital", "paris is the capital", 1.0),
        ("x", "y", 0.0),
        ("", "", 1.0),
        ("", "words", 0.0),
    ],
)
def test_rouge_l_is_the_f1_of_the_longest_common_subsequence(candidate, reference, expected):
    assert rouge_l(candidate, reference) == pytest.approx(expected)
    assert rouge_l(reference, candidate) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a beautiful, wonderful, amazing, and a beautiful, wonderful, amazing, and", 3 / 8),
        ("every word here is new and so are the trigrams", 0.0),
        ("la la la la la", 2 / 3),
        ("too short", 0.0),
    ],
)
def test_seq_rep_is_the_share_of_trigrams_repeating_an_earlier_one(text, expected):
    assert seq_rep(text) == pytest.approx(expected)
