"""The `math` environment passes rlx's public environment conformance suite (toy data, one verifier process)."""

from __future__ import annotations

import pytest

from rlx.testing import EnvironmentConformance
from rlx_math.env import MathEnvironment
from rlx_math.plugin import MathEnvConfig


class TestMathEnvironmentConformance(EnvironmentConformance):
    # one verifier process and a 2 s grading limit: the garbage batch (10 completions) takes at most ~10 x 3 s
    score_time_limit_s = 60.0

    @pytest.fixture(scope="class")
    def make_environment(self):
        return lambda seed: MathEnvironment(MathEnvConfig(num_workers=1, timeout_s=2.0), seed=seed)
