#!/usr/bin/env bash
# One batched call on a lent GPU machine (the `device` tool): install the carried wheels (.whl/),
# then run the named steps, each under its own time limit, writing everything under $OUT.
#   bash benchmarks/device_batch.sh STEP...     steps: env search_gain search_gain23 run_bench variants profile smoke sb3
#       probe_cc overhead soak gpu_tests gpu_tests_runner spread throughput scaling kb2_strict kb2_lenient kb2_lenient_search
#       kb1_lenient kb1_lenient_search suite1 suite2 conv_layout kb_tma
# (profile reads PROFILE_TASKS, PROFILE_CONFIGS, PROFILE_TAG and PROFILE_EXTRA (e.g. --no-compile);
# sb3 reads SB3_LIMIT; gpu_tests reads GPU_TESTS, the test paths, default tests; throughput reads
# THROUGHPUT_EXTRA, e.g. "--profile-workers /tmp/prof"; spread reads SPREAD_EXTRA, e.g. "--max-reps 100";
# the kb* steps (benchmarks/kernelbench.py, one per 10-minute call) read KB, the KernelBench folder
# (default kb_local), KB_LIMIT (seconds, default 560), KB_EXTRA (e.g. "--limit 50"), KB_RESUME (a
# carried folder with STEP/kernelbench.progress.jsonl of a call cut short: that call's verdicts are
# kept and only the rest judged), and for the search KB_EVALS, KB_SEARCH_S, KB_JOBS and KB_LOSERS (a carried
# compiler run's progress file, e.g. kb_local/runs/kb2_lenient/kernelbench.progress.jsonl: only the problems
# it did not make faster than eager and torch.compile are searched; KB_LOSERS_VS=eager: than eager); suite1 / suite2 run
# `kernelgym run --suite KB/levelN` with its defaults, KB_RESUME continuing from STEP/run.json and verdicts.jsonl)
# The machine's python3 has torch, triton and transformers; gymnasium, z3-solver, cloudpickle and
# stable-baselines3 travel as wheels (see README "Running on a GPU").
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: run, keep the log, never stop the batch
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s) $(date +%T)"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "=== $name rc=$rc in $((SECONDS - t0))s"
  tail -n 25 "$OUT/$name.log"
}

resume() {  # resume NAME: with KB_RESUME (a folder carried over, holding NAME/kernelbench.progress.jsonl
  # from a call cut short), seed $OUT/NAME with it and print --resume, so the run judges only the rest
  local f="${KB_RESUME:-}/$1/kernelbench.progress.jsonl"
  if [ -n "${KB_RESUME:-}" ] && [ -f "$f" ]; then mkdir -p "$OUT/$1" && cp "$f" "$OUT/$1/" && echo --resume; fi
}

losers() {  # with KB_LOSERS (a carried compiler run's kernelbench.progress.jsonl), search only its losers
  # (KB_LOSERS_VS=eager: those not faster than eager; default: than eager and torch.compile)
  if [ -n "${KB_LOSERS:-}" ]; then echo --search-losers "$KB_LOSERS" --search-losers-vs "${KB_LOSERS_VS:-both}"; fi
}

