"""The example `echo` environment passes rlx's public environment conformance suite: what a third-party
environment package runs in its own tests."""

from __future__ import annotations

import pytest

from rlx.testing import EnvironmentConformance
from rlx_example_env.plugin import EchoConfig, EchoEnvironment


class TestEchoConformance(EnvironmentConformance):
    @pytest.fixture(scope="class")
    def make_environment(self):
        return lambda seed: EchoEnvironment(EchoConfig(), seed=seed)
