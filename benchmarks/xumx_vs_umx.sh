#!/usr/bin/env bash
# X-UMX against Open-Unmix of the same size and compute, trained on a `umx synth` dataset and
# scored on its held-out test split (the figures of docs/xumx.md).
#
#   benchmarks/xumx_vs_umx.sh DATASET OUTPUT [EPOCHS]
#
# Both get the same hidden size, STFT, excerpts, batches, epochs, learning rate and seed: UMX as
# four target models (four runs), X-UMX as one model of the four sources (one run), which has
# the parameters of the four. Each is evaluated with `umx evaluate` (Wiener filter, 1 iteration).
set -euo pipefail
root=${1:?the dataset folder written by umx synth}
out=${2:?an output folder}
epochs=${3:-40}
common=(--root "$root" --is-wav --nfft 1024 --nhop 256 --hidden-size 64 --seq-dur 3
  --samples-per-track 8 --batch-size 16 --epochs "$epochs" --patience 1000 --seed 42 --quiet)

mkdir -p "$out"
for target in vocals drums bass other; do
  /usr/bin/time -f "umx $target: %e s" umx train "${common[@]}" --target "$target" --output "$out/umx"
done
/usr/bin/time -f "xumx: %e s" umx train "${common[@]}" --architecture xumx --output "$out/xumx"
for model in umx xumx; do
  umx evaluate --model "$out/$model" --root "$root" --is-wav --evaldir "$out/eval-$model" --quiet
done
umx evaluate --compare "$out/eval-umx" "$out/eval-xumx" --evaldir "$out/compare" --quiet