for s in "$@"; do
  case $s in
    env) step env 60 bash -c 'nvidia-smi; python3 -c "import sys, torch, triton; print(sys.version); print(torch.__version__, triton.__version__, torch.cuda.get_device_name(0))"; nproc' ;;
    search_gain) step search_gain 260 python3 -m benchmarks.search_gain --sizes bench -d 1-3 -n 8 --budget-evals 8 --out "$OUT/search_gain.json" ;;
    search_gain23) step search_gain 200 python3 -m benchmarks.search_gain --sizes bench -d 2-3 -n 8 --budget-evals 8 --out "$OUT/search_gain.json" ;;
    run_bench) step run_bench 300 python3 -m kernelgym run --sizes bench --no-progress --out "$OUT/run_bench" ;;
    variants) step variants 180 python3 -m benchmarks.compiler_variants --tasks "${VARIANT_TASKS:-d3_bench_s4,d3_bench_s1,d2_bench_s3,d1_bench_s5,d1_bench_s7,d2_bench_s4,d2_bench_s5}" --out "$OUT/variants.json" ;;
    smoke) step smoke 110 python3 -m train.smoke_gpu --out "$OUT/smoke.jsonl" --steps 6 --tasks 2 --group 4 --backend cuda --workers 4 ;;
    sb3) step sb3 "${SB3_LIMIT:-420}" python3 -m train.sb3_tuning --backend cuda --steps 6000 --tasks 6 --k 6 --difficulty 2 --out "$OUT/sb3.json" ;;
    gpu_tests) step gpu_tests "${GPU_TESTS_LIMIT:-400}" python3 -m pytest -v -m gpu -p no:cacheprovider --durations=0 -o faulthandler_timeout=150 ${GPU_TESTS:-tests} ;;
    gpu_tests_runner) step gpu_tests_runner 120 python3 -m pytest -v -m gpu -p no:cacheprovider --durations=0 -o faulthandler_timeout=100 tests/test_runner.py ;;
    profile) step "profile${PROFILE_TAG:-}" 240 python3 -m benchmarks.kernel_profile --tasks "${PROFILE_TASKS:-d3_bench_s4,d2_bench_s3}" \
      --configs "${PROFILE_CONFIGS:-[{\}]}" --out "$OUT/profile${PROFILE_TAG:-}.json" ${PROFILE_EXTRA:-} ;;
    probe_cc) step probe_cc 30 bash -c 'cc=$(command -v gcc || command -v clang); echo "cc=$cc"; ls -la "$cc"; file -L "$cc" 2>/dev/null;
      head -c 600 "$cc" | tr -c "[:print:]\n" "?"; echo; "$cc" -print-search-dirs | head -3; python3 -c "from kernelgym.evaluation import sandbox; print(sandbox._tools())"' ;;
    overhead) step overhead "${OVERHEAD_LIMIT:-120}" python3 -m benchmarks.sandbox_overhead --backend cuda --rounds "${OVERHEAD_ROUNDS:-4}" --json "$OUT/overhead.json" ;;
    soak) step soak "${SOAK_LIMIT:-150}" python3 -m benchmarks.soak --backend cuda --n "${SOAK_N:-200}" --workers 4 --timeout 10 \
      --os-sandbox require --json "$OUT/soak.json" ;;
    spread) step spread 200 python3 -m benchmarks.timing_spread --numel 16777216,1048576 --out "$OUT/spread.json" ${SPREAD_EXTRA:-} ;;
    throughput) step throughput 240 python3 -m benchmarks.eval_throughput --backend cuda --n 64 --out "$OUT/eval_throughput.json" ${THROUGHPUT_EXTRA:-} ;;
    scaling)  # issue 7 on nvidia-h200-x2: the same batch on one GPU, then on two
      step scaling_1gpu 200 python3 -m benchmarks.eval_throughput --backend cuda --n 64 --serial-n 8 --devices 0 --out "$OUT/scaling_1gpu.json"
      step scaling_2gpu 200 python3 -m benchmarks.eval_throughput --backend cuda --n 64 --serial-n 8 --devices 0,1 --out "$OUT/scaling_2gpu.json" ;;
    kb2_strict|kb2_lenient|kb1_lenient)  # the compiler alone: kbN_MODE is level N in MODE
      lv=${s:2:1}; mode=${s#kb?_}
      step "$s" "${KB_LIMIT:-560}" python3 -m benchmarks.kernelbench "${KB:-kb_local}" --levels "$lv" \
        --policy compiler --mode "$mode" --backend cuda --out "$OUT/$s" $(resume "$s") ${KB_EXTRA:-} ;;
    kb2_lenient_search|kb1_lenient_search)  # the search around the compiler on level N, lenient
      lv=${s:2:1}
      step "$s" "${KB_LIMIT:-560}" python3 -m benchmarks.kernelbench "${KB:-kb_local}" \
        --levels "$lv" --policy search --mode lenient --backend cuda --budget-evals "${KB_EVALS:-6}" \
        --budget-s "${KB_SEARCH_S:-20}" --jobs "${KB_JOBS:-8}" --out "$OUT/$s" $(resume "$s") $(losers) ${KB_EXTRA:-} ;;
    kb_tma)  # products (compiler, strict) with pointer loads, with TMA descriptors (config tma), and with
      # TMA and warp-specialised k loops, in one call: KB_TMA_LEVELS (default 1) and KB_TMA_FILTER
      # (default level 1's plain and transposed matmuls; e.g. KB_TMA_LEVELS=2 KB_TMA_FILTER=_Gemm_)
      for t in off on ws; do
        case $t in off) cfg=() ;; on) cfg=(--config '{"tma":true}') ;; ws) cfg=(--config '{"tma":true,"warp_specialize":true}') ;; esac
        step "kb_tma_$t" "${KB_LIMIT:-180}" python3 -m benchmarks.kernelbench "${KB:-kb_local}" --levels "${KB_TMA_LEVELS:-1}" \
          --filter "${KB_TMA_FILTER:-^(1|2|3|6|7|9|13|16|17|18)_}" --policy compiler --mode strict --backend cuda \
          --profile-losers 0 "${cfg[@]}" --out "$OUT/kb_tma_$t"
      done ;;
    conv_layout)  # cuDNN's level-2 convolutions in NCHW against channels-last (benchmarks/conv_layout.py)
      step conv_layout "${CONV_LAYOUT_LIMIT:-150}" python3 -m benchmarks.conv_layout "${KB:-kb_local}/level2" --json "$OUT/conv_layout.json" ;;
    suite1|suite2)  # issue 18's target: `kernelgym run --suite <KernelBench level N>` with its defaults
      # (KB_RESUME: a carried folder holding STEP/ from a call cut short, run.json and verdicts.jsonl)
      lv=${s#suite}; args=(--out "$OUT/$s")
      if [ -n "${KB_RESUME:-}" ] && [ -f "$KB_RESUME/$s/run.json" ]; then
        mkdir -p "$OUT/$s" && cp "$KB_RESUME/$s/run.json" "$KB_RESUME/$s/verdicts.jsonl" "$OUT/$s/" && args=(--resume "$OUT/$s")
      fi
      step "$s" "${KB_LIMIT:-560}" python3 -m kernelgym run --suite "${KB:-kb_local}/level$lv" --backend cuda --no-progress \
        "${args[@]}" ${KB_EXTRA:-} ;;
    *) echo "unknown step $s" ;;
  esac
done
