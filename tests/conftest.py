"""Fixtures live per task in tests/fixtures/; each trains its artifact once per session with the real scripts."""

import pytest

pytest_plugins = [
    "tests.fixtures.digits",
    "tests.fixtures.text",
    "tests.fixtures.tabular",
    "tests.fixtures.exports",
    "tests.fixtures.hf",
    "tests.fixtures.user_pipeline",
    "tests.fixtures.image_import",
    "tests.fixtures.lm",
]


@pytest.fixture(autouse=True, scope="module")
def _torch_threads_restored():
    """Loading a language model sets PyTorch's intra-op threads for the whole process (every core but one, as a
    server wants); give the next module the threads it started with."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
