"""Every ``maas`` command answers a user error with one line naming it and a non-zero exit, never a traceback;
``--debug`` (or ``MAAS_DEBUG=1``) shows the traceback."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import REPO_ROOT
from scripts.cli import COMMANDS, DEBUG_ENV
from scripts.cli import main as maas

# (command line, what the error line must name). {artifact}: the digits artifact; {tampered}: a copy of it whose
# weights no longer match their checksum; {tmp}: a fresh directory (it holds x.json, a request body).
CASES = [
    ("build /no/such/dir", "/no/such/dir"),
    ("build {tampered} --only torchserve --model-store {tmp}/ms", "model.safetensors does not match its checksum"),
    ("build {artifact} --serving workers --only torchserve --model-store {tmp}/ms", "'workers'"),
    ("build {artifact} --format nosuch", "'nosuch'"),
    ("check {tmp} --input {tmp}/x.json", "{tmp}"),  # not an artifact: named as given, not as the handlers see it
    ("check {tampered} --input {tmp}/x.json", "{tampered}/pipeline.json"),
    ("check {artifact} --input /no/such.json", "/no/such.json"),
    ("explain {tmp} --text hello", "{tmp}"),
    ("explain {tampered} --text hello", "model.safetensors does not match its checksum"),
    ("explain {artifact} --input /no/such.json", "/no/such.json"),
    ("export /no/such --format onnx", "/no/such"),
    ("export {artifact} --format nosuch", "'nosuch'"),
    ("export {tampered} --format onnx --out {tmp}/onnx", "model.safetensors does not match its checksum"),
    ("export {artifact} --format onnx_int8_static --calibration /no/such.jsonl --out {tmp}/int8", "/no/such.jsonl"),
    ("import hf /no/such --out {tmp}/hf", "/no/such"),
    ("import onnx /no/such.onnx --labels {tmp}/x.json --input-size 8 8 --out {tmp}/onnx", "/no/such.onnx"),
    ("import torchscript /no/such.pt --labels {tmp}/x.json --input-size 8 8 --out {tmp}/ts", "/no/such.pt"),
    ("train digits --epochs 0 --out {tmp}/digits", "--epochs"),
    ("train text --data /no/such.csv --out {tmp}/text", "/no/such.csv"),
    ("train tabular --csv /no/such.csv --target y --out {tmp}/tabular", "/no/such.csv"),
    ("train image --data /no/such --out {tmp}/image", "/no/such"),
    ("train lm --corpus /no/such.txt --out {tmp}/lm", "/no/such.txt"),
    ("compress distill /no/such --layers 2", "/no/such"),
    ("compress prune /no/such --keep 0.5", "/no/such"),
    ("compress prune {artifact} --keep 0.5", "{artifact} is a image_classification model"),
    ("serve start nosuch", "'nosuch'"),
    ("serve status torchserve --model-store {tmp}/empty", "{tmp}/empty"),
    ("soak --requests 0", "--requests"),
    ("soak --time-limit 0", "--time-limit"),
    ("soak --deploy /no/such", "/no/such"),
    ("soak --deploy {artifact} --canary 100", "--canary"),
    ("serve deploy {artifact} --canary 0", "--canary"),
    ("serve promote", "model name"),
    ("bench overload --seconds 0", "--seconds"),
    ("samples", "key_file.json"),  # no TorchServe started from the checkout (REPO_ROOT is moved to {tmp} below)
    ("bench formats --models nosuch", "nosuch"),
    ("bench formats --formats tensorrt", "tensorrt"),
    ("bench serving --serving tritn.x=0", "tritn.x"),
    ("bench int8 /no/such", "/no/such"),
    ("bench ab --model nosuch", "nosuch"),
    ("bench profile --model nosuch", "nosuch"),
    ("bench compression --teacher nosuch", "nosuch"),
]
# In a process of its own: the kserve SDK and tritonclient.grpc cannot share one (scripts/deploy/kserve.py).
SUBPROCESS_CASES = [
    ("deploy kserve /no/such --storage-uri s3://bucket/maas --out {tmp}/kserve", "/no/such"),
    ("deploy check /no/such", "/no/such"),
    ("deploy check {tmp}", "{tmp}"),
    ("deploy kserve {artifact} --storage-uri s3://bucket/maas --out {tmp}/kserve --cpu two", "--cpu 'two'"),
    ("deploy kserve {artifact} --storage-uri s3://bucket/maas --out {tmp}/kserve --shm-size 4Gi", "--shm-size 4Gi"),
]


@pytest.fixture
def places(digits_artifact, tmp_path) -> dict[str, str]:
    tampered = tmp_path / "tampered"
    shutil.copytree(digits_artifact, tampered)
    weights = tampered / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one byte of the last tensor: the file no longer matches its checksum
    weights.write_bytes(bytes(data))
    work = tmp_path / "work"
    (work / "empty").mkdir(parents=True)
    (work / "x.json").write_text('{"pixels": [[0]]}')
    return {"artifact": str(digits_artifact), "tampered": str(tampered), "tmp": str(work)}


def command_words(argv: list[str]) -> str:
    words = max((w for w in COMMANDS if tuple(argv[: len(w)]) == w), key=len)
    return " ".join(["maas", *words])


def assert_one_clean_line(code: int, err: str, argv: list[str], named: str) -> None:
    assert code != 0, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    # argparse's usage block (first line "usage: ...", then indented) may come before its error line
    errors = [line for line in lines if not line.startswith(("usage:", " "))]
    assert len(errors) == 1, err
    assert errors[0].startswith(f"{command_words(argv)}: error: "), err
    assert named in errors[0], err


@pytest.mark.parametrize("line,named", CASES, ids=[line for line, _ in CASES])
def test_a_user_error_is_one_line_naming_it(line, named, places, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # maas names each command's program in sys.argv[0]
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    argv = line.format(**places).split()
    if argv[0] == "samples":
        module = importlib.import_module(COMMANDS[("samples",)].partition(":")[0])
        monkeypatch.setattr(module, "REPO_ROOT", Path(places["tmp"]))
    code = maas(argv)
    assert_one_clean_line(code, capsys.readouterr().err, argv, named.format(**places))


@pytest.mark.parametrize("line,named", SUBPROCESS_CASES, ids=[line for line, _ in SUBPROCESS_CASES])
def test_a_user_error_is_one_line_naming_it_in_a_process(line, named, places, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    argv = line.format(**places).split()
    result = subprocess.run([sys.executable, "-m", "scripts.cli", *argv], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert_one_clean_line(result.returncode, result.stderr, argv, named.format(**places))


def test_debug_shows_the_traceback(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="/no/such/dir does not exist"):
        maas(["--debug", "build", "/no/such/dir"])
    with pytest.raises(FileNotFoundError):
        maas(["build", "/no/such/dir", "--debug"])  # the flag goes anywhere on the line
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(FileNotFoundError):
        maas(["build", "/no/such/dir"])
    monkeypatch.setenv(DEBUG_ENV, "0")
    assert maas(["build", "/no/such/dir"]) == 1 and "Traceback" not in capsys.readouterr().err


def test_debug_in_a_process_prints_the_traceback(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    command = [sys.executable, "-m", "scripts.cli", "build", "/no/such/dir"]
    quiet = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    loud = subprocess.run([*command, "--debug"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 1 and quiet.stderr.strip().splitlines() == [
        "maas build: error: /no/such/dir does not exist: an artifact is a directory with pipeline.json"
    ]
    assert loud.returncode == 1 and "Traceback (most recent call last)" in loud.stderr
    assert loud.stderr.rstrip().endswith("FileNotFoundError: /no/such/dir does not exist: an artifact is a directory "
                                         "with pipeline.json")  # fmt: skip


def explode(argv: list[str]) -> None:
    raise KeyError(argv[0])


def interrupt(argv: list[str]) -> None:
    raise KeyboardInterrupt


def test_a_bug_is_one_internal_error_line_and_an_interrupt_is_quiet(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    monkeypatch.setitem(COMMANDS, ("explode",), f"{__name__}:explode")
    monkeypatch.setitem(COMMANDS, ("interrupt",), f"{__name__}:interrupt")
    assert maas(["explode", "here"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "maas explode: internal error: KeyError: 'here' (run with --debug for the traceback)"
    ]
    assert maas(["interrupt"]) == 130 and capsys.readouterr().err.splitlines() == ["maas interrupt: interrupted"]
    with pytest.raises(KeyError):
        maas(["explode", "here", "--debug"])
