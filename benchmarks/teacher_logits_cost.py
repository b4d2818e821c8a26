"""What the teacher-logits bank costs and saves for the distilling students (docs/distillation.md).

A student (``promptkd``, ``caspl_boost``) that runs its frozen teacher per batch pays, every step, the teacher's
forward pass on the batch (PromptSRC's prompted image tower, and its prompted text tower over the training classes);
with ``teacher.logits: bank`` the rule ``teacher_logits`` runs the teacher once over V views of the N training images
(batches of the feature bank's size) and a step reads B rows of a (V, N, C) array. This script measures, on the
pocket CLIPs, with a PromptSRC teacher and a PromptKD student on random images of the backbone's size:

- one teacher forward pass on a training batch (what every step pays per batch),
- one student step (loss, backward) with the teacher per batch and with the bank,
- the bank's build (the teacher over V × N images in batches of ``--bank-batch``, timed on one such batch),

and prints, for ``--students`` runs of ``--epochs`` epochs on N = ``--classes`` × ``--shots`` images (the pocket
distillation experiment's promptkd and caspl_boost: 36 base classes, 16 shots, 5 epochs, batch 8), the teacher's
time in both designs and the bank's size. Timings on a busy shared CPU are indicative only; the sizes are exact.

Usage:
    .venv/bin/python benchmarks/teacher_logits_cost.py                 # the stand-in (pocket_v2) and the S8 teacher
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from vlprompt.clip.backbone import POCKET_MODEL, PromptedTextEncoder, load_backbone
from vlprompt.methods import MethodContext, get_method
from vlprompt.methods.promptkd import CachedTeacher, Teacher


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def context(backbone, classnames: list[str]) -> MethodContext:
    encoder = PromptedTextEncoder(backbone.model)
    return MethodContext(backbone, encoder, classnames, "a photo of a {}.", torch.device("cpu"), seed=1)


def measure(spec: str, args, student_bb, batch: torch.Tensor, names: list[str]) -> None:
    """One teacher (``model:pretrained``): its time per batch, the student's step both ways, the bank's build."""
    n, size = args.classes * args.shots, student_bb.image_size
    steps = args.epochs * max(1, n // args.batch)
    model, pretrained = spec.split(":")
    teacher_bb = load_backbone(model, pretrained or None)
    promptsrc = get_method("promptsrc")
    teacher = Teacher(promptsrc(promptsrc.make_config({}), context(teacher_bb, names)))
    promptkd = get_method("promptkd")
    student_ctx = context(student_bb, names)
    student_ctx.teacher = teacher
    student = promptkd(promptkd.make_config({}), student_ctx).train()
    t_teacher = timed(lambda: teacher.logits(batch, names), args.repeats)
    big = torch.randn(args.bank_batch, 3, size, size)
    t_bank_batch = timed(lambda: teacher.logits(big, names), 1)

    def step() -> None:
        loss, _ = student.loss(batch, torch.zeros(args.batch, dtype=torch.long))
        loss.backward()

    t_step_teacher = timed(step, args.repeats)
    cached = CachedTeacher(teacher.method, torch.randn(max(args.views), n, args.classes), names, {})
    student.teacher = cached

    def bank_step() -> None:
        cached.select(torch.arange(args.batch), torch.zeros(args.batch, dtype=torch.long))
        step()

    t_step_bank = timed(bank_step, args.repeats)
    per_batch = args.students * steps * t_teacher
    print(
        f"teacher {spec or model}: {1000 * t_teacher:.0f} ms a batch of {args.batch} "
        f"({1000 * t_bank_batch / args.bank_batch:.1f} ms an image in batches of {args.bank_batch}); "
        f"student step {1000 * t_step_teacher:.0f} ms with it, {1000 * t_step_bank:.0f} ms from the bank; "
        f"teacher time per batch, {args.students} students: {per_batch:.0f} s"
    )
    for views in args.views:
        build = math.ceil(views * n / args.bank_batch) * t_bank_batch
        size_mb = views * n * args.classes * 4 / 2**20
        print(f"  bank of V = {views}: built in {build:.0f} s, {size_mb:.2f} MiB; saves {per_batch - build:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teachers", nargs="+", default=[f"{POCKET_MODEL}:pocket_v2", "PocketCLIP-ViT-S8:"])
    parser.add_argument("--classes", type=int, default=36, help="training classes (pocket_dark's base classes)")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=5, help="config/pocket_distill.yaml's 5 (the preset's 20)")
    parser.add_argument("--students", type=int, default=2, help="students of one teacher (promptkd, caspl_boost)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--bank-batch", type=int, default=256, help="features.batch_size")
    parser.add_argument("--views", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    names = [f"class {i}" for i in range(args.classes)]
    n = args.classes * args.shots
    steps = args.epochs * max(1, n // args.batch)
    student_bb = load_backbone(POCKET_MODEL, "pocket_v2")
    size = student_bb.image_size
    batch = torch.randn(args.batch, 3, size, size)
    print(f"N = {n} images, C = {args.classes} classes, {steps} steps of {args.batch} per student, threads 1 (busy)")
    for spec in args.teachers:
        measure(spec, args, student_bb, batch, names)


if __name__ == "__main__":
    main()
