"""``maas check``: requests through both adapters in process, each answered or refused on its own."""

from __future__ import annotations

import json

from scripts.cli import main as maas
from scripts.packaging.check import check
from scripts.serving.samples import digit_png


def test_good_and_bad_requests_side_by_side(digits_artifact, held_out_digits, tmp_path, capsys):
    images, labels = held_out_digits
    inputs = {
        "digit.png": digit_png(images[0]),
        "pixels.json": json.dumps({"pixels": images[1].tolist()}).encode(),
        "broken.json": b'{"pixels": [[1, 2',
        "wrong_shape.json": json.dumps({"pixels": [[1.0, 2.0], [3.0, 4.0]]}).encode(),
        "junk.bin": b"not an image",
    }
    paths = []
    for name, body in inputs.items():
        (tmp_path / name).write_bytes(body)
        paths.append(tmp_path / name)
    rows = check(digits_artifact, paths)
    statuses = [row["torchserve"][0] for row in rows]
    assert statuses == [200, 200, 400, 400, 400]
    for row, label in zip(rows[:2], labels[:2], strict=True):  # the same answer from both adapters
        assert row["torchserve"][1]["label"] == str(label) and row["triton"].startswith(f"LABEL [1, 1] ['{label}']")
    assert "no Triton request: the body does not parse" in rows[2]["triton"]
    assert rows[3]["triton"].startswith("INVALID_ARG") and rows[4]["triton"].startswith("INVALID_ARG")
    assert "could not decode" in rows[4]["triton"]
    assert "could not decode" in rows[4]["torchserve"][1]["error"]["message"]

    assert maas(["check", str(digits_artifact), "--input", str(paths[0]), "--input", str(paths[4])]) == 0
    printed = capsys.readouterr().out
    assert "TorchServe  200" in printed and "TorchServe  400" in printed and "Triton      INVALID_ARG" in printed


def test_text_and_tabular_requests_have_a_triton_form(text_artifact, tabular_cases, tmp_path):
    (tmp_path / "texts.json").write_text(json.dumps({"text": ["Wonderful.", "Awful."]}))
    (tmp_path / "latin1.txt").write_bytes("d\xe9j\xe0 vu".encode("latin-1"))
    text = check(text_artifact, [tmp_path / "texts.json", tmp_path / "latin1.txt"])
    assert text[0]["torchserve"][0] == 200 and text[0]["triton"].startswith("LABEL [2, 1]")
    assert text[1]["torchserve"][0] == 400 and "not valid UTF-8" in text[1]["triton"]

    wine = tabular_cases["wine"]
    x, _ = wine.held_out()
    (tmp_path / "row.json").write_text(json.dumps({"features": x[0].tolist()}))
    (tmp_path / "short.json").write_text(json.dumps({"features": x[0].tolist()[:-1]}))
    rows = check(wine.artifact, [tmp_path / "row.json", tmp_path / "short.json"])
    assert rows[0]["torchserve"][0] == 200 and rows[0]["triton"].startswith("LABEL [1, 1]")
    assert rows[1]["torchserve"][0] == 400 and "no Triton request" in rows[1]["triton"]
