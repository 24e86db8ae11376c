#!/usr/bin/env bash
# On the GPU machine, after scripts/gpu/bench-tuning.sh built build-gpu:
# where one tuning iteration's device time goes, by kernel. Nsight Compute
# (ncu, --clock-control none as the device notes ask) times every kernel of
# two otherwise identical runs on a 1-block model, `iters` = RH_PROFILE_LO
# and RH_PROFILE_HI; everything but the tuning iterations (loading, block
# forwards, export) is the same in both, so the difference divided by
# HI - LO is one iteration. The eager (no CUDA graph) path runs the same
# kernels as the graph replay, so the sum is the iteration's kernel time and
# the graph run's wall time per iteration (phase_seconds.tune in
# bench-tuning.sh) minus it is what the GPU spends idle.
# Results: $OUT/profile.txt.
#   RH_PROFILE_CONFIGS "a b" (default both; shapes as in bench-tuning.sh)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/rh-out}; mkdir -p "$OUT"
source scripts/gpu/env.sh
W=build-gpu/worker/roundhouse-worker
P=$OUT/profile.txt
LO=${RH_PROFILE_LO:-2} HI=${RH_PROFILE_HI:-6}
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "ncu not found" | tee -a "$P"; exit 1; }
LOGS=/tmp/rh-prof; mkdir -p $LOGS
for c in ${RH_PROFILE_CONFIGS:-a b}; do
  case $c in
    a) seq=512; bs=1; sym=false ;;
    b) seq=2048; bs=8; sym=true ;;
  esac
  m=/tmp/prof-model-$c
  [ -d $m ] || $W generate --family colqwen3 --preset colqwen3-4b --layers 1 \
    --dtype bfloat16 --seed 1 --calib-samples 16 --calib-seqlen $seq --out $m \
    >$LOGS/gen-$c.log 2>&1 || { tail -3 $LOGS/gen-$c.log | tee -a "$P"; continue; }
  for it in $LO $HI; do
    cat >$LOGS/spec-$c-$it.json <<JSON
{"scheme": {"bits": 4, "group_size": 128, "sym": $sym, "iters": $it, "nsamples": 16,
 "seqlen": $seq, "batch_size": $bs, "seed": 42},
 "calibration": {"path": "calib.jsonl", "field": "input_ids"},
 "evaluation": {"enabled": false}, "export_formats": ["auto_round"]}
JSON
    rm -rf $LOGS/out-$c-$it
    t0=$(date +%s)
    RH_DISABLE_CUDA_GRAPHS=1 timeout ${RH_PROFILE_TIMEOUT:-150} "$NCU" --clock-control none \
      --metrics gpu__time_duration.sum --csv --log-file $LOGS/ncu-$c-$it.csv \
      $W quantize --model $m --spec $LOGS/spec-$c-$it.json --out $LOGS/out-$c-$it \
      --device cuda >$LOGS/events-$c-$it.jsonl 2>$LOGS/quantize-$c-$it.log
    echo "ncu $c iters=$it rc=$? in $(( $(date +%s) - t0 )) s" | tee -a "$P"
  done
  python3 - $LOGS/ncu-$c-$LO.csv $LOGS/ncu-$c-$HI.csv $(( HI - LO )) "$c" <<'PY' | tee -a "$P"
import csv, sys, collections
lo_path, hi_path, n, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
SCALE = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3,
         "msecond": 1e3, "s": 1e6, "second": 1e6}
def load(path):
    tot, cnt = collections.Counter(), collections.Counter()
    with open(path, newline="") as f:
        rows = [l for l in f if l.startswith('"')]
    for r in csv.DictReader(rows):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = r["Kernel Name"][:110]
        v = float(r["Metric Value"].replace(",", ""))
        tot[name] += v * SCALE.get(r["Metric Unit"], 1.0)
        cnt[name] += 1
    return tot, cnt
(lt, lc), (ht, hc) = load(lo_path), load(hi_path)
per = {k: (ht[k] - lt.get(k, 0)) / n for k in ht}
calls = {k: (hc[k] - lc.get(k, 0)) / n for k in hc}
total = sum(v for v in per.values())
print(f"== {tag}: kernel time per tuning iteration {total/1000:.3f} ms "
      f"({sum(calls.values()):.0f} kernels), eager path, ncu")
for k, v in sorted(per.items(), key=lambda kv: -kv[1])[:28]:
    if abs(v) < 0.5: break
    print(f"{v:9.1f} us {calls[k]:5.1f}x  {k}")
PY
done
tar czf $OUT/profile-logs.tgz --exclude="out-*" -C /tmp rh-prof 2>/dev/null
