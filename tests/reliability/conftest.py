"""Reliability tests: helpers shared with the benchmark get pytest's assertion messages."""

import pytest

pytest.register_assert_rewrite("harness", "crashcases", "loadgen", "badinputs")
