"""``report.json``, the documented hand-off between stages: one pydantic model per section, written and read
through :class:`Report` (``RunDir.report()`` / ``RunDir.update_report``).

Sections keep fields a newer Minnow wrote (``extra="allow"``), so an older reader does not drop them; the fields
below are the ones other stages, the report, the demo and the cost section read.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import MinnowError

TEACHER = "teacher (PyTorch)"
STUDENT = "student (PyTorch)"


def variant_key(role: Literal["teacher", "student"], precision: str | None = None) -> str:
    """The key (and label) of a variant in ``report.json#variants`` and ``#cost.serving``."""
    if role == "teacher":
        return TEACHER
    return f"student ONNX {precision}" if precision else STUDENT


class Section(BaseModel):
    model_config = ConfigDict(extra="allow", validate_assignment=True)


class Energy(Section):
    """Energy of one metered block (:class:`minnow.core.energy.EnergyMeter`)."""

    kwh: float
    seconds: float
    measured: bool
    source: str


class VariantFigures(Section):
    """One variant measured side by side with the others (``report.json#variants.variants[key]``)."""

    size_bytes: int | None = Field(description="Size on disk of the model folder (None for a hub-cached teacher).")
    speedup_vs_teacher: float
    requests: int
    energy: Energy
    tokens_per_s: float | None = Field(None, description="Causal-lm: generated tokens over the requests' seconds.")
    ttft_ms: float | None = Field(None, description="Causal-lm: mean time to first token.")
    tokens: int | None = Field(None, description="Causal-lm: tokens generated over all requests.")
    rouge_l_vs_teacher: float | None = Field(
        None, description="Causal-lm: mean ROUGE-L F1 of the variant's greedy answers against the teacher's."
    )
    seq_rep_3: float | None = Field(
        None, description="Causal-lm: mean share of an answer's word 3-grams that repeat an earlier one (loops)."
    )
    sentences_per_s: float | None = Field(None, description="Embedding: texts embedded per second.")
    mean_cosine: float | None = None
    spearman_pairwise: float | None = None
    top10_overlap: float | None = None
    unseen: dict[str, float] | None = Field(None, description="Embedding: the same agreement on an unseen domain.")


class Variants(Section):
    threads: int
    variants: dict[str, VariantFigures]
    max_new_tokens: int | None = None
    repetition_penalty: float | None = Field(None, description="Causal-lm: `serve.repetition_penalty` of the answers.")
    prompts: int | None = None
    batch_size: int | None = None
    texts: int | None = None
    timed_texts: int | None = None
    unseen_texts: int | None = None


class ExportedFolder(Section):
    """One ONNX precision (``report.json#export[precision]``)."""

    path: str
    size_bytes: int
    parity: dict[str, Any]
    gate: dict[str, Any] | None = None
    figures: dict[str, Any] | None = None


class Footprint(Section):
    wh: float
    money: float
    gco2e: float
    seconds: float
    measured: bool
    source: str


class Serving(Section):
    requests: int
    per_1k_requests: Footprint
    per_1m_tokens: Footprint | None = None
    break_even_requests: dict[str, int | None] | None = None
    break_even_days: float | None = None


class CostSection(Section):
    assumptions: dict[str, Any]
    money_basis: str
    training: dict[str, Footprint]
    training_total: Footprint | None
    serving: dict[str, Serving]
    chart: str | None = None


class Distilled(Section):
    """``report.json#distill``: what training did and the held-out quality before and after."""

    device: str
    mixed_precision: Literal["bf16", "fp32"] = Field("fp32", description="What training ran its matmuls in.")
    steps: int
    train_seconds: float
    examples: dict[str, Any] | int
    parameters: dict[str, int]
    curriculum: dict[str, Any]
    eval_before: dict[str, Any]
    eval: dict[str, Any]
    parity_prompts: list[str]
    loss: dict[str, Any] | None = None
    teacher_cache: dict[str, Any] | None = None
    tokenizer: dict[str, Any] | None = None
    teacher_responses: str | None = None
    student_from_teacher: dict[str, Any] | None = Field(
        None, description="Causal-lm: the cut (layers kept, importance)."
    )
    baseline: dict[str, Any] | None = Field(
        None, description="`distill.baseline: sft`: the SFT-only student's figures."
    )


class Report(Section):
    name: str | None = None
    task: Literal["causal-lm", "embedding"] | None = None
    distill: Distilled | None = None
    teacher_cache: dict[str, Any] | None = None
    energy: dict[str, Energy] = Field(default_factory=dict)
    export: dict[str, ExportedFolder] | None = Field(None, description="Per precision, and `mobile`.")
    variants: Variants | None = None
    cost: CostSection | None = None

    @classmethod
    def parse(cls, text: str, source: str) -> Report:
        try:
            return cls.model_validate_json(text)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise MinnowError(f"{source}: {where}: {first['msg']} (a corrupt or foreign report.json)") from None

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)
