"""SINGER harness: a benchmark and ablation harness for audio-driven singing video generation."""

__version__ = "0.1.0"
