#!/usr/bin/env bash
# The GPU check: everything that needs a GPU, in one run of under 8 minutes on one H200.
#
#   bash benchmarks/gpu_check.sh --out DIR            # on a GPU machine with DALI installed
#   bash benchmarks/gpu_check.sh --out DIR --dry-run  # the same steps, tiny and on the CPU
#
# Steps: the `gpu`-marked tests; ImageNet-like synthetic JPEGs (>= 20,000, ~500x375, ~110 KB)
# sharded on the spot; the suite at 224 px (model only, pipeline only, end to end, DALI vs
# baseline); DALI `mixed` over hw_decoder_load x threads; the trainer for a few hundred steps with
# and without torch.compile; our ResNet-50 against torchvision's. Logs and JSON go to DIR; a short
# table is printed last. Exit status: non-zero if any step failed (the others still run).
set -uo pipefail
out="" dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    *) echo "usage: $0 --out DIR [--dry-run]" >&2; exit 2 ;;
  esac
done
[ -n "$out" ] || { echo "usage: $0 --out DIR [--dry-run]" >&2; exit 2; }
cd "$(dirname "$0")/.."
mkdir -p "$out"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONUNBUFFERED=1
cores=$(nproc)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ "$dry" = 1 ]; then
  dev=cpu; classes=4; per_class=40; size=64; batch=16; steps=2; epochs=1; sweep_loads="0.65"; sweep_threads="$cores"
else
  dev=gpu; classes=100; per_class=200; size=224; batch=256; steps=20; epochs=3; sweep_loads="0.3 0.65 0.9"
  sweep_threads="8 $cores"
fi
failed=()
step() {  # step NAME CMD...: run, log to $out/NAME.log, remember failures
  local name=$1; shift
  echo "== $name: $*"
  local t0=$SECONDS
  if "$@" >"$out/$name.log" 2>&1; then echo "   ok ($((SECONDS - t0)) s)"; else
    echo "   FAILED ($((SECONDS - t0)) s): tail of $out/$name.log"; tail -n 15 "$out/$name.log"; failed+=("$name"); fi
}

{ date -u; nvidia-smi 2>/dev/null || echo "no nvidia-smi"; $PY -c "import torch, nvidia.dali as d; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'dali', d.__version__)"; } >"$out/env.log" 2>&1
step tests "$PY" -m pytest -q -m gpu tests
step data "$PY" tools/make_synthetic_imagenet.py --out "$work/raw" --classes $classes --train-per-class $per_class \
  --val-per-class 10 --realistic --workers "$cores"
step shard "$PY" tools/shard_imagenet.py --src "$work/raw" --out "$work/shards" --samples-per-shard 250 \
  --check header --workers "$cores"
step suite "$PY" -m benchmarks --data "$work/shards" --device $dev --batch-size $batch --image-size $size \
  --steps $steps --json "$out/suite.json" --plot "$out/suite.png"
for load in $sweep_loads; do for t in $sweep_threads; do
  step "sweep_hw${load}_t$t" "$PY" -m benchmarks.pipeline_bench --data "$work/shards" --device $dev --loaders dali \
    --stages train --batch-size $batch --image-size $size --steps $steps --threads "$t" --hw-decoder-load "$load" \
    --json "$out/sweep_hw${load}_t$t.json"
done; done
for c in false true; do
  step "train_compile_$c" "$PY" -m train --config configs/rn50_imagenet.yaml data.path="$work/shards" \
    run_dir="$work/run_$c" train.epochs=$epochs train.compile=$c train.eval_every=$epochs \
    data.batch_size=$batch data.image_size=$size data.val_image_size=$size model.num_classes=$classes \
    optim.warmup_epochs=0 train.log_every=20
  cp "$work/run_$c/summary.json" "$out/train_compile_$c.json" 2>/dev/null
done
step torchvision "$PY" -m benchmarks.torchvision_check --device $dev

"$PY" - "$out" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None
rows = []
s = load("suite.json")
if s:
    rows.append(("model only", s["model_only"]["per_s"]))
    for name, stages in s["pipeline_only"].items():
        rows += [(f"pipeline {name} {k}", v["img_per_s"]) for k, v in stages.items()]
    rows += [(f"end to end {k}", v["per_s"]) for k, v in s["end_to_end"].items()]
for f in sorted(out.glob("sweep_*.json")):
    rows.append((f"dali train {f.stem.removeprefix('sweep_')}", json.loads(f.read_text())["loaders"]["dali"]["train"]["img_per_s"]))
for c in ("false", "true"):
    t = load(f"train_compile_{c}.json")
    if t:
        rows.append((f"trainer compile={c} (mean img/s)", t.get("mean_img_per_s", float("nan"))))
print("\n" + "\n".join(f"{n:<34} {v:10.1f} img/s" for n, v in rows))
if s:
    v = s["verdict"]
    print(f"input efficiency {v['efficiency']:.3f}; {v['bound']}; MFU model only {s['mfu']['model_only']:.1%}")
EOF
tail -n 1 "$out/torchvision.log" 2>/dev/null
if [ ${#failed[@]} -gt 0 ]; then echo "failed steps: ${failed[*]}"; exit 1; fi
echo "all steps passed"
