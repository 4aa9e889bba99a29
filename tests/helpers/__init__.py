"""Helpers shared by the tests: tiny models, hand-made profiles, a served repository."""
