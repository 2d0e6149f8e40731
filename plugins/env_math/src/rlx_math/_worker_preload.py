"""Imported once by the forkserver, so each verifier process starts with math-verify imported and warmed up."""

from rlx_math.grading import warm_up

warm_up()
