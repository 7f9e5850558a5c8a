"""Fixtures live per task in tests/fixtures/; each trains its artifact once per session with the real scripts."""

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
