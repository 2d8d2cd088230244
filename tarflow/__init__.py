"""TarFlow: Transformer autoregressive normalizing flows (Zhai et al., 2024), small and faithful."""

from tarflow.likelihood import bits_per_dim, classify, log_prob, nll_map, patch_map
from tarflow.model import Guidance, TarFlow
from tarflow.sampling import Samples, SampleSettings, denoise, reverse_stream, sample, sample_stream

__all__ = [
    "TarFlow",
    "Guidance",
    "Samples",
    "SampleSettings",
    "bits_per_dim",
    "classify",
    "denoise",
    "log_prob",
    "nll_map",
    "patch_map",
    "reverse_stream",
    "sample",
    "sample_stream",
]
__version__ = "0.1.0"
