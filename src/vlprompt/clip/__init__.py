"""CLIP plumbing: everything that touches open_clip's model.

``backbone`` loads a model (pretrained tag, local file, offline cache, the shipped pocket CLIPs) and feeds the text
tower with token embeddings (the one place that knows open_clip's internals); ``prompting`` builds classifiers and
learnable prompts over it; ``deep_prompts`` inserts prompts inside either tower's blocks; ``features`` extracts the
frozen image features once and serves them as the feature bank; ``bank_splits`` is the bank's view by split.
``prompt_outputs``, ``attention_output`` and ``attention_mask`` are further contexts inside the image tower: prompt
outputs kept (Prompt-CAM), a term on a block's attention output (APT), prompts seen as keys and values under a
per-token mask (TCPA).
"""
