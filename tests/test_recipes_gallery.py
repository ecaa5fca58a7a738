"""Starting points: `minnow init` on common data shapes, data formats and bad rows, chat tokenization,
`minnow validate`'s model checks, and the committed JSON schema."""

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import minilm_recipe, minnow_here, write_recipe
from safetensors.numpy import save_file
from tiny_models import CHAT_TEMPLATE, support_tickets, train_tokenizer

from minnow.core.errors import MinnowError
from minnow.core.recipe import Data, load_recipe

ROOT = Path(__file__).parents[1]
CHAT = [
    {"role": "system", "content": "You are a support assistant."},
    {"role": "user", "content": "My router is very slow."},
    {"role": "assistant", "content": "Restart the router and install the latest update."},
    {"role": "user", "content": "It is still slow."},
    {"role": "assistant", "content": "Move the router closer to the access point."},
]


def test_schema_file_is_up_to_date():
    result = minnow_here("schema")
    assert result.returncode == 0, result.stderr
    committed = (ROOT / "recipes" / "recipe.schema.json").read_text()
    assert result.stdout == committed, "stale: run `minnow schema --output recipes/recipe.schema.json`"


def _chats(path: Path, n: int) -> None:
    rows = [{"messages": [m | {"content": f"{m['content']} ({i})"} for m in CHAT], "source": "web"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _pairs_csv(path: Path, n: int) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "response"])
        writer.writerows((r["prompt"] + f" #{i}", r["response"]) for i, r in enumerate(support_tickets(n)))


def _labels_csv(path: Path, n: int) -> None:
    labels = ["battery", "billing", "shipping"]
    path.write_text(
        "id,ticket,label\n" + "".join(f"{i},Ticket number {i} is about this,{labels[i % 3]}\n" for i in range(n))
    )


def _alpaca_parquet(path: Path, n: int) -> None:
    rows = [{"instruction": f"Say {i}", "input": "", "output": f"{i}"} for i in range(n)]
    pd.DataFrame(rows).to_parquet(path)


def _paragraphs(path: Path, n: int) -> None:
    path.write_text("\n\n".join(f"Paragraph {i}: the router restarts when it overheats." for i in range(n)))


