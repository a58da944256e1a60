#!/usr/bin/env bash
# Rebuilds the bundled model `umxsynth` (src/umx/pretrained/umxsynth) from scratch:
# renders the synthetic dataset, trains the four targets, scores them, and exports the weights.
# Needs: apt-get install fluidsynth fluid-soundfont-gm timgm6mb-soundfont \
#          musescore-general-soundfont-small openttd-openmsx planetblupi-music-midi ffmpeg
# Usage: scripts/make_umxsynth.sh [WORKDIR]   (default: data/umxsynth-build; resumable)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-data/umxsynth-build}
umx=.venv/bin/umx
mkdir -p "$work"

# 1. Data: 100 procedural songs and the General MIDI songs of two Debian packages, two
#    20-second excerpts each; test songs rendered with a soundfont never used in training.
[ -d "$work/synth" ] || $umx synth --root "$work/synth" --procedural 100 --excerpts 2 \
    --duration 20 --test-fraction 0.1 --valid-fraction 0.1 --seed 1 --jobs 2 \
    --midi /usr/share/games/openttd/baseset/openmsx /usr/share/planetblupi/music

# 2. Training: a small model (hidden size 128), 12 epochs per target. A killed run resumes with
#    --checkpoint, so the loop can be run again after an interruption.
for target in vocals drums bass other; do
    if [ -f "$work/model/$target.chkpnt" ]; then
        $umx train --checkpoint "$work/model" --target "$target"
    else
        $umx train --root "$work/synth" --is-wav --target "$target" --output "$work/model" \
            --hidden-size 128 --seq-dur 4 --batch-size 16 --samples-per-track 4 --epochs 12 \
            --lr 0.002 --seed 1
    fi
done

# 3. Export: float16 weight matrices, the training data's description in every target json.
.venv/bin/python - "$work" <<'PY'
import json, sys
from pathlib import Path
from umx.modeldir import export_model
from umx.zoo import PRETRAINED_DIR

work = Path(sys.argv[1])
synth = json.loads((work / "synth" / "synth.json").read_text())
data = {
    "generator": "umx synth",
    "settings": synth["settings"],
    "hours": synth["hours"],
    "songs": {split: len(songs) for split, songs in synth["songs"].items()},
    "soundfonts": synth["soundfonts"],
    "recipe": "scripts/make_umxsynth.sh",
}
export_model(work / "model", PRETRAINED_DIR / "umxsynth", metadata={"training_data": data}, force=True)
PY

# 4. Scores on six held-out test tracks (the first excerpt of six test songs), with the oracle
#    ideal ratio mask and the unprocessed mixture on the same tracks.
tracks="mighty_giant_run-00 relax_song-00 the_fast_route-00 ttsong_iii_imuh3-00 procedural-00010-00 procedural-00030-00"
for method in umxsynth irm mix; do
    if [ "$method" = umxsynth ]; then what=(--model umxsynth); else what=(--method "$method"); fi
    $umx evaluate --root "$work/synth" --is-wav --tracks $tracks "${what[@]}" \
        --evaldir "$work/evals/$method" --jobs 2
done
$umx evaluate --compare "$work/evals/umxsynth" "$work/evals/irm" "$work/evals/mix" \
    --evaldir "$work/evals/all"
