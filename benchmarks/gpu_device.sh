#!/usr/bin/env bash
# One prepared device call (`run` on a lent GPU machine): the GPU path of `fit`, the step benchmark at the
# paper's 4 + 4 and at the authors' global batch 16 + 16 in one process (with the projected Pascal run),
# the profile of the 16 + 16 step, and the GPU tests (the step under CUDA's sync debug mode). The GPU
# image has torch but no package index: pydantic(-core), annotated-types, typing-inspection, FrEIA and
# submitit travel as cp312 wheels in .whl/ (pip download --only-binary ... -d .whl; FrEIA via pip wheel).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/nvidia_smi.txt
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee $OUT/versions.txt
timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/ddfp 2>&1 | tail -5 | tee $OUT/gpu_tests.log
timeout 240 torchrun --nproc_per_node=1 benchmarks/gpu_check.py --iters 10 2>&1 | grep -v "img/s" | tee $OUT/gpu_check.log
timeout 300 python3 -m pipeline.cli bench step --settings gpu,gpu16 --repeats 7 --json 2>&1 | tee $OUT/bench_gpu.log
timeout 120 python3 -m pipeline.cli bench profile --settings gpu16 --repeats 5 --json 2>&1 | tee $OUT/profile_gpu16.log
