"""rlx-math: the `math` environment plugin for rlx (competition math and toy arithmetic, math-verify rewards)."""

__version__ = "0.1.0"