@pytest.mark.parametrize(
    "name, make, n, fields",
    [
        ("chats.jsonl", _chats, 40, {"messages_field": "messages"}),
        ("pairs.csv", _pairs_csv, 60, {"prompt_field": "prompt", "response_field": "response"}),
        ("labels.csv", _labels_csv, 40, {"prompt_field": "ticket", "response_field": "label"}),
        ("alpaca.parquet", _alpaca_parquet, 300, {"prompt_field": "instruction", "response_field": "output"}),
        ("notes.txt", _paragraphs, 30, {"text_field": "text"}),
    ],
)
def test_init_writes_a_commented_recipe_that_validates(tmp_path, name, make, n, fields):
    (tmp_path / "data").mkdir()
    make(tmp_path / "data" / name, n)
    out = tmp_path / "recipes" / "starter.yaml"
    result = minnow_here("init", f"data/{name}", "--output", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    raw = yaml.safe_load(text)
    assert raw["task"] == "causal-lm" and raw["data"]["path"] == f"../data/{name}"
    assert {k: raw["data"][k] for k in fields} == fields
    assert raw["data"]["heldout"] == min(max(round(0.05 * n), 8), 500)
    assert f"# {Data.model_fields[next(iter(fields))].description}" in text
    validated = minnow_here("validate", str(out))
    assert validated.returncode == 0, validated.stderr
    if name.endswith(".txt"):
        assert "--task embedding" in result.stderr


def test_init_embedding_and_refusing_to_overwrite(tmp_path):
    _paragraphs(tmp_path / "notes.txt", 30)
    args = ("init", "notes.txt", "--task", "embedding", "--output", "r.yaml")
    assert minnow_here(*args, cwd=tmp_path).returncode == 0
    recipe = load_recipe(tmp_path / "r.yaml")
    assert recipe.task == "embedding" and recipe.student.from_teacher.layers == [0, 5]
    again = minnow_here(*args, cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr
    assert minnow_here(*args, "--force", cwd=tmp_path).returncode == 0


def test_chat_tokenization_trains_only_assistant_turns():
    from minnow.distill.causal_lm import prompt_text, tokenize
    from minnow.distill.losses import IGNORE_INDEX

    tok = train_tokenizer([m["content"] for m in CHAT] + [r["prompt"] for r in support_tickets(50)])
    assert tok.chat_template == CHAT_TEMPLATE
    example = {"id": "x", "messages": CHAT}
    answers = [m["content"] for m in CHAT if m["role"] == "assistant"]

    def trained(chat_template: bool) -> str:
        row = tokenize(example, tok, chat_template, max_len=512)
        assert len(row["labels"]) == len(row["input_ids"])
        return tok.decode([i for i, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX])

    assert trained(True) == "".join(f"{a}<|im_end|>\n" for a in answers)
    assert trained(False) == "".join(f"{a}{tok.eos_token}" for a in answers)
    assert prompt_text(example, tok, True) == "It is still slow."


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_bad_rows_stop_or_are_skipped_and_named(tmp_path, capsys):
    from minnow.distill.data import check_data, load_examples

    good = json.dumps({"prompt": "a", "response": "b"})
    data = _jsonl(tmp_path / "d.jsonl", [good, "{not json", json.dumps({"prompt": "c"}), good.replace("b", "d")])
    spec = {"path": str(data), "prompt_field": "prompt", "response_field": "response"}
    with pytest.raises(MinnowError, match=r"d\.jsonl:2: not valid JSON"):
        load_examples(Data(**spec))
    examples = load_examples(Data(**spec, on_bad_line="skip"))
    assert [e["response"] for e in examples] == ["b", "d"]
    assert [s.split(": ")[0].rsplit("/", 1)[-1] for s in examples.skipped] == ["d.jsonl:2", "d.jsonl:3"]
    err = capsys.readouterr().err
    assert "d.jsonl:2" in err and "d.jsonl:3" in err and "'response'" in err

    rows = [{"prompt": str(i), "response": str(i)} for i in range(12)]
    recipe = write_recipe(
        tmp_path / "r.yaml",
        {
            "name": "r",
            "task": "causal-lm",
            "teacher": {"path": "org/teacher"},
            "student": {"path": "org/student"},
            "data": {**spec, "on_bad_line": "skip", "heldout": 2},
        },
    )
    _jsonl(data, [json.dumps(r) for r in rows] + ["[1, 2]"])
    assert "malformed rows skipped: 1" in check_data(load_recipe(recipe))


def test_csv_messages_and_saved_dataset_folders(tmp_path):
    import datasets

    from minnow.distill.data import load_examples

    (tmp_path / "t.csv").write_text('ticket,label\n"two\nlines",billing\ntoo,many,values\nok,shipping\n')
    with pytest.raises(MinnowError, match=r"t\.csv:4: expected 2"):
        load_examples(Data(path=str(tmp_path / "t.csv"), prompt_field="ticket", response_field="label"))
    spec = Data(path=str(tmp_path / "t.csv"), prompt_field="ticket", response_field="label", on_bad_line="skip")
    assert [e["prompt"] for e in load_examples(spec)] == ["two\nlines", "ok"]

    no_answer = {"messages": [{"role": "user", "content": "hi"}]}
    data = _jsonl(tmp_path / "c.jsonl", [json.dumps({"messages": CHAT}), json.dumps(no_answer)])
    with pytest.raises(MinnowError, match=r"c\.jsonl:2: .*needs a user and an assistant"):
        load_examples(Data(path=str(data), messages_field="messages"))

    datasets.Dataset.from_list([{"text": f"t{i}"} for i in range(5)]).save_to_disk(str(tmp_path / "saved"))
    recipe = write_recipe(tmp_path / "r.yaml", minilm_recipe({"dataset": "./saved", "heldout": 1}, layers=[0]))
    assert [e["text"] for e in load_examples(load_recipe(recipe).data)] == [f"t{i}" for i in range(5)]


def _model_folder(path: Path, texts: list[str], hidden: int, layers: int) -> Path:
    tok = train_tokenizer(texts)
    tok.save_pretrained(path)
    vocab = len(tok)
    tensors = {"model.embed_tokens.weight": np.zeros((vocab, hidden), np.float32)}
    tensors |= {
        f"model.layers.{i}.mlp.up_proj.weight": np.zeros((2 * hidden, hidden), np.float32) for i in range(layers)
    }
    save_file(tensors | {"lm_head.weight": np.zeros((vocab, hidden), np.float32)}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"vocab_size": vocab}))
    return path


def test_validate_checks_local_tokenizers_and_memory(tmp_path):
    from minnow.distill.preflight import preflight, training_memory

    texts = [r["prompt"] for r in support_tickets(40)]
    _model_folder(tmp_path / "teacher", texts, hidden=32, layers=4)
    student = _model_folder(tmp_path / "student", texts, hidden=16, layers=2)
    data = _jsonl(tmp_path / "d.jsonl", [json.dumps(r) for r in support_tickets(20)])
    recipe = {
        "name": "r",
        "task": "causal-lm",
        "teacher": {"path": "teacher", "dtype": "bfloat16"},
        "student": {"path": "student"},
        "data": {"path": data.name, "prompt_field": "prompt", "response_field": "response", "heldout": 4},
        "distill": {"batch_size": 2, "max_seq_len": 64},
    }
    loaded = load_recipe(write_recipe(tmp_path / "r.yaml", recipe))
    vocab = json.loads((student / "config.json").read_text())["vocab_size"]
    teacher_params, student_params = 2 * vocab * 32 + 4 * 64 * 32, 2 * vocab * 16 + 2 * 32 * 16
    assert training_memory(loaded) == {
        "teacher weights": teacher_params * 2,
        "student training state": student_params * 16,
        "logits": 2 * 64 * vocab * 4 * 4,
    }
    shared, fits = preflight(loaded, ram=1 << 40)
    assert "share one vocabulary" in shared.text and not fits.warning
    assert preflight(loaded, ram=1000)[1].warning

    _model_folder(tmp_path / "student", ["completely different words"] * 5, hidden=16, layers=2)
    with pytest.raises(MinnowError, match="differ"):
        preflight(loaded)
