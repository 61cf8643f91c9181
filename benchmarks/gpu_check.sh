#!/usr/bin/env bash
# The GPU check: everything that needs a GPU, in one command of under 540 s (install included) on
# one H200 with 16 cores, or 240 s with --quick.
#
#   bash benchmarks/gpu_check.sh --out DIR            # on the GPU machine (python3 or $PYTHON)
#   bash benchmarks/gpu_check.sh --out DIR --quick    # the suite only: <= 240 s
#   bash benchmarks/gpu_check.sh --out DIR --only startup,compile_default   # named steps (+ what they need)
#   bash benchmarks/gpu_check.sh --out DIR --dry-run  # the same steps at toy size on the CPU (venv python)
#
# The machine's own python3 runs everything (never a CPU .venv, except in --dry-run); DALI and
# webdataset come from wheels staged by shared/device/stage_wheels.sh, installed by
# .devwheels/install.sh into .devsite/, which goes on PYTHONPATH as an absolute path.
#
# Steps, in order of value (the ones at the end are cut first when time runs out):
#   quick:   install (if wheels are staged), preflight (CUDA, driver >= 580, torch/DALI/webdataset
#            imports, a C compiler), data (ImageNet-like ~110 KB 500x375 JPEGs, sharded), suite
#            (224 px: model only; DALI `mixed` decode and full pipeline alone; end to end with DALI and
#            with the baseline; input efficiency and verdict; MFU)
#   default: + tiny ImageNet-scale shards and the start-up benchmark; torchvision parity; the
#            `gpu`-marked tests; the trainer with 3 and 4 input channels; DALI hw_decoder_load x
#            threads with training steps; the trainer's compile modes (default, reduce-overhead,
#            max-autotune).
# Each step runs under its own `timeout` (its budget, cut to the time left); each row is printed
# and appended to DIR/results.jsonl as the step ends (name, status ok|failed|timeout|skipped,
# seconds, figures) and DIR/table.md is rewritten after every step and on exit. Logs: DIR/NAME.log.
# Exit status: 1 if a step failed or timed out, else 0 (skipped steps say why in their row).
set -uo pipefail
usage="usage: $0 --out DIR [--quick] [--dry-run] [--only STEP,STEP]"
out="" dry=0 quick=0 only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="${2:-}"; shift 2 ;;
    --quick) quick=1; shift ;;
    --dry-run) dry=1; shift ;;
    --only) only="${2:-}"; shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
