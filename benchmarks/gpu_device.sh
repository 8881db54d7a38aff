#!/usr/bin/env bash
# The one device call that produced benchmarks/{gpu_check,step_gpu}_h200.json. The GPU image has torch but
# no package index: pydantic(-core), annotated-types, typing-inspection, FrEIA and submitit travel as
# cp312 wheels in .whl/ (pip download --only-binary ... -d .whl; FrEIA via pip wheel).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/nvidia_smi.txt
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee $OUT/versions.txt
timeout 240 torchrun --nproc_per_node=1 benchmarks/gpu_check.py --iters 10 2>&1 | grep -v "img/s" | tee $OUT/gpu_check.log
timeout 300 python3 -m pipeline.cli bench step --settings gpu --repeats 5 --json 2>&1 | tee $OUT/bench_gpu.log
