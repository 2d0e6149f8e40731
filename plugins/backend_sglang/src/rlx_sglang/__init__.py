"""rlx-sglang: the `sglang` generator for rlx (SGLang offline engine, `sglang.Engine`)."""

__version__ = "0.1.0"
