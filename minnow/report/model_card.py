"""The student folder's model card (README.md): teacher, data, recipe, the measured quality and speed, how to load it.

One function for both tasks; the task only changes the front matter, the loading snippet and the variants table.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from minnow.core import atomic
from minnow.core.report_schema import Report
from minnow.core.rundir import RunDir

from .markdown import variants_section

LOADING = {
    "embedding": """```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{folder}")  # PyTorch
embeddings = model.encode(["How do I reset my password?", "Forgot my login"])
# onnxruntime (needs `pip install sentence-transformers[onnx]`): onnx/model.onnx, or the int8 onnx/model_quantized.onnx
model = SentenceTransformer("{folder}", backend="onnx", model_kwargs={{"file_name": "onnx/model_quantized.onnx"}})
```

The ONNX graphs take `input_ids` and `attention_mask` and return `last_hidden_state` (what sentence-transformers,
Optimum and transformers.js pool) and `sentence_embedding` (mean-pooled, projected when the card's Dense module
exists, L2-normalised).""",
    "causal-lm": """```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{folder}")
model = AutoModelForCausalLM.from_pretrained("{folder}")
```

The exported ONNX folders (onnxruntime-genai) are in the run directory's `onnx/<precision>/`.""",
}
FRONT_MATTER = {
    "embedding": {"library_name": "sentence-transformers", "pipeline_tag": "sentence-similarity"},
    "causal-lm": {"library_name": "transformers", "pipeline_tag": "text-generation"},
}


def model_card(report: Report, recipe: dict, folder: str) -> str:
    """README.md text for a student distilled by the run whose ``report.json`` is ``report`` and resolved recipe is
    ``recipe`` (a plain dict); ``folder`` is the path shown in the loading snippet."""
    task, d = recipe["task"], report.distill
    teacher = recipe["teacher"]["path"]
    front = {**FRONT_MATTER[task], "tags": ["minnow", "distillation", "knowledge-distillation"]}
    if not Path(teacher).exists():  # a hub id; a local folder is no base_model the hub can link
        front["base_model"] = teacher
    cut = {k: v for k, v in (recipe["student"].get("from_teacher") or {}).items() if v is not None}
    student = (
        recipe["student"].get("path") or "cut from the teacher (" + ", ".join(f"{k}: {v}" for k, v in cut.items()) + ")"
    )
    data = recipe["data"]
    source = data.get("path") or data.get("dataset") or f"builtin `{data.get('builtin')}`"
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {recipe['name']}: a student distilled from `{teacher}` by Minnow",
        "",
        f"- **Teacher**: `{teacher}`",
        f"- **Student**: {student}; {d.parameters['student'] / 1e6:.1f} M parameters "
        f"(teacher {d.parameters['teacher'] / 1e6:.1f} M)",
        f"- **Data**: {source}; examples {d.examples}",
        f"- **Training**: {d.steps} steps in {d.train_seconds} s on {d.device} ({d.mixed_precision} matmuls)",
        "",
        "## Quality and speed",
        "",
    ]
    if report.variants:
        lines += variants_section(report.variants, task)[2:]
    else:
        lines += ["Not measured yet (the run's export stage measures every variant side by side).", ""]
    lines += [
        "## How to load",
        "",
        LOADING[task].format(folder=folder),
        "",
        "## Recipe",
        "",
        "```yaml",
        yaml.safe_dump(recipe, sort_keys=False).strip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(run: RunDir) -> None:
    """``student/README.md`` from the run's report and resolved recipe."""
    if run.student.is_dir() and run.report().distill:
        recipe = yaml.safe_load(run.resolved_recipe.read_text())
        atomic.write_text(run.student / "README.md", model_card(run.report(), recipe, str(run.student)))
