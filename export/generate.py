"""Greedy, token-by-token generation for one causal-LM variant, with time to first token and throughput."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from minnow.core.errors import MinnowError
from minnow.core.measures import milliseconds, tokens_per_s
from minnow.distill.models import load_causal_lm

from .causal_lm import encode_prompt, stream_generate
from .genai import load_model
from .variants import Variant, cached

ONNX_FILES = ("model.onnx", "genai_config.json")


@dataclass(frozen=True)
class Partial:
    """The text generated so far, its length in tokens and its timings (``seconds`` since the prompt was submitted)."""

    text: str
    tokens: int
    ttft_ms: float
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return tokens_per_s(self.tokens, self.seconds)


def throughput(finals: list[Partial]) -> tuple[float, float]:
    """Tokens/s and mean time to first token (ms) of finished requests, as measure and the demo report them."""
    return tokens_per_s(sum(f.tokens for f in finals), sum(f.seconds for f in finals)), mean(f.ttft_ms for f in finals)


def stream_text(
    variant: Variant, prompt: str, max_new_tokens: int, threads: int, repetition_penalty: float = 1.0
) -> Iterator[Partial]:
    """Greedy-decode ``prompt`` (through the chat template when the tokenizer has one), one Partial per token;
    ``repetition_penalty`` as :func:`penalize_repeats` applies it, the same for PyTorch and onnxruntime-genai.

    The model is loaded before the clock starts; tokens/s counts every generated token over the time since
    the prompt was submitted, so it includes the prompt's processing.
    """
    tokenizer = _tokenizer(variant)
    prompt_ids = encode_prompt(tokenizer, prompt)
    tokens = (
        _onnx_tokens(variant, prompt_ids, max_new_tokens, threads, repetition_penalty)
        if variant.precision
        else _torch_tokens(variant, prompt_ids, max_new_tokens, threads, repetition_penalty)
    )
    start = time.perf_counter()
    generated: list[int] = []
    first = 0.0
    for token in tokens:
        now = time.perf_counter()
        first = first or now
        generated.append(token)
        text = tokenizer.decode(generated, skip_special_tokens=True)
        yield Partial(text, len(generated), milliseconds(first - start), now - start)


def final_answers(
    variant: Variant, prompts: list[str], max_new_tokens: int, threads: int, repetition_penalty: float = 1.0
) -> list[Partial]:
    """Each prompt answered in full by :func:`stream_text`, one request after another: the last Partial of each."""
    return [deque(stream_text(variant, p, max_new_tokens, threads, repetition_penalty), maxlen=1)[0] for p in prompts]


def _tokenizer(variant: Variant) -> PreTrainedTokenizerBase:
    path, revision = variant.path, variant.spec.revision if variant.spec else None
    return cached(("tokenizer", path, revision), lambda: AutoTokenizer.from_pretrained(path, revision=revision))


def _onnx_tokens(
    variant: Variant, prompt_ids: list[int], max_new_tokens: int, threads: int, repetition_penalty: float
) -> Iterator[int]:
    folder = Path(variant.path).resolve()
    missing = [name for name in ONNX_FILES if not (folder / name).is_file()]
    if missing:
        raise MinnowError(f"{folder} has no {', '.join(missing)}; export it again with `minnow export RUN_DIR`")
    load_model(folder, threads)  # load now, so loading is not timed as the first token
    return stream_generate(folder, prompt_ids, max_new_tokens, threads, repetition_penalty)


def _torch_tokens(
    variant: Variant, prompt_ids: list[int], max_new_tokens: int, threads: int, repetition_penalty: float
) -> Iterator[int]:
    assert variant.spec is not None
    spec = variant.spec
    model: PreTrainedModel = cached(
        ("causal-lm", variant.key), lambda: load_causal_lm(spec, torch.device("cpu")).eval()
    )
    torch.set_num_threads(threads)
    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None and len(prompt_ids) >= context:
        raise MinnowError(f"the prompt has {len(prompt_ids)} tokens; the model's context holds {context}")
    limit = max_new_tokens if context is None else min(max_new_tokens, context - len(prompt_ids))
    return torch_greedy(model, prompt_ids, limit, _stop_ids(model, _tokenizer(variant)), repetition_penalty)


def _stop_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """``logits`` of one position with each token id in ``seen`` made less likely: a positive logit divided by
    ``penalty``, a negative one multiplied (Keskar et al. 2019, "CTRL", section 4.1; as transformers' and
    onnxruntime-genai's ``repetition_penalty``)."""
    picked = logits[seen]
    return logits.index_put((seen,), torch.where(picked > 0, picked / penalty, picked * penalty))


@torch.inference_mode()
def torch_greedy(
    model: PreTrainedModel,
    prompt_ids: list[int],
    max_new_tokens: int,
    stop_ids: set[int],
    repetition_penalty: float = 1.0,
) -> Iterator[int]:
    """Argmax decoding with the KV cache; yields each token, the stop token included, like onnxruntime-genai."""
    input_ids, past, seen = torch.tensor([prompt_ids]), None, list(prompt_ids)
    for _ in range(max_new_tokens):
        out = model(input_ids=input_ids, cache=past, use_cache=True)
        past = out.cache
        logits = out.logits[0, -1]
        if repetition_penalty != 1.0:
            logits = penalize_repeats(logits, torch.tensor(seen), repetition_penalty)
        token = int(logits.argmax())
        seen.append(token)
        yield token
        if token in stop_ids:
            return
        input_ids = torch.tensor([[token]])