[ -n "$out" ] || { echo "$usage" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 2
: >"$out/results.jsonl"
export PYTHONUNBUFFERED=1
cores=$(nproc)
total_s=${GPU_CHECK_BUDGET_S:-$([ "$quick" = 1 ] && echo 240 || echo 540)}
scale=$([ "$dry" = 1 ] && echo 2 || echo 1)  # a dry run's toy steps still pay full imports on 2 shared cores
deadline=$((SECONDS + scale * total_s))
work=$(mktemp -d)

if [ "$dry" = 1 ]; then
  PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
else
  PY=${PYTHON:-python3}  # the machine's python: its torch is the CUDA build
fi
# .devsite (staged wheels) and the checkout, absolute, so every subprocess sees them.
export PYTHONPATH="$root/.devsite:$root${PYTHONPATH:+:$PYTHONPATH}"

# Sizes. GPU: a few thousand ImageNet-like JPEGs (what the time allows), ImageNet-scale tiny shards.
if [ "$dry" = 1 ]; then
  dev=cpu; classes=4; per_class=40; val_per_class=5; img_args="--min-side 64 --max-side 128"
  # fp32 on the CPU: its bf16 matmuls run at ~1 GFLOP/s here, and the suite's peak-FLOP probe alone would take minutes
  per_shard=40; size=32; batch=8; model=resnet18; amp=off
  bench="--steps 1 --warmup 1 --repeats 1 --shuffle-buffer 16 --amp off --peak-tflops 0.1"
  threads=2; tiny="--samples 2000 --shards 8"; startup_args="--image-size 16 --batch-size 64"
  sweep="0.3:1"  # one point: the dry run checks the step, not the sweep
else
  dev=gpu; classes=40; per_class=100; val_per_class=10; img_args="--realistic"
  per_shard=250; size=224; batch=256; model=resnet50; amp=bf16; bench="--steps 10 --warmup 3 --repeats 3"
  # a quarter of ImageNet's 1,281,167 samples and 1,024 shards: two full epochs fit the step's budget
  threads=$cores; tiny="--samples 320292 --shards 256"; startup_args="--image-size 224 --batch-size 256"
  sweep="0.3:$cores 0.9:$cores 0.65:$((cores / 2))"  # hw_decoder_load:threads; the suite has 0.65:$cores
fi
shards="$work/shards"
trainer=(-m train --config configs/rn50_imagenet.yaml data.path="$shards" train.epochs=1 train.eval_every=1
  train.log_every=5 optim.warmup_epochs=0 checkpoint.keep_last=1 data.batch_size=$batch data.image_size=$size
  data.val_image_size=$size data.num_threads=$threads model.name=$model model.num_classes=$classes train.amp=$amp)

# Per-step budgets (s): their sum, with install, is the 540 s of the default run (240 with --quick).
# torch.compile of ResNet-50 may need more than its 35 s: then its row says timeout (rerun it with --only).
declare -A budget=([install]=45 [preflight]=15 [data]=35 [suite]=90 [tiny]=15 [startup]=45 [torchvision]=15
  [tests_gpu]=40 [train_compile_none]=30 [train_channels4]=30 [compile_default]=35
  [compile_reduce-overhead]=35 [compile_max-autotune]=35)
for hs in $sweep; do budget["sweep_hw${hs%%:*}_t${hs##*:}"]=25; done

FIGURES=$(cat <<'EOF'
"""Record one step: figures from its JSON/log, a row in results.jsonl, table.md rewritten, the row printed."""
import json, os, re, sys, time
from pathlib import Path
out, name, status, seconds, note = Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]

def load(stem):
    try:
        return json.loads((out / f"{stem}.json").read_text())
    except (OSError, ValueError):
        return None

def figures():
    j, log = load(name), out / f"{name}.log"
    tail = log.read_text(errors="replace").strip().splitlines()[-30:] if log.exists() else []
    f = {}
    if name == "preflight" and j:
        f = {k: j[k] for k in ("gpu", "driver", "torch", "dali", "webdataset", "cc", "missing") if k in j}
    elif name == "data" and j:
        f = {s: v["num_samples"] for s, v in j["splits"].items()} | {"shards": len(j["splits"]["train"]["filenames"])}
    elif name == "suite" and j:
        f = {"model_only_img_s": j["model_only"]["per_s"],
             **{f"{n}_{s}_img_s": v["img_per_s"] for n, st in j["pipeline_only"].items() for s, v in st.items()},
             **{f"end_to_end_{n}_img_s": v["per_s"] for n, v in j["end_to_end"].items()},
             "efficiency": j["verdict"]["efficiency"], "verdict": j["verdict"]["bound"], "mfu": j["mfu"]["model_only"]}
    elif name.startswith("sweep_") and j:
        f = {"end_to_end_img_s": j["end_to_end"]["dali"]["per_s"], "pipeline_img_s": j["pipeline_only"]["dali"]["train"]["img_per_s"],
             "efficiency": j["verdict"]["efficiency"]}
    elif name.startswith(("train_", "compile_")) and j:
        f = {"mean_img_s": j.get("mean_img_per_s"), "data_wait_fraction": j.get("data_wait_fraction"),
             "train_s": j.get("train_s"), "wall_s": j.get("wall_s")}
        base = load("train_compile_none")
        if base and name != "train_compile_none" and base.get("mean_img_per_s") and j.get("mean_img_per_s"):
            f["vs_train_compile_none"] = j["mean_img_per_s"] / base["mean_img_per_s"]
    elif name == "startup" and j:
        f = {k: j[k] for k in ("first_batch_s", "turnover_s", "img_per_s", "rss_mb", "samples", "shards", "phases_s") if k in j}
    elif name == "tiny" and j:
        f = {"train": j["splits"]["train"]["num_samples"], "shards": len(j["splits"]["train"]["filenames"])}
    elif name == "torchvision" and tail:
        f = {"result": tail[-1]}
    elif name == "tests_gpu":
        f = {"result": next((ln.strip("= ") for ln in reversed(tail) if re.search(r"\d+ (passed|failed|skipped|error)", ln)), "")}
    if note:
        f["note"] = note
    if status in ("failed", "timeout") and tail:
        f["log_tail"] = tail[-1][:300]
    return {k: rounded(v) for k, v in f.items() if v is not None}

def rounded(v):
    if isinstance(v, float):
        return float(f"{v:.4g}")
    if isinstance(v, list):
        return [rounded(x) for x in v]
    return {k: rounded(x) for k, x in v.items()} if isinstance(v, dict) else v

def fmt(f):
    return "; ".join(f"{k} " + (f"{v:,.3g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                     for k, v in f.items())

if name != "-":
    row = {"name": name, "status": status, "seconds": round(seconds, 1), "figures": figures(), "time": time.strftime("%H:%M:%S")}
    with open(out / "results.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(f"   {status} ({seconds:.0f} s) {fmt(row['figures'])}", flush=True)
rows = [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines() if ln.strip()]
lines = [f"# GPU check ({os.environ.get('CHECK_MODE', '')}), {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", "",
         f"budget: {os.environ.get('CHECK_BUDGET', '')}", "",
         "| step | status | s | figures |", "|---|---|---:|---|"]
lines += [f"| {r['name']} | {r['status']} | {r['seconds']:.0f} | {fmt(r['figures']).replace('|', '/')} |" for r in rows]
tmp = out / f"table.md.tmp{os.getpid()}"
tmp.write_text("\n".join(lines) + "\n")
os.replace(tmp, out / "table.md")
EOF
)
export CHECK_MODE="$([ "$dry" = 1 ] && echo "dry run, CPU" || echo "$dev")$([ "$quick" = 1 ] && echo ", quick"), $cores cores, python $PY"

record() {  # record NAME STATUS SECONDS [NOTE]: one row + table.md (rows also for skipped steps)
  "$PY" -c "$FIGURES" "$out" "$1" "$2" "$3" "${4:-}" || echo "   $2 ($3 s) [could not record: no working $PY]"
}
current="" failed=0
finish() {  # on exit, normal or not: a row for a step that was cut off, the table, clean up
  if [ -n "$current" ]; then record "$current" timeout 0 "the whole check was stopped during this step"; failed=1; fi
  "$PY" -c "$FIGURES" "$out" - - 0 "" 2>/dev/null
  rm -rf "$work"
}
trap finish EXIT
trap 'exit 143' TERM INT

wanted() {  # wanted NAME: is the step in this run (--quick, --only)?
  local n=$1
  if [ -n "$only" ]; then [[ ",$only," == *",$n,"* ]] && return 0
    case "$n" in install|preflight) return 0 ;; data) [[ "$only" =~ suite|sweep|train|compile ]] && return 0 ;;
      tiny) [[ ",$only," == *",startup,"* ]] && return 0 ;; esac; return 1; fi
  [ "$quick" = 1 ] || return 0
  case "$n" in install|preflight|data|suite) return 0 ;; *) return 1 ;; esac
}

