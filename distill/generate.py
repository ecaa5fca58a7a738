"""Teacher-written responses for sequence-level KD, and student continuations for on-policy KD.

Sequence-level KD (Kim & Rush 2016, "Sequence-Level Knowledge Distillation"): the teacher answers each
training prompt (greedy, or sampled), and the student is trained on the teacher's answers instead of the
data's. Answers are kept by stable example id in ``data/teacher_responses.jsonl``, so a resumed run reuses them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from rich.progress import track
from transformers import PreTrainedTokenizerBase

from minnow.core import atomic

from .data import Example

CHUNK = 64  # examples generated between two saves of the responses file


def prompt_text_for_model(prompt: str, tok: PreTrainedTokenizerBase, chat_template: bool) -> tuple[str, bool]:
    """The prompt as :func:`distill.causal_lm.tokenize` renders it, and whether special tokens are added."""
    if chat_template and tok.chat_template:
        messages = [{"role": "user", "content": prompt}]
        return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), False
    return prompt + "\n", True


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    tok: PreTrainedTokenizerBase,
    prompts: list[str],
    chat_template: bool,
    max_new_tokens: int,
    temperature: float,
    batch_size: int,
    device: torch.device,
) -> list[str]:
    """Each prompt's continuation by ``model``: greedy when ``temperature`` is 0, else sampled at that temperature."""
    side, tok.padding_side = tok.padding_side, "left"
    model.eval()
    out: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            rendered = [prompt_text_for_model(p, tok, chat_template) for p in prompts[i : i + batch_size]]
            enc = tok(
                [r for r, _ in rendered], add_special_tokens=rendered[0][1], padding=True, return_tensors="pt"
            ).to(device)
            sampling = (
                {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 else {"do_sample": False}
            )
            ids = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                **sampling,
            )
            out += [t.strip() for t in tok.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)]
    finally:
        tok.padding_side = side
    return out


def cached_responses(
    path: Path, examples: list[Example], write: Callable[[list[Example]], list[str]]
) -> dict[str, str]:
    """Teacher responses by example id: read from ``path`` where present, the rest written by ``write`` and saved."""
    known: dict[str, str] = {}
    if path.is_file():
        known = {r["id"]: r["response"] for r in map(json.loads, path.read_text().splitlines())}
    missing = [ex for ex in examples if ex["id"] not in known]
    for start in track(range(0, len(missing), CHUNK), description="Teacher writing responses", disable=not missing):
        chunk = missing[start : start + CHUNK]
        known |= dict(zip((ex["id"] for ex in chunk), write(chunk)))
        atomic.write_text(path, "".join(json.dumps({"id": k, "response": v}) + "\n" for k, v in known.items()))
    return {ex["id"]: known[ex["id"]] for ex in examples}
