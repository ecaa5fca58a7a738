"""Tokenizer pre-flight of `minnow validate`: vocabulary padding reported, chat-template differences warned."""

from __future__ import annotations

import json
import shutil

from conftest import tiny_recipe, write_recipe
from transformers import AutoTokenizer

from minnow.core.recipe import load_recipe
from minnow.distill.preflight import preflight


def test_padding_and_chat_template_differences_are_reported(tiny_pair, tmp_path):
    student = tmp_path / "student"
    shutil.copytree(tiny_pair["student"], student)
    tok = AutoTokenizer.from_pretrained(student)
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    tok.save_pretrained(student)
    config = json.loads((student / "config.json").read_text())
    (student / "config.json").write_text(json.dumps(config | {"vocab_size": config["vocab_size"] + 64}))
    recipe = tiny_recipe(tiny_pair, tmp_path / "runs", student={"path": str(student)})
    findings = preflight(load_recipe(write_recipe(tmp_path / "r.yaml", recipe)))
    texts = {f.text: f.warning for f in findings}
    padding = next(t for t in texts if t.startswith("vocabulary padding"))
    assert f"student logits {config['vocab_size'] + 64}" in padding and f"first {config['vocab_size']}" in padding
    template = next(t for t in texts if t.startswith("chat templates differ"))
    assert texts[template] and str(student) in template and str(tiny_pair["teacher"]) in template
    same = preflight(load_recipe(write_recipe(tmp_path / "s.yaml", tiny_recipe(tiny_pair, tmp_path / "runs"))))
    assert not any(f.warning for f in same) and not any("chat templates" in f.text for f in same)
