"""Fixtures shared across test folders live in `tests/helpers`; they are registered here."""

pytest_plugins = ["tests.helpers.models", "tests.helpers.convnets", "tests.helpers.server"]
