"""rlx-vllm: the `vllm` generator for rlx (vLLM offline engine)."""

__version__ = "0.1.0"
