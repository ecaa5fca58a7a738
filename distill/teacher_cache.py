"""Cached teacher logits: the teacher runs once, training reads its top-k log-probabilities from disk.

For every trained position (a response token) of every example, train and held-out, the cache holds the
teacher's k most likely token ids and their raw logits, and per position five numbers: the log-partition at
T = 1 and at the recipe's temperature T, the log of the probability mass outside the top k at both, and the
teacher's negative log-likelihood of the data token. That is enough for the sparse KD loss at T, for
held-out metrics at T = 1, and for the teacher-NLL quality order, so a run with a cache never loads the teacher.

Layout (``teacher_cache/`` in the run directory): ``shard-NNNNN.safetensors`` files holding tensors named
``<example id>/ids``, ``<example id>/logits``, ``<example id>/stats``; ``index.json`` mapping example id to
shard; ``provenance.json`` with what the cache was made from and its hash. A cache whose provenance no longer
matches (teacher weights, tokenizer, chat template, max_seq_len, k, temperature, data) is reported naming what
changed, or rebuilt when ``distill.rebuild_stale_cache`` is set.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import track
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerBase

from minnow.core import atomic
from minnow.core.errors import MinnowError
from minnow.core.recipe import Recipe

from .evaluate import batches
from .losses import IGNORE_INDEX, shift_for_next_token
from .model_files import file_sha256

SHARD_EXAMPLES = 256
LSE_1, LSE_T, TAIL_1, TAIL_T, NLL = range(5)  # columns of ``<id>/stats``
console = Console(stderr=True)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def teacher_weight_hashes(folder: str, known: dict | None = None) -> dict[str, str]:
    """sha256 of each weights file of a local teacher; reused from ``known`` when size and mtime are unchanged."""
    path = Path(folder)
    if not path.is_dir():
        return {"hub": folder}
    known = known or {}
    hashes = {}
    for file in sorted(path.glob("*.safetensors")):
        stat = file.stat()
        stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
        old = known.get(file.name, {})
        hashes[file.name] = old if old.get("stamp") == stamp else {"stamp": stamp, "sha256": file_sha256(file)}
    return hashes


def provenance(
    recipe: Recipe,
    tok: PreTrainedTokenizerBase,
    rows: list[dict],
    known: dict | None = None,
    student_tok: PreTrainedTokenizerBase | None = None,
) -> dict:
    """What a cache is made from; two caches with the same ``hash`` hold the same numbers.

    ``student_tok`` is given when the student's tokenizer differs from the teacher's (``tok``): the cached
    character spans are aligned with it at training time, so it is recorded too.
    """
    data = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r["id"]):
        data.update(json.dumps([row["id"], row["input_ids"], row["labels"]]).encode())
    weights = teacher_weight_hashes(recipe.teacher.path, (known or {}).get("teacher_weights"))
    parts = {
        "teacher": recipe.teacher.path,
        "teacher_revision": recipe.teacher.revision,
        "teacher_dtype": recipe.teacher.dtype,
        "teacher_weights": weights,
        "tokenizer": tokenizer_hash(tok),
        "chat_template": _sha256((tok.chat_template or "").encode()),
        "max_seq_len": recipe.distill.max_seq_len,
        "top_k": recipe.distill.cache_top_k,
        "temperature": recipe.distill.temperature,
        "data": {"examples": len(rows), "sha256": data.hexdigest()},
    }
    if student_tok is not None:
        parts["student_tokenizer"] = tokenizer_hash(student_tok)
    hashed = {
        k: ({f: w["sha256"] for f, w in v.items()} if k == "teacher_weights" and "hub" not in v else v)
        for k, v in parts.items()
    }
    return parts | {"hash": _sha256(json.dumps(hashed, sort_keys=True).encode())}


def tokenizer_hash(tok: PreTrainedTokenizerBase) -> str:
    backend = getattr(tok, "backend_tokenizer", None)
    return _sha256(backend.to_str().encode() if backend else json.dumps(tok.get_vocab(), sort_keys=True).encode())


def changes(old: dict, new: dict) -> list[str]:
    """Human names of what differs between two provenances."""
    names = {
        "teacher": "teacher path",
        "teacher_revision": "teacher revision",
        "teacher_dtype": "teacher dtype",
        "tokenizer": "tokenizer",
        "student_tokenizer": "student tokenizer",
        "chat_template": "chat template",
        "max_seq_len": "distill.max_seq_len",
        "top_k": "distill.cache_top_k",
        "temperature": "distill.temperature",
    }
    found = []
    for key, name in names.items():
        if old.get(key) != new.get(key):
            plain = not isinstance(new.get(key), str) or key.startswith("teacher")
            found.append(f"{name} ({old.get(key)} → {new.get(key)})" if plain else name)
    old_w = {f: w.get("sha256") for f, w in old.get("teacher_weights", {}).items() if isinstance(w, dict)}
    new_w = {f: w.get("sha256") for f, w in new.get("teacher_weights", {}).items() if isinstance(w, dict)}
    if old_w != new_w:
        differ = sorted(f for f in set(old_w) | set(new_w) if old_w.get(f) != new_w.get(f))
        found.append(f"teacher weights ({', '.join(differ)})")
    if old.get("data") != new.get("data"):
        found.append(
            f"data ({old.get('data', {}).get('examples')} → {new['data']['examples']} examples, content differs)"
        )
    return found


class TeacherCache:
    """Read side: the cached rows of one example, by id (shards are memory-mapped, opened once)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.index: dict[str, str] = json.loads((folder / "index.json").read_text())
        self.meta: dict = json.loads((folder / "provenance.json").read_text())
        self._open: dict[str, object] = {}

    def get(self, example_id: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids [n, k], logits [n, k], stats [n, 5]) for the example's n trained positions."""
        shard = self.index.get(example_id)
        if shard is None:
            raise MinnowError(f"{self.folder}: no cached teacher logits for example {example_id}; rebuild the cache")
        if shard not in self._open:
            self._open[shard] = safe_open(self.folder / shard, framework="pt")
        f = self._open[shard]
        return (
            f.get_tensor(f"{example_id}/ids"),
            f.get_tensor(f"{example_id}/logits"),
            f.get_tensor(f"{example_id}/stats"),
        )

    def offsets(self, example_id: str) -> torch.Tensor:
        """[n, 2] character spans of the example's n cached tokens (caches for a student with another tokenizer)."""
        self.get(example_id)
        return self._open[self.index[example_id]].get_tensor(f"{example_id}/offsets")

    def statistics(self, example_ids: list[str]) -> list[dict[str, float]]:
        """Each example's :func:`cached_statistics`, without the teacher."""
        return [cached_statistics(*self.get(example_id)[1:]) for example_id in example_ids]


