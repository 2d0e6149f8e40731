"""rlx-trtllm: the `trtllm` generator for rlx (TensorRT-LLM's LLM API, PyTorch backend)."""

__version__ = "0.1.0"
