"""Examples from the user's data: load, check fields, give each a stable id, deduplicate, split held-out.

An example is a dict with an ``id`` and either ``text`` or ``prompt`` + ``response``. The id is a hash of
the content, so scores, splits and caches stay attached to the example whatever the file order.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sysconfig
from pathlib import Path

from minnow.errors import MinnowError
from minnow.recipe import Data, Recipe

Example = dict[str, str]
SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def stable_id(example: Example) -> str:
    content = json.dumps({k: v for k, v in example.items() if k != "id"}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha1(content.encode("utf-8")).hexdigest()[:16]


def python_docstrings(min_words: int = 12, max_words: int = 200) -> list[str]:
    """Paragraphs of the docstrings of the standard library's modules, classes and functions.

    Read from source with ``ast`` (nothing is imported), so every Python install has this corpus offline.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    paragraphs: list[str] = []
    for file in sorted(root.rglob("*.py")):
        if {"test", "tests", "idle_test", "site-packages"} & set(file.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef))]
        for node in nodes:
            doc = ast.get_docstring(node)
            for para in re.split(r"\n\s*\n", doc or ""):
                words = para.split()
                if min_words <= len(words) <= max_words and not para.lstrip().startswith(">>>"):
                    paragraphs.append(" ".join(words))
    return paragraphs


def _read_rows(spec: Data) -> tuple[list[dict], str]:
    """Rows as dicts plus a name for messages; jsonl is parsed here so errors can name the line."""
    if spec.builtin == "python-docstrings":
        return [{"text": t} for t in python_docstrings()], "builtin:python-docstrings"
    if spec.dataset is not None:
        import datasets

        try:
            ds = datasets.load_dataset(spec.dataset, split=spec.split)
        except Exception as e:
            raise MinnowError(f"data.dataset: cannot load {spec.dataset!r} split {spec.split!r}: {e}") from None
        return list(ds), spec.dataset
    path = Path(spec.path)
    if path.suffix not in SUFFIXES:
        raise MinnowError(f"{path}: unsupported data file type {path.suffix!r}; use one of {', '.join(SUFFIXES)}")
    if path.suffix == ".txt":
        text = path.read_text(encoding="utf-8")
        return [{"text": p.strip()} for p in re.split(r"\n\s*\n", text) if p.strip()], str(path)
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise MinnowError(f"{path}:{n}: not valid JSON: {e.msg}") from None
            if not isinstance(row, dict):
                raise MinnowError(f"{path}:{n}: each line must be a JSON object")
            rows.append(row | {"_line": n})
        return rows, str(path)
    import datasets

    try:
        ds = datasets.load_dataset(SUFFIXES[path.suffix], data_files=str(path), split="train")
    except Exception as e:
        raise MinnowError(f"{path}: cannot read: {e}") from None
    return list(ds), str(path)


def load_examples(spec: Data) -> list[Example]:
    """Examples with ``id`` and ``text`` or ``prompt``/``response``, in file order, before dedup."""
    rows, source = _read_rows(spec)
    if not rows:
        raise MinnowError(f"{source}: no examples in the data")
    fields = {"prompt": spec.prompt_field, "response": spec.response_field} if spec.prompt_field else {}
    fields = fields or {"text": spec.text_field or "text"}
    examples = []
    for i, row in enumerate(rows):
        where = f"{source}:{row.get('_line', i + 1)}"
        ex = {}
        for name, field in fields.items():
            value = row.get(field)
            if value is None:
                raise MinnowError(f"{where}: missing field {field!r} (data.{name}_field); the row has {sorted(row)}")
            if not isinstance(value, str):
                raise MinnowError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
            ex[name] = value
        if not any(v.strip() for v in ex.values()):
            continue
        examples.append(ex | {"id": stable_id(ex)})
    if not examples:
        raise MinnowError(f"{source}: every example is empty")
    return examples


def dedup(examples: list[Example]) -> list[Example]:
    seen: set[str] = set()
    return [ex for ex in examples if not (ex["id"] in seen or seen.add(ex["id"]))]


def split_heldout(examples: list[Example], heldout: int, seed: int) -> tuple[list[Example], list[Example]]:
    """Held-out set chosen by a seeded hash of the id: stable under reordering and appends."""
    if len(examples) <= heldout:
        raise MinnowError(f"data: {len(examples)} examples, but data.heldout asks to hold out {heldout}")

    def key(ex: Example) -> str:
        return hashlib.sha1(f"{seed}:{ex['id']}".encode()).hexdigest()

    held = {ex["id"] for ex in sorted(examples, key=key)[:heldout]}
    return [ex for ex in examples if ex["id"] not in held], [ex for ex in examples if ex["id"] in held]


def check_data(recipe: Recipe) -> str:
    """Load the recipe's data the way a run will, so problems surface before any compute; a one-line summary."""
    if recipe.data.dataset is not None and not Path(recipe.data.dataset).exists():
        return f"dataset {recipe.data.dataset!r} is fetched from the hub when the run starts"
    examples = load_examples(recipe.data)
    unique = dedup(examples) if recipe.curriculum.dedup else examples
    train, heldout = split_heldout(unique, recipe.data.heldout, recipe.distill.seed)
    return f"{len(examples)} examples, {len(unique)} after dedup: {len(train)} to train, {len(heldout)} held out"