def cached_statistics(top_logits: torch.Tensor, stats: torch.Tensor) -> dict[str, float]:
    """Means over an example's cached positions of what :func:`distill.scorers.token_statistics` takes from the full
    logits: NLL and confidence (top-1 probability) exactly, entropy over the top-k plus the tail as one bucket
    (a lower bound of the full entropy, exact when k covers the vocabulary)."""
    log_p = top_logits.float() - stats[:, LSE_1 : LSE_1 + 1]
    tail = stats[:, TAIL_1]  # log of the probability outside the top k
    tail_term = torch.where(torch.isinf(tail), torch.zeros_like(tail), -tail.exp() * tail)
    entropy = -(log_p.exp() * log_p).sum(-1) + tail_term
    return {
        "nll": stats[:, NLL].mean().item(),
        "entropy": entropy.mean().item(),
        "confidence": log_p[:, 0].exp().mean().item(),
    }


class CachedTeacherCollator:
    """Pads a batch like ``collate`` and adds the cached teacher rows of its trained positions at temperature T.

    ``teacher_ids`` [N, k], ``teacher_log_probs`` [N, k] and ``teacher_tail`` [N] for the N trained positions of
    the batch in row-major order (what :func:`distill.losses.sparse_kd_loss_sum` expects); with
    ``with_nll`` also ``teacher_nll`` [N].
    """

    def __init__(self, collate: Callable, cache: TeacherCache, temperature: float, with_nll: bool = False) -> None:
        self.collate, self.cache, self.temperature, self.with_nll = collate, cache, temperature, with_nll

    def __call__(self, features: list[dict]) -> dict:
        keys = ("input_ids", "attention_mask", "labels")
        batch = self.collate([{k: f[k] for k in keys} for f in features])
        parts = [self.cache.get(f["id"]) for f in features]
        for f, (ids, _, _) in zip(features, parts):
            trained = sum(x != IGNORE_INDEX for x in f["labels"][1:])
            if ids.shape[0] != trained:
                raise MinnowError(
                    f"teacher cache: example {f['id']} has {ids.shape[0]} cached positions, not {trained}"
                )
        lse, tail = (LSE_1, TAIL_1) if self.temperature == 1.0 else (LSE_T, TAIL_T)
        stats = torch.cat([p[2] for p in parts])
        batch["teacher_ids"] = torch.cat([p[0] for p in parts]).long()
        batch["teacher_log_probs"] = torch.cat([p[1] for p in parts]) / self.temperature - stats[:, lse : lse + 1]
        batch["teacher_tail"] = stats[:, tail]
        if self.with_nll:
            batch["teacher_nll"] = stats[:, NLL]
        return batch


