"""Causal-LM recipe flow: teacher + student → tokenized data → teacher scores → KD training → merged student."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import jinja2
import torch
from datasets import Dataset
from rich.console import Console
from transformers import AutoTokenizer, DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from minnow.core import atomic
from minnow.core.errors import MinnowError
from minnow.core.recipe import Recipe
from minnow.core.rundir import RunDir

from .cross_flow import cache_teacher_cross, distill_cross_tokenizer, prepare_cross
from .curriculum import causal_learnability, causal_scorers, example_text, plan_curriculum
from .data import Example, split_examples, stable_id
from .evaluate import batches, evaluate_cached, evaluate_causal
from .generate import PROMPT_TOKENS, cached_responses, generate, self_written_prompts
from .losses import IGNORE_INDEX, divergence
from .models import load_causal_lm
from .prune import derive_causal_student, importance_rows
from .teacher_cache import CachedTeacherCollator, TeacherCache, ensure_cache
from .tokenizers import chat_template_difference, check_tokenizers, cross_method
from .trainer import ScheduledLogitDistillTrainer
from .training import merged, parameter_count, pick_device, save_pretrained, train_timed, training_arguments, with_lora


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
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": ex["prompt"]}], add_generation_prompt=True, tokenize=False
        )
        full = tok.apply_chat_template(
            [{"role": "user", "content": ex["prompt"]}, {"role": "assistant", "content": ex["response"]}],
            tokenize=False,
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


class Prepared(NamedTuple):
    tok: PreTrainedTokenizerBase
    heldout: list[Example]
    train_rows: list[dict]
    eval_rows: list[dict]
    counts: dict[str, int]
    collate: DataCollatorForSeq2Seq
    chat_template_note: str | None
    train: list[Example]


Rewrite = Callable[[list[Example], PreTrainedTokenizerBase], list[Example]]


def prepare(recipe: Recipe, rewrites: Sequence[Rewrite] = ()) -> Prepared:
    """Tokenizer check, then train and held-out examples tokenized with their trained-token labels.

    ``rewrites`` change the training examples first, in order (sequence-level KD swaps in the teacher's responses;
    self-written prompts add examples).
    """
    cfg = recipe.distill
    from_teacher = recipe.student.from_teacher is not None
    tok = AutoTokenizer.from_pretrained(
        recipe.teacher.path if from_teacher else recipe.student.path,
        revision=recipe.teacher.revision if from_teacher else recipe.student.revision,
    )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    teacher_tok = tok if from_teacher else AutoTokenizer.from_pretrained(recipe.teacher.path)
    check_tokenizers(teacher_tok, tok)
    template = chat_template_difference(teacher_tok, tok)
    if template and recipe.data.chat_template:
        Console(stderr=True).print(f"[yellow]warning:[/] {template}", highlight=False, soft_wrap=True)

    train, heldout, counts = split_examples(recipe)
    for rewrite in rewrites:
        train = rewrite(train, tok)
    encode = lambda ex: tokenize(ex, tok, recipe.data.chat_template, cfg.max_seq_len)  # noqa: E731
    train_rows = [r for r in map(encode, train) if any(x != IGNORE_INDEX for x in r["labels"][1:])]
    eval_rows = [r for r in map(encode, heldout) if any(x != IGNORE_INDEX for x in r["labels"][1:])]
    if not train_rows or not eval_rows:
        raise MinnowError("data: no example has response tokens left after truncation to distill.max_seq_len")
    collate = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")
    return Prepared(tok, heldout, train_rows, eval_rows, counts, collate, template, train)


def _teacher_writer(run: RunDir, teacher: Callable[[], torch.nn.Module], tok, device: torch.device):
    """Writes the teacher's answers to a chunk of prompt examples (the recipe's response length and temperature)."""
    cfg = run.recipe.distill
    return lambda chunk: generate(
        teacher(),
        tok,
        [ex["prompt"] for ex in chunk],
        run.recipe.data.chat_template,
        cfg.max_new_tokens,
        cfg.generation_temperature,
        cfg.eval_batch_size,
        device,
    )


def teacher_responses(run: RunDir, teacher: Callable[[], torch.nn.Module], device: torch.device) -> Rewrite:
    """The rewrite of sequence-level KD: each training example's response replaced by the teacher's own."""

    def rewrite(train: list[Example], tok: PreTrainedTokenizerBase) -> list[Example]:
        if any("prompt" not in ex for ex in train):
            raise MinnowError(
                "distill.mode: sequence needs prompt/response data (data.prompt_field, data.response_field)"
            )
        responses = cached_responses(run.teacher_responses, train, _teacher_writer(run, teacher, tok, device))
        return [ex | {"response": responses[ex["id"]]} for ex in train]

    return rewrite


def self_written(run: RunDir, teacher: Callable[[], torch.nn.Module], device: torch.device) -> Rewrite:
    """The rewrite that adds ``data.self_written_prompts`` prompts the teacher writes itself, with its answers.

    The prompts are kept in ``data/self_written_prompts.json`` and the answers by id with the other teacher
    responses, so a resumed run reuses both.
    """
    recipe, cfg = run.recipe, run.recipe.distill

    def rewrite(train: list[Example], tok: PreTrainedTokenizerBase) -> list[Example]:
        if not (recipe.data.chat_template and tok.chat_template):
            raise MinnowError(
                "data.self_written_prompts: the teacher writes prompts from its chat template; this one has none "
                "(or data.chat_template is false)"
            )
        if not run.self_written_prompts.is_file():
            n = recipe.data.self_written_prompts
            prompts = self_written_prompts(teacher(), tok, n, PROMPT_TOKENS, cfg.eval_batch_size, cfg.seed, device)
            atomic.write_json(run.self_written_prompts, prompts)
        prompts = json.loads(run.self_written_prompts.read_text())
        if len(prompts) < recipe.data.self_written_prompts:
            Console(stderr=True).print(
                f"[yellow]warning:[/] the teacher finished {len(prompts)} of the {recipe.data.self_written_prompts} "
                f"prompts asked for within {PROMPT_TOKENS} tokens; training adds those",
                highlight=False,
                soft_wrap=True,
            )
        examples = [{"prompt": p, "id": stable_id({"prompt": p})} for p in prompts]
        responses = cached_responses(run.teacher_responses, examples, _teacher_writer(run, teacher, tok, device))
        return train + [ex | {"response": responses[ex["id"]]} for ex in examples]

    return rewrite


def _prepared_with_teacher(run: RunDir, device: torch.device):
    """Prepared rows and a memoised teacher loader (the teacher is loaded at most once, only when needed)."""
    recipe = run.recipe
    teacher = functools.cache(lambda: load_causal_lm(recipe.teacher, device).eval())
    rewrites = [teacher_responses(run, teacher, device)] if recipe.distill.mode == "sequence" else []
    if recipe.data.self_written_prompts:
        rewrites.append(self_written(run, teacher, device))
    return prepare(recipe, rewrites), teacher


def cache_teacher(
    run: RunDir, prepared: Prepared | None = None, teacher: Callable | None = None
) -> tuple[TeacherCache, dict]:
    """The run's teacher cache over train and held-out rows: reused when current, else built with the teacher."""
    recipe = run.recipe
    device = pick_device(recipe.distill.device)
    if prepared is None and cross_method(recipe)[0] != "same":
        return cache_teacher_cross(run, prepare_cross(recipe), device)
    if prepared is None:
        prepared, teacher = _prepared_with_teacher(run, device)
    p = prepared
    return ensure_cache(run.teacher_cache, recipe, p.tok, p.train_rows + p.eval_rows, teacher, p.collate, device)


