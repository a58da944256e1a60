#!/usr/bin/env bash
# Rebuilds the bundled model `umxsynth` (src/umx/pretrained/umxsynth) from scratch:
# renders the synthetic dataset, trains the four targets, exports the weights, and scores them.
# With CAUSAL=1 it builds the causal `umxsynth-rt` (src/umx/pretrained/umxsynth-rt) instead: the
# same data (shared by both in one WORKDIR) and training with a unidirectional LSTM, scored
# offline like umxsynth and through the stream's causal path (umx.stream.separate_causal).
# Needs: apt-get install fluidsynth fluid-soundfont-gm timgm6mb-soundfont \
#          musescore-general-soundfont-small openttd-openmsx planetblupi-music-midi ffmpeg
# Usage: [CAUSAL=1] scripts/make_umxsynth.sh [WORKDIR]   (default: data/umxsynth-build; resumable)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-data/umxsynth-build}
umx=.venv/bin/umx
mkdir -p "$work"
case ${CAUSAL:-0} in
    0) name=umxsynth; model=$work/model; lstm=; recipe=scripts/make_umxsynth.sh ;;
    1) name=umxsynth-rt; model=$work/model-rt; lstm=--unidirectional
       recipe="CAUSAL=1 scripts/make_umxsynth.sh" ;;
    *) echo "CAUSAL must be 0 or 1, not '$CAUSAL'" >&2; exit 2 ;;
esac

# 1. Data: 100 procedural songs and the General MIDI songs of two Debian packages, two
#    20-second excerpts each; test songs rendered with a soundfont never used in training.
[ -d "$work/synth" ] || $umx synth --root "$work/synth" --procedural 100 --excerpts 2 \
    --duration 20 --test-fraction 0.1 --valid-fraction 0.1 --seed 1 --jobs 2 \
    --midi /usr/share/games/openttd/baseset/openmsx /usr/share/planetblupi/music

# 2. Training: a small model (hidden size 128), 12 epochs per target. A killed run resumes with
#    --checkpoint, so the loop can be run again after an interruption.
for target in vocals drums bass other; do
    if [ -f "$model/$target.chkpnt" ]; then
        $umx train --checkpoint "$model" --target "$target"
    else
        $umx train --root "$work/synth" --is-wav --target "$target" --output "$model" \
            --hidden-size 128 --seq-dur 4 --batch-size 16 --samples-per-track 4 --epochs 12 \
            --lr 0.002 --seed 1 $lstm
    fi
done

# 3. Export: float16 weight matrices, the training data's description in every target json.
.venv/bin/python - "$work" "$model" "$name" "$recipe" <<'PY'
import json, sys
from pathlib import Path
from umx.modeldir import export_model
from umx.zoo import PRETRAINED_DIR

work, model, name, recipe = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
synth = json.loads((work / "synth" / "synth.json").read_text())
data = {
    "generator": "umx synth",
    "settings": synth["settings"],
    "hours": synth["hours"],
    "songs": {split: len(songs) for split, songs in synth["songs"].items()},
    "soundfonts": synth["soundfonts"],
    "recipe": recipe,
}
export_model(model, PRETRAINED_DIR / name, metadata={"training_data": data}, force=True)
PY

# 4. Scores on six held-out test tracks (the first excerpt of six test songs), with the oracle
#    ideal ratio mask and the unprocessed mixture on the same tracks.
tracks="mighty_giant_run-00 relax_song-00 the_fast_route-00 ttsong_iii_imuh3-00 procedural-00010-00 procedural-00030-00"
for method in "$name" irm mix; do
    if [ "$method" = "$name" ]; then what=(--model "$name"); else what=(--method "$method"); fi
    $umx evaluate --root "$work/synth" --is-wav --tracks $tracks "${what[@]}" \
        --evaldir "$work/evals/$method" --jobs 2
done
evals=("$work/evals/$name")

# 5. The causal model also through the stream's path: separate_causal (causal framing and causal
#    Wiener EM, the stems `umx stream` returns, without the latency) writes the estimates.
if [ "$name" = umxsynth-rt ]; then
    .venv/bin/python - "$work" "$name" $tracks <<'PY'
import sys
from pathlib import Path
import soundfile
import torch
from umx import load_separator, separate_causal

work, name, tracks = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
separator = load_separator(name, device="cpu")
for track in tracks:
    mix, rate = soundfile.read(work / "synth" / "test" / track / "mixture.wav", dtype="float32")
    assert rate == separator.sample_rate, (rate, separator.sample_rate)
    stems = separate_causal(separator, torch.from_numpy(mix.T))
    out = work / "estimates" / f"{name}-causal" / "test" / track
    out.mkdir(parents=True, exist_ok=True)
    for target, stem in zip(separator.targets, stems):
        soundfile.write(out / f"{target}.wav", stem.T.numpy(), rate, subtype="FLOAT")
PY
    $umx evaluate --root "$work/synth" --is-wav --tracks $tracks \
        --estimates "$work/estimates/$name-causal" --evaldir "$work/evals/$name-causal" --jobs 2
    evals+=("$work/evals/$name-causal")
fi
$umx evaluate --compare "${evals[@]}" "$work/evals/irm" "$work/evals/mix" \
    --evaldir "$work/evals/all-$name"