@torch.inference_mode()
def cache_rows(logits: torch.Tensor, targets: torch.Tensor, k: int, vocab: int, temperature: float):
    """The cached numbers for one sequence's trained positions: (ids [n, k], top-k logits [n, k], stats [n, 5])."""
    mask = targets != IGNORE_INDEX
    z = logits[mask].float()[:, :vocab]
    top = z.topk(min(k, vocab), -1)
    stats = []
    for t in (1.0, temperature):
        scaled = z / t
        lse = scaled.logsumexp(-1)
        tail = scaled.scatter(-1, top.indices, -math.inf).logsumexp(-1) - lse
        stats += [lse, tail]
    nll = stats[0] - z.gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)
    return (
        top.indices.to(torch.int32),
        top.values.contiguous(),
        torch.stack([stats[0], stats[2], stats[1], stats[3], nll], -1),
    )


@torch.inference_mode()
def build_cache(
    folder: Path,
    teacher: torch.nn.Module,
    rows: list[dict],
    collate: Callable,
    prov: dict,
    vocab: int,
    batch_size: int,
    device: torch.device,
) -> None:
    """Run the teacher over ``rows`` and write the cache; shards already written by an interrupted build are kept."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic.write_json(folder / "provenance.json", prov | {"complete": False})
    done = {p.name: set(_shard_ids(p)) for p in folder.glob("shard-*.safetensors")}
    index = {i: name for name, ids in done.items() for i in ids}
    k, temperature = prov["top_k"], prov["temperature"]
    todo = [r for r in sorted(rows, key=lambda r: r["id"]) if r["id"] not in index]
    shards = [todo[i : i + SHARD_EXAMPLES] for i in range(0, len(todo), SHARD_EXAMPLES)]
    number = len(done)
    for shard in track(shards, description="Caching teacher logits", console=console):
        tensors: dict[str, torch.Tensor] = {}
        for start in range(0, len(shard), batch_size):
            chunk = shard[start : start + batch_size]
            batch = next(batches(chunk, collate, len(chunk), device))
            labels = batch.pop("labels")
            logits, targets = shift_for_next_token(teacher(**batch).logits, labels)
            for row, seq_logits, seq_targets in zip(chunk, logits, targets):
                ids, top, stats = cache_rows(seq_logits, seq_targets, k, vocab, temperature)
                tensors |= {
                    f"{row['id']}/ids": ids.cpu(),
                    f"{row['id']}/logits": top.cpu(),
                    f"{row['id']}/stats": stats.cpu(),
                }
                if "target_offsets" in row:  # the teacher's token spans, aligned with the student's at training time
                    tensors[f"{row['id']}/offsets"] = torch.tensor(row["target_offsets"], dtype=torch.int32).reshape(
                        -1, 2
                    )
        name = f"shard-{number:05d}.safetensors"
        tmp = folder / f".{name}.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, folder / name)
        index |= {r["id"]: name for r in shard}
        number += 1
    atomic.write_json(folder / "index.json", index)
    atomic.write_json(folder / "provenance.json", prov | {"complete": True})


def _shard_ids(path: Path) -> list[str]:
    with safe_open(path, framework="pt") as f:
        return sorted({key.split("/")[0] for key in f.keys()})


def ensure_cache(
    folder: Path,
    recipe: Recipe,
    tok: PreTrainedTokenizerBase,
    rows: list[dict],
    load_teacher: Callable[[], torch.nn.Module],
    collate: Callable,
    device: torch.device,
    student_tok: PreTrainedTokenizerBase | None = None,
) -> tuple[TeacherCache, dict]:
    """A complete, current cache for ``rows``: reused, built (loading the teacher), or rebuilt when stale.

    ``tok`` is the teacher's tokenizer; ``student_tok`` the student's when it differs (see :func:`provenance`).
    """
    old = json.loads((folder / "provenance.json").read_text()) if (folder / "provenance.json").is_file() else None
    prov = provenance(recipe, tok, rows, old, student_tok)
    info = {"folder": folder.name, "top_k": recipe.distill.cache_top_k, "hash": prov["hash"], "built_seconds": None}
    if old is not None and old["hash"] == prov["hash"] and old.get("complete"):
        console.print(f"teacher cache: reusing {folder} ({prov['hash'][:12]})")
        return TeacherCache(folder), info | {"teacher_parameters": old.get("teacher_parameters")}
    if old is not None and old["hash"] != prov["hash"]:
        what = "; ".join(changes(old, prov)) or "provenance hash"
        if not recipe.distill.rebuild_stale_cache:
            raise MinnowError(
                f"{folder}: the cached teacher logits are stale, made from a different {what}; "
                "set distill.rebuild_stale_cache: true to rebuild them"
            )
        console.print(f"[yellow]teacher cache is stale ({what}); rebuilding[/]")
        shutil.rmtree(folder)
    teacher = load_teacher().eval()
    started = time.perf_counter()
    prov["teacher_parameters"] = sum(p.numel() for p in teacher.parameters())
    build_cache(folder, teacher, rows, collate, prov, len(tok), recipe.distill.eval_batch_size, device)
    del teacher
    info |= {"built_seconds": round(time.perf_counter() - started, 2), "teacher_parameters": prov["teacher_parameters"]}
    return TeacherCache(folder), info