def student_from_teacher(run: RunDir, teacher: Callable[[], torch.nn.Module], p: Prepared, device: torch.device):
    """The pruned copy of the teacher the recipe asks for, saved once in ``student_init/`` (a resumed run reuses it)."""
    recipe = run.recipe
    spec, folder = recipe.student.from_teacher, run.student_init
    info_file = folder / "minnow_pruning.json"
    if not info_file.is_file():
        rows = importance_rows(p.train_rows, spec.importance_examples, recipe.distill.seed)
        model, info = derive_causal_student(
            teacher(), spec, list(batches(rows, p.collate, recipe.distill.eval_batch_size, device))
        )
        with atomic.output_dir(folder) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            p.tok.save_pretrained(tmp)
            (tmp / info_file.name).write_text(json.dumps(info, indent=2))
        del model
    student = recipe.student.model_copy(update={"path": str(folder), "from_teacher": None})
    return student, json.loads(info_file.read_text())


def distill_causal_lm(run: RunDir) -> dict:
    recipe: Recipe = run.recipe
    if cross_method(recipe)[0] != "same":
        if recipe.data.self_written_prompts:
            raise MinnowError("data.self_written_prompts: not available when teacher and student tokenizers differ")
        return distill_cross_tokenizer(run, prompt_text)
    cfg = recipe.distill
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    args = training_arguments(recipe, run.checkpoints, device, remove_unused_columns=not cfg.teacher_cache)
    with args.main_process_first(local=False, desc="teacher responses, pruning, teacher cache and scores"):
        # several processes: rank 0 writes these run-dir files first, the others then read them
        prepared, load_teacher = _prepared_with_teacher(run, device)
        tok, collate, train_rows, eval_rows = prepared.tok, prepared.collate, prepared.train_rows, prepared.eval_rows

        student_spec, derived = recipe.student, None
        if recipe.student.from_teacher is not None:
            student_spec, derived = student_from_teacher(run, load_teacher, prepared, device)
        cache, cache_info = None, None
        if cfg.teacher_cache:
            cache, cache_info = cache_teacher(run, prepared, load_teacher)
            load_teacher.cache_clear()  # training reads the cache; the teacher's memory goes back
            teacher = None
            if cfg.on_policy_fraction > 0 or cfg.hidden_weight > 0:
                Console(stderr=True).print(
                    "[yellow]warning:[/] distill.on_policy_fraction or distill.hidden_weight > 0: the teacher runs on "
                    "training batches, so it is loaded next to the student although its logits are cached",
                    highlight=False,
                    soft_wrap=True,
                )
                teacher = load_teacher()
            train_collate = CachedTeacherCollator(collate, cache, cfg.temperature)
            evaluate = lambda model: evaluate_cached(  # noqa: E731
                model, eval_rows, CachedTeacherCollator(collate, cache, 1.0, with_nll=True), cfg.eval_batch_size, device
            )
        else:
            teacher = load_teacher()
            train_collate = collate
            evaluate = lambda model: evaluate_causal(model, teacher, eval_rows, collate, cfg.eval_batch_size, device)  # noqa: E731
        student = load_causal_lm(student_spec, device)

        ids = [r["id"] for r in train_rows]
        texts = {ex["id"]: example_text(ex) for ex in prepared.train}
        scorers = causal_scorers(cache or teacher, student, train_rows, collate, cfg.eval_batch_size, device)
        plan = plan_curriculum(recipe.curriculum, recipe.task, recipe.data, run, ids, [texts[i] for i in ids], scorers)
    before = evaluate(student)

    def trained_student(model: torch.nn.Module, checkpoints: Path, kd: bool):
        """``model`` trained on the curriculum's schedule (the same for the KD student and the SFT baseline: ``kd``
        false, cross-entropy only), with checkpoints in ``checkpoints``; returns it (LoRA merged) and how its
        training went."""
        model = with_lora(model, recipe.lora, task_type="CAUSAL_LM")
        learnable = causal_learnability(plan, lambda: trainer.model, train_rows, collate, cfg.eval_batch_size, device)
        trainer = ScheduledLogitDistillTrainer(
            sampler=plan.sampler(
                cfg.steps, args.train_batch_size * cfg.grad_accum * args.world_size, cfg.seed, learnable
            ),
            model=model,
            args=training_arguments(recipe, checkpoints, device, remove_unused_columns=not cfg.teacher_cache),
            train_dataset=Dataset.from_list(train_rows),
            data_collator=train_collate,
            processing_class=tok,
            teacher=teacher,
            temperature=cfg.temperature,
            ce_weight=cfg.ce_weight if kd else 1.0,
            div=divergence(cfg.loss, cfg.jsd_beta, cfg.skew_alpha),
            on_policy_fraction=cfg.on_policy_fraction if kd else 0.0,
            max_new_tokens=cfg.max_new_tokens,
            hidden_weight=cfg.hidden_weight if kd else 0.0,
            teacher_layers=derived["layers"] if derived else None,
        )
        trained = train_timed(trainer, checkpoints)
        return merged(trainer.model, recipe.lora), trained

    student, trained = trained_student(student, run.checkpoints, kd=True)
    if not trained.main_process:
        return {}
    save_pretrained(student, tok, run.student)
    after, student_parameters = evaluate(student), parameter_count(student)
    baseline = None
    if cfg.baseline == "sft":
        del student
        torch.manual_seed(cfg.seed)
        sft, sft_trained = trained_student(load_causal_lm(student_spec, device), run.checkpoints_sft, kd=False)
        save_pretrained(sft, tok, run.student_sft)
        baseline = {
            "kind": "sft",
            "path": run.relative(run.student_sft),
            "train_seconds": round(sft_trained.seconds, 2),
            "eval": evaluate(sft),
        }
    teacher_parameters = parameter_count(teacher) if teacher else cache_info["teacher_parameters"]
    return trained.report(device, teacher_parameters, student_parameters) | {
        "examples": prepared.counts
        | {
            "train": len(train_rows),
            "heldout": len(eval_rows),
            "self_written_prompts": len(prepared.train) - prepared.counts["train"],
        },
        "loss": {
            "kd": _loss_name(cfg),
            "temperature": cfg.temperature,
            "ce_weight": cfg.ce_weight,
            "mode": cfg.mode,
            "on_policy_fraction": cfg.on_policy_fraction,
            "hidden_weight": cfg.hidden_weight,
        },
        "teacher_responses": run.relative(run.teacher_responses) if cfg.mode == "sequence" else None,
        "teacher_cache": cache_info if cache else None,
        "student_from_teacher": derived,
        "tokenizer": {"tokens": len(tok), "chat_template": prepared.chat_template_note or "teacher and student agree"},
        "curriculum": plan.report(),
        "eval_before": before,
        "eval": after,
        "baseline": baseline,
        "parity_prompts": [prompt_text(ex, tok, recipe.data.chat_template) for ex in prepared.heldout],
    }


def _loss_name(cfg) -> str:
    extra = {
        "jsd": f"(β={cfg.jsd_beta})",
        "skew_kl": f"(α={cfg.skew_alpha})",
        "skew_reverse_kl": f"(α={cfg.skew_alpha})",
    }
    return cfg.loss + extra.get(cfg.loss, "")
