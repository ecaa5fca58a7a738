"""onnxruntime-genai, set up in one place: a folder's model (loaded once per thread count) and greedy generators."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import onnxruntime_genai as og


def open_model(model_dir: Path, threads: int | None = None) -> og.Model:
    """The onnxruntime-genai model in ``model_dir``, its decoder on ``threads`` intra-op threads (default: all)."""
    config = og.Config(str(model_dir))
    if threads is not None:
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    return og.Model(config)


@functools.lru_cache(maxsize=8)
def load_model(model_dir: Path, threads: int | None = None) -> og.Model:
    """:func:`open_model`, loaded once per (folder, threads)."""
    return open_model(model_dir, threads)


def greedy_generator(
    model: og.Model, max_length: int, fixed_length: bool = False, repetition_penalty: float = 1.0
) -> og.Generator:
    """A greedy generator for prompt + output of at most ``max_length`` tokens; ``fixed_length`` keeps a stop
    token from ending it early (for timing a set number of tokens); ``repetition_penalty`` as
    :func:`minnow.export.generate.penalize_repeats` applies it."""
    params = og.GeneratorParams(model)
    options = {"do_sample": False, "max_length": max_length, "repetition_penalty": repetition_penalty}
    if fixed_length:
        options["min_length"] = max_length
    params.set_search_options(**options)
    return og.Generator(model, params)
