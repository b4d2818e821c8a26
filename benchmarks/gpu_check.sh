#!/usr/bin/env bash
# The GPU checks in one run, on a machine with a CUDA device: the GPU tests (fp16-autocast extraction against the
# CPU's, a CoOp job under autocast + GradScaler against the CPU's), then the extraction, text-encoder and training
# benchmarks on the GPU (each prints its figures), and seeds trained together against one after the other.
# Run from the repository root with the project installed (`make install`, then
# `.venv/bin/bash benchmarks/gpu_check.sh`), or with its dependencies on PYTHONPATH.
set -euo pipefail
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
"$PY" -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__, \
'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
"$PY" -m pytest -m gpu tests/test_gpu.py -p no:cacheprovider -q -rA -o addopts="" -s
"$PY" benchmarks/extract.py --device cuda --images 4096 --batch-size 256 --workers 8 --threads 8 --vit-b-16 4096
"$PY" benchmarks/text_encoder.py --device cuda --classes 100 --repeat 5
"$PY" benchmarks/train_speed.py --device cuda --model ViT-B-16 --classes 100 --shots 16 --steps 20 --threads 8
# seeds trained together (train.batch_seeds) against one after the other: runs per GPU-hour (target >= 3x)
"$PY" benchmarks/batched_speed.py --device cuda --model ViT-B-16 --classes 100 --epochs 1 --runs 1 3 8
# the same for a deep-prompt method (VPT-deep: the image tower once per step over every seed's images)
"$PY" benchmarks/batched_speed.py --device cuda --model ViT-B-16 --method vpt_deep --classes 100 --shots 4 \
  --batch-size 4 --epochs 1 --runs 1 3 8
