"""Causal-LM recipe flow: teacher + student → tokenized data → teacher scores → KD training → merged student."""

from __future__ import annotations

import time

import jinja2
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from minnow.errors import MinnowError
from minnow.recipe import Recipe, Student, Teacher
from minnow.rundir import RunDir

from .data import Example, split_examples
from .evaluate import evaluate_causal, teacher_nll
from .losses import IGNORE_INDEX, divergence
from .quality import cached_scores, training_order
from .trainer import LogitDistillTrainer
from .training import pick_device, save_pretrained, train_resuming, training_arguments

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_causal_lm(spec: Teacher | Student, device: torch.device) -> torch.nn.Module:
    try:
        model = AutoModelForCausalLM.from_pretrained(
            spec.path,
            dtype=DTYPES[spec.dtype],
            revision=spec.revision,
            trust_remote_code=spec.trust_remote_code,
            use_safetensors=True,
        )
    except (OSError, ValueError) as e:
        raise MinnowError(f"cannot load model {spec.path!r}: {str(e).splitlines()[0]}") from None
    return model.to(device)


def check_tokenizers(teacher_path: str, student_tok: PreTrainedTokenizerBase) -> None:
    """Logit KD compares distributions token by token: both models must share one vocabulary."""
    teacher_tok = AutoTokenizer.from_pretrained(teacher_path)
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise MinnowError(
            f"teacher tokenizer ({teacher_path}, {len(teacher_tok)} tokens) and student tokenizer "
            f"({student_tok.name_or_path}, {len(student_tok)} tokens) differ; logit distillation needs the same one"
        )


