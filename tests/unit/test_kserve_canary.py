"""``maas deploy kserve --canary PERCENT``: KServe's canary rollout, ``spec.predictor.canaryTrafficPercent`` on every
InferenceService, in Knative mode only (KServe's own canary does not split traffic in Standard mode).

As in ``test_kserve_check.py``, the manifests are written and the CLI run in a child process (the kserve SDK and
tritonclient.grpc cannot share one, and other unit tests import the latter); the checks run here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scripts import REPO_ROOT
from scripts.deploy.kserve_check import check_manifests
from scripts.deploy.kserve_schema import ManifestError

LM = "lm_gpt2"
WRITE = """
import json, sys
from pathlib import Path
from scripts.deploy.kserve import write_manifests
from scripts.deploy.kserve_manifests import ManifestError, Scaling
from scripts.deploy.kserve_runtimes import Runtimes
out, models, lms = Path(sys.argv[1]), ["digits", "lm_gpt2"], frozenset({"lm_gpt2"})
concurrency = {"mode": "Knative", "metric": "concurrency", "min_replicas": 0, "target": 10}
write_manifests(out / "canary", models, "s3://my-bucket/maas-v2", Scaling(**concurrency, canary=10), Runtimes(), lms)
write_manifests(out / "canary-hpa", ["digits"], "pvc://models/v2", Scaling(mode="Knative", canary=25), Runtimes())
write_manifests(out / "knative", models, "s3://my-bucket/maas", Scaling(**concurrency), Runtimes(), lms)
write_manifests(out / "standard", models, "s3://my-bucket/maas", Scaling(), Runtimes(), lms)
refused = {}
for name, kwargs in {"standard": {"canary": 10}, "zero": {"mode": "Knative", "canary": 0},
                     "hundred": {"mode": "Knative", "canary": 100}}.items():
    try:
        Scaling(**kwargs)
    except ManifestError as exc:
        refused[name] = str(exc)
print(json.dumps(refused))
"""
CLI = """
import contextlib, io, json, sys
from scripts.deploy.kserve import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            results.append(["returned", main(argv), err.getvalue()])
        except SystemExit as exc:
            results.append(["exit", exc.code, err.getvalue()])
print(json.dumps(results))
"""
BAD = ["0", "100", "-5", "10.5", "ten", ""]


def child(code: str, *args: str):
    run = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(folder of the written manifest folders, Scaling's refusals)."""
    out = tmp_path_factory.mktemp("kserve-canary")
    return out, child(WRITE, str(out))


@pytest.fixture(scope="module")
def cli(tmp_path_factory) -> dict[str, list]:
    """``maas deploy kserve`` (the module's ``main``) on each bad --canary and on --canary in Standard mode:
    [how it ended ("exit" for SystemExit, else "returned"), the code, stderr]."""
    out = tmp_path_factory.mktemp("kserve-canary-cli")
    base = ["kserve", str(out / "no-artifact"), "--storage-uri", "s3://b/m", "--out", str(out / "deploy")]
    cases = {value: [*base, "--mode", "Knative", f"--canary={value}"] for value in BAD}
    cases["standard"] = [*base, "--canary", "10"]
    return dict(zip(cases, child(CLI, json.dumps(list(cases.values()))), strict=True))


def services(folder: Path) -> dict[str, dict]:
    return {path.stem: doc for path, doc in check_manifests(folder)}  # each passes KServe's schemas and rules


# ---- what is written --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("config", "percent"), [("canary", 10), ("canary-hpa", 25)])
def test_every_inference_service_gets_the_canary_percent_and_passes_the_check(written, config, percent):
    found = services(written[0] / config)
    expected = ["digits-torchserve", "digits-triton"] + ([f"{LM}-torchserve", f"{LM}-triton"] if config == "canary"
                                                         else [])  # fmt: skip
    assert sorted(found) == expected  # torchserve, triton, and a language model's on both
    for name, doc in found.items():
        assert doc["spec"]["predictor"]["canaryTrafficPercent"] == percent, name
        assert doc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative", name


def test_the_canary_changes_the_field_and_the_storage_uri_only(written):
    """KServe canaries a new revision of the same InferenceService: same names, the new version's storageUri."""
    out, _ = written
    canary, knative = services(out / "canary"), services(out / "knative")
    assert canary.keys() == knative.keys()
    for name, doc in canary.items():
        old = knative[name]
        assert doc["metadata"] == old["metadata"]
        assert doc["spec"]["predictor"]["model"]["storageUri"].startswith("s3://my-bucket/maas-v2/")
        predictor = {**doc["spec"]["predictor"], "model": {**doc["spec"]["predictor"]["model"], "storageUri": None}}
        predictor.pop("canaryTrafficPercent")
        assert predictor == {**old["spec"]["predictor"], "model": {**old["spec"]["predictor"]["model"],
                                                                   "storageUri": None}}  # fmt: skip


@pytest.mark.parametrize("config", ["knative", "standard"])
def test_no_canary_field_without_the_option(written, config):
    found = services(written[0] / config)
    assert len(found) == 4
    assert all("canaryTrafficPercent" not in doc["spec"]["predictor"] for doc in found.values())


def test_scaling_refuses_a_canary_outside_1_to_99_or_in_standard_mode(written):
    _, refused = written
    assert refused["standard"].startswith("--canary needs --mode Knative") and "not Standard" in refused["standard"]
    assert refused["zero"] == "--canary 0: a percentage of the requests, 1..99"
    assert refused["hundred"] == "--canary 100: a percentage of the requests, 1..99"


# ---- the command line ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", BAD)
def test_the_cli_refuses_a_canary_that_is_not_1_to_99(cli, value):
    ended, code, stderr = cli[value]
    assert (ended, code) == ("exit", 2)  # argparse's error, before anything is read or written
    assert stderr.splitlines()[-1].endswith(f"error: argument --canary: a whole percentage of the requests, 1..99, "
                                            f"not {value!r}")  # fmt: skip


def test_the_cli_refuses_a_canary_in_standard_mode_in_one_line(cli):
    ended, code, stderr = cli["standard"]
    assert (ended, code) == ("returned", 1)
    assert stderr.splitlines() == ["maas deploy: error: --canary needs --mode Knative: KServe's canary rollout "
                                   "(canaryTrafficPercent) splits traffic between revisions in Knative mode only, "
                                   "not Standard"]  # fmt: skip


# ---- maas deploy check on an edited manifest ----------------------------------------------------------------------
def edited(written, tmp_path: Path, config: str, value) -> Path:
    folder = Path(shutil.copytree(written[0] / config, tmp_path / config))
    path = folder / "digits-triton.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["predictor"]["canaryTrafficPercent"] = value
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder


def test_check_takes_a_rollback_to_0_in_knative_mode(written, tmp_path):
    check_manifests(edited(written, tmp_path, "canary", 0))  # 100% back to the last revision rolled out


@pytest.mark.parametrize(("config", "value", "message"), [
    ("standard", 10, "spec.predictor.canaryTrafficPercent: KServe splits traffic between revisions in Knative mode"),
    ("canary", 150, "spec.predictor.canaryTrafficPercent: 150 is not a percentage in 0..100"),
    ("canary", -1, "spec.predictor.canaryTrafficPercent: -1 is not a percentage in 0..100"),
])  # fmt: skip
def test_check_refuses_a_canary_kserve_would_ignore_or_knative_refuse(written, tmp_path, config, value, message):
    with pytest.raises(ManifestError) as refused:
        check_manifests(edited(written, tmp_path, config, value))
    assert "digits-triton.yaml" in str(refused.value) and message in str(refused.value)
