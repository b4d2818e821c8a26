"""Training: the loop every gradient-trained method shares, and the runs built on it.

``loop`` (seeding, optimiser, learning-rate schedule, the resumable epoch loop) is used by both runners:
``feature_runs`` (methods on the cached feature bank) and ``image_runs`` (the image encoder in the loop); neither
imports the other. ``runs`` dispatches a run to the right one; ``context`` builds what a method sees (backbone,
classes, few-shot features, declared inputs); ``records`` writes and checks a finished run's files;
``multitask`` and ``pretrain`` are the stages before a run (a multitask prompt, the pocket CLIP); ``evaluate``
computes the metrics.
"""