def tokenize(ex: Example, tok: PreTrainedTokenizerBase, chat_template: bool, max_len: int) -> dict:
    """input_ids and labels; labels are IGNORE_INDEX on the prompt so only response tokens are trained.

    A conversation (``messages``) trains its assistant turns only.
    """
    if "messages" in ex:
        use_template = chat_template and bool(tok.chat_template)
        segments = _template_segments(ex["messages"], tok) if use_template else _plain_segments(ex["messages"], tok)
        ids = [i for piece, _ in segments for i in piece][:max_len]
        labels = [i if trained else IGNORE_INDEX for piece, trained in segments for i in piece][:max_len]
        return {"id": ex["id"], "input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
    if "text" in ex:
        ids = tok(ex["text"], add_special_tokens=True)["input_ids"] + [tok.eos_token_id]
        prompt_len = 0
    elif chat_template and tok.chat_template:
        prompt = tok.apply_chat_template([{"role": "user", "content": ex["prompt"]}], add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(
            [{"role": "user", "content": ex["prompt"]}, {"role": "assistant", "content": ex["response"]}], tokenize=False
        )
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = tok(full, add_special_tokens=False)["input_ids"]
        prompt_len = len(prompt_ids) if ids[: len(prompt_ids)] == prompt_ids else len(prompt_ids) - 1
    else:
        prompt_ids = tok(ex["prompt"] + "\n", add_special_tokens=True)["input_ids"]
        ids = prompt_ids + tok(ex["response"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        prompt_len = len(prompt_ids)
    ids = ids[:max_len]
    labels = [IGNORE_INDEX] * min(prompt_len, len(ids)) + ids[prompt_len:]
    return {"id": ex["id"], "input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def _template_segments(messages: list[dict[str, str]], tok: PreTrainedTokenizerBase) -> list[tuple[list[int], bool]]:
    """The conversation through the chat template as (token ids, trained) pieces: assistant turns are trained.

    An assistant turn starts where the template of the messages before it, with the generation prompt, ends,
    and ends where the template of the messages up to and including it ends.
    """

    def render(part: list[dict[str, str]], generation_prompt: bool = False) -> str:
        try:
            return tok.apply_chat_template(part, add_generation_prompt=generation_prompt, tokenize=False)
        except jinja2.TemplateError as e:
            raise MinnowError(f"data: the chat template rejects the conversation {_opening(messages)}: {e}") from None

    full, pos, pieces = render(messages), 0, []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start, end = render(messages[:i], generation_prompt=True), render(messages[: i + 1])
        if not (full.startswith(end) and end.startswith(start) and len(start) >= pos):
            raise MinnowError(
                f"data: the tokenizer's chat template does not render the conversation {_opening(messages)} turn by "
                "turn, so its assistant turns cannot be found; set data.chat_template: false"
            )
        pieces += [(full[pos : len(start)], False), (full[len(start) : len(end)], True)]
        pos = len(end)
    pieces.append((full[pos:], False))
    return [(tok(text, add_special_tokens=False)["input_ids"], trained) for text, trained in pieces if text]


def _plain_segments(messages: list[dict[str, str]], tok: PreTrainedTokenizerBase) -> list[tuple[list[int], bool]]:
    """Without a chat template: `role: content` lines; each assistant content and its end-of-sequence are trained."""
    pieces: list[tuple[list[int], bool]] = []
    context = ""
    for message in messages:
        if message["role"] != "assistant":
            context += f"{message['role']}: {message['content']}\n"
            continue
        pieces.append((tok(context + "assistant: ", add_special_tokens=not pieces)["input_ids"], False))
        pieces.append((tok(message["content"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id], True))
        context = "\n"
    return pieces


def _opening(messages: list[dict[str, str]]) -> str:
    return repr(messages[0]["content"][:60])


def prompt_text(ex: Example, tok: PreTrainedTokenizerBase, chat_template: bool) -> str:
    """What a user would send for this example (used by the export parity check and the demo)."""
    if "messages" in ex:
        return next(m["content"] for m in reversed(ex["messages"]) if m["role"] == "user")
    if "text" in ex:
        return " ".join(ex["text"].split()[:8])
    return ex["prompt"]


def distill_causal_lm(run: RunDir) -> dict:
    recipe: Recipe = run.recipe
    cfg = recipe.distill
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(recipe.student.path, revision=recipe.student.revision)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    check_tokenizers(recipe.teacher.path, tok)

    train, heldout, counts = split_examples(recipe)
    encode = lambda ex: tokenize(ex, tok, recipe.data.chat_template, cfg.max_seq_len)  # noqa: E731
    train_rows = [r for r in map(encode, train) if any(x != IGNORE_INDEX for x in r["labels"][1:])]
    eval_rows = [r for r in map(encode, heldout) if any(x != IGNORE_INDEX for x in r["labels"][1:])]
    if not train_rows or not eval_rows:
        raise MinnowError("data: no example has response tokens left after truncation to distill.max_seq_len")
    collate = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")

    teacher = load_causal_lm(recipe.teacher, device).eval()
    student = load_causal_lm(recipe.student, device)

    ids = [r["id"] for r in train_rows]
    scores = None
    if recipe.curriculum.order == "quality-first":
        scores = cached_scores(
            run.scores,
            ids,
            lambda pos: teacher_nll(teacher, [train_rows[i] for i in pos], collate, cfg.eval_batch_size, device),
        )
    order = training_order(ids, scores, recipe.curriculum.order, cfg.seed)
    before = evaluate_causal(student, teacher, eval_rows, collate, cfg.eval_batch_size, device)

    if recipe.lora is not None:
        student = get_peft_model(
            student,
            LoraConfig(
                r=recipe.lora.r,
                lora_alpha=recipe.lora.alpha,
                lora_dropout=recipe.lora.dropout,
                target_modules=recipe.lora.target_modules,
                task_type="CAUSAL_LM",
            ),
        )
    trainer = LogitDistillTrainer(
        model=student,
        args=training_arguments(recipe, run.checkpoints, device),
        train_dataset=Dataset.from_list([train_rows[i] for i in order]),
        data_collator=collate,
        processing_class=tok,
        teacher=teacher,
        temperature=cfg.temperature,
        ce_weight=cfg.ce_weight,
        div=divergence(cfg.loss, cfg.jsd_beta, cfg.skew_alpha),
    )
    started = time.perf_counter()
    train_resuming(trainer, run.checkpoints)
    train_seconds = time.perf_counter() - started
    student = trainer.model.merge_and_unload() if recipe.lora is not None else trainer.model
    if not trainer.is_world_process_zero():
        return {}
    save_pretrained(student, tok, run.student)
    after = evaluate_causal(student, teacher, eval_rows, collate, cfg.eval_batch_size, device)
    return {
        "device": str(device),
        "examples": counts | {"train": len(train_rows), "heldout": len(eval_rows)},
        "train_seconds": round(train_seconds, 2),
        "steps": trainer.state.global_step,
        "loss_log": [
            {"step": e["step"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e and "step" in e
        ],
        "parameters": {"teacher": _count(teacher), "student": _count(student)},
        "curriculum": {
            "order": recipe.curriculum.order,
            "score": "teacher mean token NLL" if scores else None,
            "first_ids": [ids[i] for i in order[:5]],
            "scores_file": str(run.scores.relative_to(run.path)) if scores else None,
        },
        "eval_before": before,
        "eval": after,
        "parity_prompts": [prompt_text(ex, tok, recipe.data.chat_template) for ex in heldout],
    }


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