step() {  # step NAME NEEDS CMD...: NEEDS = comma list of what must hold (cuda,dali,cc,data,tiny) or -
  local name=$1 needs=$2; shift 2
  wanted "$name" || return 0
  local why=""
  for n in ${needs//,/ }; do
    case "$n" in
      cuda) [ "$dry" = 1 ] || [ "$have_cuda" = 1 ] || why="no CUDA device (preflight)" ;;
      dali) [ "$have_dali" = 1 ] || why="nvidia.dali or webdataset does not import (preflight)" ;;
      torch) [ "$have_torch" = 1 ] || why="torch does not import (preflight)" ;;
      cc) [ "$have_cc" = 1 ] || why="no C compiler for torch.compile (preflight)" ;;
      data) [ -f "$shards/_info.json" ] || why="no shards (the data step did not finish)" ;;
      tiny) [ -f "$work/tiny/_info.json" ] || why="no tiny shards (the tiny step did not finish)" ;;
      dryskip) [ "$dry" = 1 ] && why="dry run: torch.compile of a ResNet takes minutes on a CPU" ;;
    esac
  done
  local left=$((deadline - SECONDS)) t=$((scale * ${budget[$name]:-30}))
  [ -z "$why" ] && [ "$left" -lt 5 ] && why="no time left of the $((scale * total_s)) s budget"
  if [ -n "$why" ]; then echo "== $name: skipped ($why)"; record "$name" skipped 0 "$why"; return 0; fi
  [ "$t" -gt "$left" ] && t=$left
  echo "== $name (timeout ${t} s): $*"
  current=$name
  local t0 rc status ms
  t0=$(date +%s%N)
  # A fresh bash gets this script's helpers and settings, so `timeout` can run them too.
  timeout --kill-after=5 "$t" bash -c "$(declare -p PY out work shards classes per_class val_per_class img_args \
    per_shard tiny cores dry trainer); $(declare -f make_data make_tiny run_trainer preflight)"'; "$@"' _ "$@" \
    >"$out/$name.log" 2>&1
  rc=$?
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  current=""
  case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
  local note=""
  if [ "$name" = torchvision ] && [ $rc = 3 ]; then status=skipped; note="NOT CHECKED"; fi
  [ "$status" = failed ] || [ "$status" = timeout ] && failed=1
  record "$name" "$status" "$((ms / 1000)).$(printf %03d $((ms % 1000)))" "$note"
  [ "$status" = failed ] && tail -n 5 "$out/$name.log" | sed 's/^/   | /'
  return 0
}

