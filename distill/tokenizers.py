"""Which tokenizers a causal-LM recipe pairs, and whether logit distillation can compare them: checks that
`minnow validate` runs before any model loads, kept apart from the training modules so it imports no Trainer."""

from __future__ import annotations

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from minnow.core.errors import MinnowError
from minnow.core.recipe import Recipe

from .cross_tokenizer import choose_method


def tokenizers(recipe: Recipe) -> tuple[PreTrainedTokenizerBase, PreTrainedTokenizerBase]:
    """(student, teacher) tokenizers, each with a padding token."""
    student = AutoTokenizer.from_pretrained(recipe.student.path, revision=recipe.student.revision)
    teacher = AutoTokenizer.from_pretrained(recipe.teacher.path, revision=recipe.teacher.revision)
    for tok in (student, teacher):
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    return student, teacher


def cross_method(
    recipe: Recipe, student: PreTrainedTokenizerBase | None = None, teacher: PreTrainedTokenizerBase | None = None
) -> tuple[str, str]:
    """(method, why): ``same`` for one vocabulary, else ``uld`` or ``hybrid``; unsupported combinations stop.

    The tokenizers are loaded unless given.
    """
    if recipe.student.from_teacher is not None:
        return "same", "the student is cut from the teacher"
    if student is None or teacher is None:
        student, teacher = tokenizers(recipe)
    method, why = choose_method(recipe.distill.cross_tokenizer, student, teacher)
    cfg = recipe.distill
    if method != "same":
        if not cfg.teacher_cache:
            raise MinnowError(
                f"{why}; cross-tokenizer distillation reads the teacher from its cache: set distill.teacher_cache: true"
            )
        if cfg.mode != "logits" or cfg.on_policy_fraction > 0:
            raise MinnowError(f"{why}; distill.mode: sequence and distill.on_policy_fraction need one tokenizer")
    return method, why


def check_tokenizers(teacher_tok: PreTrainedTokenizerBase, student_tok: PreTrainedTokenizerBase) -> None:
    """Logit KD compares distributions token by token: both models must share one vocabulary."""
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise MinnowError(
            f"teacher tokenizer ({teacher_tok.name_or_path}, {len(teacher_tok)} tokens) and student tokenizer "
            f"({student_tok.name_or_path}, {len(student_tok)} tokens) differ; logit distillation needs the same one"
        )


def chat_template_difference(teacher_tok: PreTrainedTokenizerBase, student_tok: PreTrainedTokenizerBase) -> str | None:
    """A sentence saying how the teacher's chat template differs from the student's, or None when they agree.

    Data are rendered with the student's template, so a teacher trained on another one sees unfamiliar framing.
    """
    teacher, student = teacher_tok.chat_template, student_tok.chat_template
    if teacher == student:
        return None
    if not teacher or not student:
        which = "teacher" if not teacher else "student"
        return f"chat templates: the {which} tokenizer has none; data are rendered with the student's"
    return (
        f"chat templates differ (teacher {teacher_tok.name_or_path}, student {student_tok.name_or_path}); data are "
        "rendered with the student's, which the teacher may not expect"
    )
