"""Examples from the user's data: load, check fields, give each a stable id, deduplicate, split held-out.

An example is a dict with an ``id`` and either ``text``, ``prompt`` + ``response``, or ``messages`` (a chat: a
list of ``{"role", "content"}``). The id is a hash of the content, so scores, splits and caches stay attached to
the example whatever the file order. A malformed row stops the load with its file and line, or, with
``data.on_bad_line: skip``, is skipped with a warning naming them; nothing is dropped silently.
"""

from __future__ import annotations

import ast
import csv
import functools
import hashlib
import io
import json
import re
import sysconfig
from collections.abc import Callable
from importlib.metadata import distributions
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from minnow.core.errors import MinnowError
from minnow.core.recipe import Data, Recipe
from minnow.core.text import NotText, decode, read_text

Example = dict[str, Any]
Row = tuple[str, dict]
OnBadRow = Callable[[str, str], None]
console = Console(stderr=True)
ENCODING_HINT = "save the file as UTF-8, or name its encoding in data.encoding"


class BadRow(ValueError):
    """A row that cannot become an example; the message says why."""


class BadLines:
    """Applies ``data.on_bad_line`` to a malformed row: stop naming file:line, or warn and remember it."""

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.skipped: list[str] = []

    def __call__(self, where: str, problem: str) -> None:
        message = f"{where}: {problem}"
        if self.policy == "stop":
            raise MinnowError(f"{message} (data.on_bad_line: skip would skip such rows)")
        console.print(f"[yellow]warning:[/] skipped {escape(message)}", highlight=False, soft_wrap=True)
        self.skipped.append(message)


class Examples(list[Example]):
    """Loaded examples in file order; ``skipped`` holds each skipped malformed row as ``file:line: problem``."""

    def __init__(self, examples: list[Example], skipped: list[str]) -> None:
        super().__init__(examples)
        self.skipped = skipped


def stable_id(example: Example) -> str:
    content = json.dumps({k: v for k, v in example.items() if k != "id"}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha1(content.encode("utf-8")).hexdigest()[:16]


def paragraphs(text: str, min_words: int = 12, max_words: int = 200) -> list[str]:
    """The blank-line-separated paragraphs of ``text`` with ``min_words`` to ``max_words`` words, whitespace folded;
    doctest examples left out."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        words = para.split()
        if min_words <= len(words) <= max_words and not para.lstrip().startswith(">>>"):
            out.append(" ".join(words))
    return out


def python_docstrings() -> list[str]:
    """Paragraphs of the docstrings of the standard library's modules, classes and functions.

    Read from source with ``ast`` (nothing is imported), so every Python install has this corpus offline.
    """
    return list(_stdlib_docstrings())


@functools.cache
def _stdlib_docstrings() -> tuple[str, ...]:
    """Parsing the standard library takes seconds; its files do not change while a process runs."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[str] = []
    for file in sorted(root.rglob("*.py")):
        if {"test", "tests", "idle_test", "site-packages"} & set(file.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef))]
        for node in nodes:
            found += paragraphs(ast.get_docstring(node) or "")
    return tuple(found)


def python_text() -> list[str]:
    """Unique paragraphs of three kinds of prose every Python install carries: the standard library's docstrings,
    the language reference's topics (``pydoc_data``, what ``help()`` shows) and the installed packages' own
    descriptions (their READMEs, ``*.dist-info/METADATA``; not Minnow's own, which changes with every release).
    Paragraphs that speak of licences or copyright are left out, so the ``python-licenses`` evaluation stays a domain
    never trained on. In stable-id order, so that the first ``data.max_examples`` of them mix the three kinds."""
    from pydoc_data.topics import topics

    packages = [d for d in _distributions() if d.metadata["Name"].lower() != "minnow"]
    descriptions = (d.metadata.get_payload() or d.metadata.get("Description") or "" for d in packages)
    found = python_docstrings() + [p for t in topics.values() for p in paragraphs(t)]
    found += [p for text in descriptions for p in paragraphs(text) if not p.startswith(("```", "|", "<", "[!["))]
    legal = re.compile(r"licen[cs]|copyright|warrant", re.IGNORECASE)
    return sorted({p for p in found if not legal.search(p)}, key=lambda p: stable_id({"text": p}))


def _distributions() -> list[Any]:
    """Installed distributions, one per name (a package installed twice on the path counts once), sorted by name."""
    named = {d.metadata["Name"].lower(): d for d in reversed(list(distributions())) if d.metadata["Name"]}
    return [named[name] for name in sorted(named)]


