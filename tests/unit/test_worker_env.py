"""TorchServe's environment: its workers' OpenMP threads spin briefly, unless the user said how they wait."""

import pytest

from scripts.serving.worker_env import torchserve_env


def test_the_workers_spin_briefly_by_default():
    env = torchserve_env({"PATH": "/bin"})
    assert env == {"PATH": "/bin", "GOMP_SPINCOUNT": "10000"}


@pytest.mark.parametrize("own", [{"GOMP_SPINCOUNT": "300000"}, {"OMP_WAIT_POLICY": "ACTIVE"}])
def test_a_users_own_wait_setting_wins(own):
    assert torchserve_env({"PATH": "/bin", **own}) == {"PATH": "/bin", **own}
