#!/usr/bin/env bash
# One H200: the long-tailed DeepScaleR-shaped GRPO step, synchronous vs one-step-off asynchronous, with real vLLM.
# Needs the vLLM wheel parts in /root/gw (sent by earlier calls, see README "GPU") and pydantic's wheels in .whl.
#   bash scripts/gpu/grpo_longtail.sh install        # unpack and install the wheels and the project (once per machine)
#   NEW_TOKENS=2048 bash scripts/gpu/grpo_longtail.sh sync|async STEPS [extra overrides...]
#   bash scripts/gpu/grpo_longtail.sh round STEPS [extra overrides...]   # 16 x 8 x 512, synchronous
#   MPS=1 ... async ...                               # the same under an MPS daemon of its own. Untested: the one
#                                                     # call that tried it (after install and `sync` in the same
#                                                     # command) lost the machine, cause unknown; try it alone
#   NEW_TOKENS=2048 ... async STEPS generator.in_process=true trainer.cuda_stream=own
#                                                     # one process: the engine's kernels (producer thread, default
#                                                     # stream) beside the trainer's (its own stream), no time-slicing
#   bash scripts/gpu/grpo_longtail.sh tests -         # the trainer's and the vLLM generator's GPU tests
#   bash scripts/gpu/grpo_longtail.sh trl ROUNDS      # TRL's GRPOTrainer + vLLM colocate, the same round (.whl/trl)
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
# The folder's name must contain "site-packages": dill (through `datasets`' fingerprints) pickles every module
# outside such a path by value and fails on pyarrow ("Can't pickle <class 'MonthDayNano'>").
SITE=/tmp/rlx/site-packages
if [ "$1" = install ]; then
  mkdir -p /root/w && cat /root/gw/part* | tar xf - -C /root/w || exit 1
  extra=()  # pydantic's wheels, unless the vLLM set has them already
  for w in .whl/*.whl; do n=$(basename "$w" | cut -d- -f1); ls /root/w/"$n"-* >/dev/null 2>&1 || extra+=("$w"); done
  python3 -m pip install -q --no-index --no-deps --no-compile --target $SITE /root/w/*.whl "${extra[@]}" || exit 1
  if ls .whl/trl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target $SITE .whl/trl/*.whl || exit 1
  fi
  PYTHONPATH=$SITE python3 -m pip install -q --no-index --no-deps --no-build-isolation -e core -e plugins/backend_vllm \
    || exit 1
  exit 0
fi
mode=$1 steps=$2
shift 2
export PYTHONPATH=$SITE VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
if [ "${MPS:-0}" = 1 ]; then  # an MPS daemon of this run only (private folders): the two processes' kernels may overlap
  CUDA_MPS_PIPE_DIRECTORY=$(mktemp -d /tmp/rlx-mps-pipe.XXXX) CUDA_MPS_LOG_DIRECTORY=$(mktemp -d /tmp/rlx-mps-log.XXXX)
  export CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  nvidia-cuda-mps-control -d || { echo "MPS daemon did not start" >&2; exit 1; }
  trap 'echo quit | nvidia-cuda-mps-control; cat "$CUDA_MPS_LOG_DIRECTORY"/control.log > "$OUT/mps.log" 2>/dev/null' EXIT
fi
if [ "$mode" = tests ]; then  # the GPU tests of the trainer and the vLLM generator (pytest is in the image)
  python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_fsdp_trainer_gpu.py plugins/backend_vllm/tests/test_vllm_gpu.py \
    "$@" 2>&1 | tee "$OUT/gpu_tests.log"
  exit 0
fi
if [ "$mode" = trl ]; then  # TRL 1.16 on the same round (benchmarks/trl_grpo_step.py)
  python3 benchmarks/trl_grpo_step.py --rounds "$steps" --out "$OUT/trl.json" "$@" 2>&1 \
    | grep --line-buffered -v -E "^\(|INFO|it/s\]" | tee "$OUT/trl.log"
  exit 0
fi
if [ "$mode" = round ]; then  # the uniform 16 x 8 x 512 synchronous round of issue 19 (generator sleeps while training)
  python3 benchmarks/grpo_step.py --generator vllm --steps "$steps" --micro-batch 16 --out "$OUT/round.json" \
    model.dtype=bfloat16 trainer.dtype=bfloat16 trainer.max_tokens_per_micro_batch=16384 \
    generator.gpu_memory_utilization=0.3 "$@" 2>&1 | grep --line-buffered -v -E "^\(|INFO|it/s\]" | tee "$OUT/round.log"
  exit 0
fi
opts=(--generator vllm --prompts 32 --samples 8 --new-tokens ${NEW_TOKENS:-8192} --lengths longtail --steps "$steps" --micro-batch 64)
ov=(model.dtype=bfloat16 trainer.dtype=bfloat16 trainer.max_tokens_per_micro_batch=16384
    trainer.activation_checkpointing=true generator.gpu_memory_utilization=0.35)
if [ "$mode" = sync ]; then  # colocated: the generator sleeps while the trainer trains (its engine in this process)
  python3 benchmarks/grpo_step.py "${opts[@]}" --max-staleness 0 --out "$OUT/longtail_sync.json" "${ov[@]}" "$@" 2>&1 \
    | grep --line-buffered -v -E "^\(|INFO|it/s\]" | tee "$OUT/longtail_sync.log"
else  # both resident, vLLM's engine core in its own process so generation overlaps training
  python3 benchmarks/grpo_step.py "${opts[@]}" --max-staleness 1 --out "$OUT/longtail_async.json" "${ov[@]}" \
    generator.in_process=false "$@" 2>&1 | grep --line-buffered -v -E "^\(|INFO|it/s\]" | tee "$OUT/longtail_async.log"
fi