def python_licenses() -> list[str]:
    """Unique paragraphs of the licence files of Python itself and of the installed packages (``*.dist-info``):
    legal prose, a domain the docstrings do not cover, for a held-back evaluation of generalisation."""
    licences = {Path(d.locate_file(f)) for d in _distributions() for f in d.files or [] if "LICEN" in f.name.upper()}
    files = [Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"] + sorted(licences)
    found: list[str] = []
    for file in files:
        try:
            found += paragraphs(file.read_text(encoding="utf-8") if file.is_file() else "")
        except (UnicodeDecodeError, OSError):
            continue
    return list(dict.fromkeys(found))


def unseen_examples(source: str, n: int, exclude: set[str]) -> list[Example]:
    """``n`` texts of the ``data.unseen`` corpus, chosen by stable id, none of whose texts is in ``exclude``."""
    texts = {"python-licenses": python_licenses}[source]()
    examples = [{"text": t, "id": stable_id({"text": t})} for t in texts if t not in exclude]
    return sorted(examples, key=lambda ex: ex["id"])[:n]


def sentence_splits(examples: list[Example], min_words: int = 6) -> list[Example]:
    """Each paragraph's sentences of at least ``min_words`` words, as examples of their own (with stable ids):
    short, query-like texts beside the paragraphs they come from. A paragraph that is one sentence adds nothing."""
    out: list[Example] = []
    for ex in examples:
        sentences = [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z`'\"(])", ex["text"]) if len(s.split()) >= min_words]
        for sentence in sentences if len(sentences) > 1 else []:
            out.append({"text": sentence, "id": stable_id({"text": sentence})})
    return out


def read_rows(spec: Data, bad: OnBadRow, limit: int | None = None) -> tuple[list[Row], str]:
    """The first ``limit`` rows (all by default), each with where it came from, and a name for the source.

    ``bad(where, problem)`` is called for each row that cannot be parsed, and may raise.
    """
    if spec.builtin is not None:
        texts = {"python-docstrings": python_docstrings, "python-text": python_text}[spec.builtin]()
        source = f"builtin:{spec.builtin}"
        return _numbered(source, [{"text": t} for t in texts[:limit]], "paragraph"), source
    if spec.dataset is not None:
        return _numbered(spec.dataset, _dataset_rows(spec, limit), "row"), spec.dataset
    if isinstance(spec.path, list):
        parts = [read_rows(spec.model_copy(update={"path": p}), bad, limit) for p in spec.path]
        return [row for rows, _ in parts for row in rows][:limit], " + ".join(source for _, source in parts)
    path = Path(spec.path)
    readers = {
        ".jsonl": _jsonl_rows,
        ".json": _json_rows,
        ".csv": _csv_rows,
        ".parquet": _parquet_rows,
        ".txt": _txt_rows,
    }
    if path.suffix.lower() not in readers:
        raise MinnowError(f"{path}: unsupported data file type {path.suffix!r}; use one of {', '.join(readers)}")
    return readers[path.suffix.lower()](path, bad, limit, spec.encoding), str(path)


def _numbered(source: str, rows: list[dict], unit: str) -> list[Row]:
    return [(f"{source}, {unit} {n}", row) for n, row in enumerate(rows, start=1)]


def _head(ds: Any, limit: int | None) -> list[dict]:
    return list(ds if limit is None else ds.select(range(min(limit, len(ds)))))


def _dataset_rows(spec: Data, limit: int | None) -> list[dict]:
    """A `datasets` hub dataset, a folder of data files, or a folder written by ``save_to_disk``."""
    import datasets

    folder = Path(spec.dataset)
    saved = (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()
    try:
        ds = datasets.load_from_disk(str(folder)) if saved else datasets.load_dataset(spec.dataset, split=spec.split)
    except Exception as e:
        raise MinnowError(f"data.dataset: cannot load {spec.dataset!r} split {spec.split!r}: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        if spec.split not in ds:
            raise MinnowError(f"data.split: {spec.dataset} has splits {', '.join(ds)}, not {spec.split!r}")
        ds = ds[spec.split]
    return _head(ds, limit)


def _jsonl_rows(path: Path, bad: OnBadRow, limit: int | None, encoding: str) -> list[Row]:
    rows: list[Row] = []
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            if limit is not None and len(rows) >= limit:
                break
            try:
                line = decode(raw, encoding, ENCODING_HINT)
            except NotText as e:
                bad(f"{path}:{n}", str(e))
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                bad(f"{path}:{n}", f"not valid JSON: {e.msg}")
                continue
            if not isinstance(row, dict):
                bad(f"{path}:{n}", "each line must be a JSON object")
                continue
            rows.append((f"{path}:{n}", row))
    return rows


def _csv_rows(path: Path, bad: OnBadRow, limit: int | None, encoding: str) -> list[Row]:
    """Rows of a comma-separated file with a header line; every value stays a string."""
    rows: list[Row] = []
    with io.StringIO(read_text(path, encoding, ENCODING_HINT), newline="") as f:
        reader = csv.DictReader(f)
        try:
            for row in reader:
                if limit is not None and len(rows) >= limit:
                    break
                where = f"{path}:{reader.line_num}"
                if None in row or None in row.values():
                    bad(where, f"expected {len(reader.fieldnames)} comma-separated values like the header")
                    continue
                rows.append((where, row))
        except csv.Error as e:
            raise MinnowError(f"{path}:{reader.line_num}: not valid CSV: {e}") from None
    return rows


def _json_rows(path: Path, bad: OnBadRow, limit: int | None, encoding: str) -> list[Row]:
    """A JSON list of objects; a .json file holding one object per line reads as JSON Lines."""
    text = read_text(path, encoding, ENCODING_HINT)
    if not text.lstrip().startswith("["):
        return _jsonl_rows(path, bad, limit, encoding)
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise MinnowError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    rows: list[Row] = []
    for n, item in enumerate(items[:limit], start=1):
        if isinstance(item, dict):
            rows.append((f"{path}, item {n}", item))
        else:
            bad(f"{path}, item {n}", "each item of the list must be a JSON object")
    return rows


def _parquet_rows(path: Path, bad: OnBadRow, limit: int | None, encoding: str) -> list[Row]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pyarrow.ArrowException, OSError) as e:
        raise MinnowError(f"{path}: not a readable parquet file: {e}") from None
    return _numbered(str(path), table.slice(0, limit).to_pylist(), "row")


def _txt_rows(path: Path, bad: OnBadRow, limit: int | None, encoding: str) -> list[Row]:
    """Paragraphs (separated by blank lines) as ``text`` rows."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", read_text(path, encoding, ENCODING_HINT)) if p.strip()]
    return _numbered(str(path), [{"text": p} for p in paragraphs[:limit]], "paragraph")


def _example(row: dict, spec: Data) -> Example:
    """The example one row holds; raises BadRow saying what is wrong with it."""
    if spec.messages_field is not None:
        return {"messages": _messages(row, spec.messages_field)}
    fields = {"prompt": spec.prompt_field, "response": spec.response_field} if spec.prompt_field else {}
    example = {}
    for name, field in (fields or {"text": spec.text_field or "text"}).items():
        value = row.get(field)
        if value is None:
            raise BadRow(f"missing field {field!r} (data.{name}_field); the row has {sorted(row)}")
        if not isinstance(value, str):
            raise BadRow(f"field {field!r} must be a string, got {type(value).__name__}")
        example[name] = value
    if not any(value.strip() for value in example.values()):
        raise BadRow("empty example: every field is blank")
    if spec.prompt_template is not None:
        example["prompt"] = spec.prompt_template.replace("{prompt}", example["prompt"])
    return example


def _messages(row: dict, field: str) -> list[dict[str, str]]:
    value = row.get(field)
    if value is None:
        raise BadRow(f"missing field {field!r} (data.messages_field); the row has {sorted(row)}")
    if not isinstance(value, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        raise BadRow(f"field {field!r} must be a list of messages, each with a string `role` and `content`")
    roles = {m["role"] for m in value}
    if not {"user", "assistant"} <= roles:
        raise BadRow(f"field {field!r} needs a user and an assistant message; its roles are {sorted(roles)}")
    if value[0]["role"] == "assistant":
        raise BadRow(f"field {field!r} starts with an assistant message; a chat starts with a system or user message")
    if not any(m["content"].strip() for m in value if m["role"] == "assistant"):
        raise BadRow(f"field {field!r} has no assistant message with content to learn")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def load_examples(spec: Data) -> Examples:
    """Examples with ``id`` and ``text``, ``prompt``/``response`` or ``messages``, in file order, before dedup."""
    bad = BadLines(spec.on_bad_line)
    rows, source = read_rows(spec, bad)
    examples = []
    for where, row in rows:
        try:
            example = _example(row, spec)
        except BadRow as e:
            bad(where, str(e))
            continue
        examples.append(example | {"id": stable_id(example)})
    if bad.skipped:
        console.print(
            f"[yellow]warning:[/] malformed rows of {escape(source)} skipped: {len(bad.skipped)} (data.on_bad_line: skip)",
            highlight=False,
            soft_wrap=True,
        )
    if not rows and not bad.skipped:
        raise MinnowError(f"{source}: no examples in the data")
    if not examples:
        raise MinnowError(f"{source}: every row is malformed ({len(bad.skipped)} skipped)")
    return Examples(examples, bad.skipped)


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


def split_examples(recipe: Recipe) -> tuple[list[Example], list[Example], dict[str, int]]:
    """Train and held-out examples as a run sees them (loaded, deduplicated, split, capped), and their counts."""
    examples = load_examples(recipe.data)
    counts = {"loaded": len(examples), "malformed_skipped": len(examples.skipped)}
    if recipe.curriculum.dedup:
        examples = dedup(examples)
    train, heldout = split_heldout(examples, recipe.data.heldout, recipe.distill.seed)
    train = train[: recipe.data.max_examples] if recipe.data.max_examples else train
    return train, heldout, counts | {"after_dedup": len(examples), "train": len(train), "heldout": len(heldout)}


def check_data(recipe: Recipe) -> str:
    """Load the recipe's data the way a run will, so problems surface before any compute; a one-line summary."""
    if recipe.data.dataset is not None and not Path(recipe.data.dataset).exists():
        return f"dataset {recipe.data.dataset!r} is fetched from the hub when the run starts"
    _, _, n = split_examples(recipe)
    skipped = f"; malformed rows skipped: {n['malformed_skipped']}" if n["malformed_skipped"] else ""
    return f"{n['loaded']} examples, {n['after_dedup']} after dedup: {n['train']} to train, {n['heldout']} held out{skipped}"
