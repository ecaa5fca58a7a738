"""Tiny causal-LM teacher/student pairs built locally, for tests and benchmarks (no model hub).

A byte-level BPE tokenizer is trained on the fly on synthetic support-ticket text; the teacher (Qwen2
architecture, wider and deeper) is trained briefly on that text so that it is not random; the student is a
smaller, untrained Qwen2 (or Llama, or GPT-2) sharing the tokenizer.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

PRODUCTS = ["router", "laptop", "printer", "phone", "camera", "headset", "monitor", "keyboard", "tablet", "speaker"]
PROBLEMS = {
    "does not turn on": "Hold the power button for ten seconds, then plug the {p} into another outlet.",
    "is very slow": "Restart the {p}, install the latest update and close apps you do not use.",
    "keeps disconnecting": "Move the {p} closer to the access point and forget then rejoin the network.",
    "makes a loud noise": "Switch the {p} off, check that nothing blocks the fan and clean the vents.",
    "shows an error code": "Write down the code, restart the {p} and contact support if the code stays.",
    "will not charge": "Try another cable and charger, and clean the charging port of the {p}.",
}


def support_tickets(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Prompt/response pairs in the shape of a company's support-ticket data."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        product = rng.choice(PRODUCTS)
        problem, answer = rng.choice(list(PROBLEMS.items()))
        rows.append({"prompt": f"My {product} {problem}. What should I do?", "response": answer.format(p=product)})
    return rows


def train_tokenizer(texts: list[str], vocab_size: int = 400) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _config(arch: str, vocab: int, hidden: int, layers: int, tok: PreTrainedTokenizerFast):
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        tie_word_embeddings=False,
    )
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab,
            n_embd=hidden,
            n_inner=hidden * 2,
            n_layer=layers,
            n_head=4,
            n_positions=256,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        )
    return Qwen2Config(**common) if arch == "qwen2" else LlamaConfig(**common)


def _train_briefly(model, tok: PreTrainedTokenizerFast, texts: list[str], steps: int, seed: int) -> None:
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    rng = random.Random(seed)
    for _ in range(steps):
        batch = tok(rng.sample(texts, 16), return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def make_pair(
    root: Path,
    arch: str = "qwen2",
    teacher_steps: int = 120,
    n_rows: int = 240,
    seed: int = 0,
) -> dict[str, Path]:
    """Write tokenizer, teacher, student and a prompt/response jsonl under ``root``; return their paths."""
    root.mkdir(parents=True, exist_ok=True)
    rows = support_tickets(n_rows, seed)
    chats = [
        f"<|im_start|>user\n{r['prompt']}<|im_end|>\n<|im_start|>assistant\n{r['response']}<|im_end|>\n" for r in rows
    ]
    tok = train_tokenizer(chats)
    vocab = len(tok)
    torch.manual_seed(seed)
    teacher = AutoModelForCausalLM.from_config(_config(arch, vocab, 128, 4, tok))
    _train_briefly(teacher, tok, chats, teacher_steps, seed)
    student = AutoModelForCausalLM.from_config(_config(arch, vocab, 64, 2, tok))
    paths = {"teacher": root / "teacher", "student": root / "student", "data": root / "tickets.jsonl"}
    for name in ("teacher", "student"):
        model = teacher if name == "teacher" else student
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(paths[name])
        tok.save_pretrained(paths[name])
    paths["data"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths
