"""``maas bench ab``'s environment variants: parsed strictly, set only while the servers start."""

import os

import pytest

from scripts.benchmarking.ab import environment, parse_env


def test_environment_variables_are_parsed_and_a_malformed_one_is_named():
    assert parse_env(["GOMP_SPINCOUNT=300000", "A=b=c"]) == {"GOMP_SPINCOUNT": "300000", "A": "b=c"}
    with pytest.raises(ValueError, match="'GOMP_SPINCOUNT': expected KEY=VALUE"):
        parse_env(["GOMP_SPINCOUNT"])


def test_the_environment_is_set_while_the_servers_start_and_restored_after(monkeypatch):
    monkeypatch.setenv("MAAS_AB_KEPT", "before")
    monkeypatch.delenv("MAAS_AB_NEW", raising=False)
    with environment({"MAAS_AB_KEPT": "during", "MAAS_AB_NEW": "1"}):
        assert (os.environ["MAAS_AB_KEPT"], os.environ["MAAS_AB_NEW"]) == ("during", "1")
    assert os.environ["MAAS_AB_KEPT"] == "before" and "MAAS_AB_NEW" not in os.environ
