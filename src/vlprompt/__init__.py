"""vlprompt: a reproducibility workbench for prompt tuning of CLIP-style vision-language models."""

__version__ = "0.1.0"