run_trainer() {  # run_trainer NAME OVERRIDES...: a short trainer run; its summary -> DIR/NAME.json
  local name=$1; shift
  "$PY" "${trainer[@]}" run_dir="$work/run_$name" "$@" && cp "$work/run_$name/summary.json" "$out/$name.json"
}

preflight() {  # CUDA, driver, imports, C compiler -> DIR/preflight.json; exit 1 naming what is missing
  "$PY" - "$out/preflight.json" "$dry" <<'EOF'
import importlib, json, shutil, subprocess, sys
path, dry = sys.argv[1], sys.argv[2] == "1"
r, missing = {}, []
for mod in ("torch", "nvidia.dali", "webdataset"):
    try:
        r[mod.split(".")[-1]] = getattr(importlib.import_module(mod), "__version__", "?")
    except Exception as e:  # ImportError, or a wheel built for another CUDA/torch
        r[mod.split(".")[-1]] = None
        missing.append(f"{mod} ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})")
import torch
r["cuda_runtime"] = torch.version.cuda
r["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=10)
    r["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
except (OSError, subprocess.SubprocessError):
    r["driver"] = None
r["cc"] = next((shutil.which(c) for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
if not dry:
    if not r["gpu"]:
        missing.append("a CUDA device (torch.cuda.is_available() is False)")
    if not r["driver"]:
        missing.append("nvidia-smi / the driver version")
    elif int(r["driver"].split(".")[0]) < 580:
        missing.append(f"driver >= 580 for DALI's CUDA 13 build (have {r['driver']})")
if not r["cc"]:
    missing.append("a C compiler (cc/gcc/clang) for torch.compile")
r["missing"] = missing
json.dump(r, open(path, "w"), indent=1)
print(json.dumps(r, indent=1))
sys.exit(1 if missing else 0)
EOF
}

make_data() {
  "$PY" -m tools.make_synthetic_imagenet --out "$work/raw" --classes $classes --train-per-class $per_class \
    --val-per-class $val_per_class $img_args --workers "$cores" &&
  "$PY" -m tools.shard_imagenet --src "$work/raw" --out "$shards" --samples-per-shard $per_shard \
    --check header --workers "$cores" && cp "$shards/_info.json" "$out/data.json" && rm -rf "$work/raw"
}

make_tiny() {
  # shellcheck disable=SC2086
  "$PY" -m tools.make_tiny_shards --out "$work/tiny" $tiny --workers "$cores" && cp "$work/tiny/_info.json" "$out/tiny.json"
}

# The budget, printed first: what each step may take, and the total it must fit.
plan=""
for n in install preflight data suite tiny startup torchvision tests_gpu train_compile_none train_channels4 \
    $(for hs in $sweep; do echo "sweep_hw${hs%%:*}_t${hs##*:}"; done) compile_default compile_reduce-overhead compile_max-autotune; do
  wanted "$n" || continue
  [ "$n" = install ] && [ ! -f .devwheels/install.sh ] && continue
  plan+="$n ${budget[$n]:-30}, "
done
export CHECK_BUDGET="${total_s} s in all; per step: ${plan%, }$([ "$scale" = 1 ] || echo "; timeouts x$scale in a dry run")"
echo "GPU check: $CHECK_MODE; out $out"
echo "budget: $CHECK_BUDGET"
have_cuda=0 have_dali=0 have_torch=0 have_cc=0

if [ -f .devwheels/install.sh ]; then step install - bash .devwheels/install.sh; fi
step preflight - preflight
if [ -f "$out/preflight.json" ]; then
  eval "$("$PY" -c 'import json, sys; r = json.load(open(sys.argv[1])); print("have_cuda=%d have_dali=%d have_torch=%d \
have_cc=%d" % (bool(r["gpu"]), bool(r["dali"] and r["webdataset"]), bool(r["torch"]), bool(r["cc"])))' "$out/preflight.json")"
fi
step data torch make_data
step suite cuda,dali,data "$PY" -m benchmarks --data "$shards" --device $dev --model $model --batch-size $batch \
  --image-size $size --threads "$threads" $bench --json "$out/suite.json" --plot "$out/suite.png"
step tiny torch make_tiny
step startup cuda,dali,tiny "$PY" -m benchmarks.startup --data "$work/tiny" --device $dev $startup_args --epochs 2 \
  --threads "$threads" --json "$out/startup.json"
step torchvision torch "$PY" -m benchmarks.torchvision_check --device $dev
step tests_gpu torch "$PY" -m pytest -q -m gpu -p no:cacheprovider tests
step train_compile_none cuda,dali,data run_trainer train_compile_none train.compile=none
step train_channels4 cuda,dali,data run_trainer train_channels4 train.compile=none data.pad_channels=true \
  model.in_channels=4
for hs in $sweep; do
  step "sweep_hw${hs%%:*}_t${hs##*:}" cuda,dali,data "$PY" -m benchmarks --data "$shards" --device $dev --model $model \
    --loaders dali --stages train --hw-decoder-load "${hs%%:*}" --threads "${hs##*:}" --batch-size $batch \
    --image-size $size $bench --json "$out/sweep_hw${hs%%:*}_t${hs##*:}.json"
done
for mode in default reduce-overhead max-autotune; do
  step "compile_$mode" cuda,dali,data,cc,dryskip run_trainer "compile_$mode" train.compile=$mode
done

echo
cat "$out/table.md" 2>/dev/null
if [ "$failed" = 1 ]; then echo "some steps failed or timed out: see $out/results.jsonl and $out/NAME.log"; exit 1; fi
echo "all steps passed ($(grep -c '"skipped"' "$out/results.jsonl") skipped)"
