"""Teacher-written responses for sequence-level KD, teacher-written prompts, and student continuations for on-policy KD.

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
PROMPT_TOKENS = 64  # longest self-written prompt; the unfinished are dropped


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


@torch.inference_mode()
def self_written_prompts(
    model: torch.nn.Module,
    tok: PreTrainedTokenizerBase,
    count: int,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> list[str]:
    """``count`` distinct user prompts an instruct model writes from its chat template's opening alone.

    Magpie (Xu et al. 2024, "Magpie: Alignment Data Synthesis from Scratch by Prompting Aligned LLMs with Nothing"):
    given the template up to where the user's message starts, an aligned model samples a plausible user request.
    Requests the model does not finish within ``max_new_tokens``, or of fewer than three words, are dropped.
    """
    sentinel = "\x00MINNOW\x00"
    opening = tok.apply_chat_template([{"role": "user", "content": sentinel}], tokenize=False).split(sentinel)[0]
    enc = tok([opening] * batch_size, add_special_tokens=False, return_tensors="pt").to(device)
    stop = tok.convert_tokens_to_ids(tok.eos_token)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model.eval()
    prompts: dict[str, None] = {}
    try:
        for _ in range(4 * count // batch_size + 4):
            ids = model.generate(
                **enc,
                do_sample=True,
                temperature=1.0,
                top_p=0.95,
                top_k=0,
                max_new_tokens=max_new_tokens,
                pad_token_id=tok.pad_token_id,
                eos_token_id=stop,
            )[:, enc["input_ids"].shape[1] :]
            for row in ids.tolist():
                if stop in row:
                    text = tok.decode(row[: row.index(stop)], skip_special_tokens=True).strip()
                    if len(text.split()) >= 3:
                        prompts[text] = None
            if len(prompts) >= count:
                break
    finally:
        torch.random.set_rng_state(generator_state)
    return list(prompts)[:count]


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
