"""Bridges to tools researchers already use (lm-evaluation-harness)."""
