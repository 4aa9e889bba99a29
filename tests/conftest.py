"""Fixtures shared across test folders live in `tests/helpers`; they are registered here."""

import os

pytest_plugins = ["tests.helpers.models", "tests.helpers.convnets", "tests.helpers.server"]

# The tests' tiny specs build members with `python:models.py:<factory>`: trust that code here
# (the server refuses it by default; tests/reliability checks the refusal explicitly).
os.environ.setdefault("ENSERVE_TRUSTED_CODE", "*")
