#!/usr/bin/env bash
# The GPU measurements of docs/RESULTS.md ("On a GPU"), in one go. Needs a CUDA build of torch and epiprune
# importable (installed, or PYTHONPATH=src). Without CUDA it still runs, on the CPU (a dry run of the script).
#
#   benchmarks/gpu_suite.sh OUT_DIR [EPOCHS]
#
# 1. end to end: `epiprune compare` of dense vs EPI (Taylor and magnitude) on the built-in data at 30% FLOPs,
#    ResNet-56 and ResNet-20, EPOCHS (15) epochs: final top-1, training FLOPs and GPU wall-clock, relative to dense;
# 2. step speed: benchmarks/overhead.py at batch 128 and 1024 (channel multiple 1 and 8): the policy's overhead per
#    epoch and the train-step speed-up of the network pruned to 30% FLOPs;
# 3. latency budget: benchmarks/latency.py on the GPU (tables timed after cuda.synchronize): flops:0.5 vs
#    latency:0.5 for ResNet-20/56 (measured step time vs dense, prediction error, top-1), and the dense step
#    under channels-last, bf16 autocast and torch.compile.
# Every step has its own time limit, so one that hangs costs its limit and not the rest.
set -uo pipefail
out=${1:?usage: benchmarks/gpu_suite.sh OUT_DIR [EPOCHS]}
epochs=${2:-15}
here=$(cd "$(dirname "$0")" && pwd)
device=$(python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
mkdir -p "$out"
python - > "$out/machine.txt" <<'EOF'
import platform, torch, torch_pruning
name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor()
print(f"device {name}; torch {torch.__version__} (CUDA {torch.version.cuda}); torch-pruning {torch_pruning.__version__}; "
      f"python {platform.python_version()}; {torch.get_num_threads()} CPU threads")
EOF
cat "$out/machine.txt"

for model in resnet56 resnet20; do
  echo "== compare $model (dense vs EPI, flops:0.3, $epochs epochs, $device)"
  timeout 180 python -m epiprune compare --model "$model" --budget flops:0.3 --epochs "$epochs" \
    --methods dense,epi --out "$out/compare-$model" || echo "compare $model: exit $?"
done

for spec in "128 1" "1024 1" "1024 8"; do
  set -- $spec
  echo "== overhead.py batch $1, channel multiple $2 ($device)"
  timeout 100 python "$here/overhead.py" --device "$device" --batch-size "$1" --channel-multiple "$2" \
    --flops-budget 0.3 --batches 20 --steps 30 --out "$out/overhead-$device-b$1-m$2.json" \
    || echo "overhead batch $1 multiple $2: exit $?"
done

echo "== latency.py: flops:0.5 vs latency:0.5 ($device)"
timeout 420 python "$here/latency.py" --device "$device" --models resnet20,resnet56 --epochs 6 --train-subset 5000 \
  --batch-size 512 --paths eager,channels_last,bf16,compile --out "$out/latency" || echo "latency.py: exit $?"
