#!/usr/bin/env bash
# Rebuilds the bundled model `umxsynth` (src/umx/pretrained/umxsynth) from scratch in two
# stages: a base model trained on General MIDI renderings (the first umxsynth), then fine-tuned
# on produced tracks (recorded Hydrogen drum kits, effect chains, the formant singer); it exports
# the weights and scores the base and the final model on the produced test split, whose
# soundfont, drum kit and reverb family training never uses.
# With CAUSAL=1 it builds the causal `umxsynth-rt` (src/umx/pretrained/umxsynth-rt) instead: the
# same data (shared by both in one WORKDIR) and the same two stages with a unidirectional LSTM,
# scored offline like umxsynth and through the stream's causal path
# (umx.stream.engine.separate_causal).
# Needs: apt-get install fluidsynth fluid-soundfont-gm timgm6mb-soundfont \
#          musescore-general-soundfont-small openttd-openmsx planetblupi-music-midi ffmpeg \
#          hydrogen-drumkits hydrogen-data
# Usage: [CAUSAL=1] scripts/make_umxsynth.sh [WORKDIR]   (default: data/umxsynth-build; resumable)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-data/umxsynth-build}
umx=.venv/bin/umx
mkdir -p "$work"
case ${CAUSAL:-0} in
    0) name=umxsynth; model=$work/model; final=$work/model-produced; lstm=
       recipe=scripts/make_umxsynth.sh ;;
    1) name=umxsynth-rt; model=$work/model-rt; final=$work/model-rt-produced; lstm=--unidirectional
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

# 3. Stage 2: produced tracks, 160 procedural songs and the MIDI songs, two
#    excerpts each, rendered with FluidR3 (MuseScore's compressed soundfont is 3 times slower)
#    and, for the drums, one of 13 Hydrogen kits or the soundfont; GMRockKit is held out for the
#    test split. The base model is fine-tuned on them, 8 epochs per target.
kits=/usr/share/hydrogen/data/drumkits
[ -d "$work/synth-produced" ] || $umx synth --root "$work/synth-produced" --procedural 160 \
        --excerpts 2 --duration 20 --test-fraction 0.1 --valid-fraction 0.1 --seed 2 --jobs 2 \
        --soundfont /usr/share/sounds/sf2/FluidR3_GM.sf2 \
        --midi /usr/share/games/openttd/baseset/openmsx /usr/share/planetblupi/music \
        --drum-kits "$kits"/{Audiophob,BJA_Pacific,ColomboAcousticDrumkit,ElectricEmpireKit} \
            "$kits"/{ForzeeStereo,HardElectro1,Millo-Drums_v.1,Millo_MultiLayered2} \
            "$kits"/{Millo_MultiLayered3,TR808EmulationKit,"The Black Pearl 1.0",VariBreaks} \
            "$kits"/rumpf_kit_z01_h2 \
        --test-drum-kits "$kits"/GMRockKit --production --sung
for target in vocals drums bass other; do
    if [ -f "$final/$target.chkpnt" ]; then
        $umx train --checkpoint "$final" --target "$target"
    else
        $umx train --root "$work/synth-produced" --is-wav --target "$target" \
            --model "$model" --output "$final" --seq-dur 4 --batch-size 16 \
            --samples-per-track 4 --epochs 8 --lr 0.001 --seed 1
    fi
done

# 4. Export: float16 weight matrices, the training data's description in every target json.
.venv/bin/python - "$work" "$model" "$final" "$name" "$recipe" <<'PY'
import json, sys
from pathlib import Path
from umx.modeldir import export_model
from umx.zoo.registry import PRETRAINED_DIR

work, base, final = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
name, recipe = sys.argv[4], sys.argv[5]
stages = ["synth"] + (["synth-produced"] if final != base else [])
data = {"generator": "umx synth", "recipe": recipe, "stages": []}
for stage in stages:
    synth = json.loads((work / stage / "synth.json").read_text())
    data["stages"].append({
        "settings": synth["settings"],
        "hours": synth["hours"],
        "songs": {split: len(songs) for split, songs in synth["songs"].items()},
        "soundfonts": synth["soundfonts"],
    })
data["hours"] = round(sum(stage["hours"] for stage in data["stages"]), 3)
# epochs of each target in each stage, and the training time: wall-clock seconds of every epoch
# of every target, summed (targets may train side by side on the 2 shared cores)
runs = [base] + ([final] if final != base else [])
targets = ("vocals", "drums", "bass", "other")
logs = [[json.loads((run / f"{t}.json").read_text()) for t in targets] for run in runs]
data["epochs"] = {t: [run[i]["epochs_trained"] for run in logs] for i, t in enumerate(targets)}
seconds = sum(sum(log["train_time_history"]) for run in logs for log in run)
data["training_wall_hours"] = round(seconds / 3600, 2)
export_model(final, PRETRAINED_DIR / name, metadata={"training_data": data}, force=True)
PY

# 5. Scores on six held-out test tracks (the first excerpt of six test songs), with the oracle
#    ideal ratio mask and the unprocessed mixture on the same tracks.
tracks="mighty_giant_run-00 relax_song-00 the_fast_route-00 ttsong_iii_imuh3-00 procedural-00010-00 procedural-00030-00"
for method in "$name" irm mix; do
    if [ "$method" = "$name" ]; then what=(--model "$name"); else what=(--method "$method"); fi
    $umx evaluate --root "$work/synth" --is-wav --tracks $tracks "${what[@]}" \
        --evaldir "$work/evals/$method" --jobs 2
done
evals=("$work/evals/$name")

# 6. The causal model also through the stream's path: separate_causal (causal framing and causal
#    Wiener EM, the stems `umx stream` returns, without the latency) writes the estimates.
causal() {  # causal DATASET EVALDIR TRACK...: score umxsynth-rt's causal stems of the test tracks
    local data=$1 evaldir=$2; shift 2
    .venv/bin/python - "$data" "$evaldir/estimates" "$@" <<'PY'
import sys
from pathlib import Path
import soundfile
import torch
from umx import load_separator, separate_causal

data, out, tracks = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
separator = load_separator("umxsynth-rt", device="cpu")
for track in tracks:
    mix, rate = soundfile.read(data / "test" / track / "mixture.wav", dtype="float32")
    assert rate == separator.sample_rate, (rate, separator.sample_rate)
    stems = separate_causal(separator, torch.from_numpy(mix.T))
    (out / "test" / track).mkdir(parents=True, exist_ok=True)
    for target, stem in zip(separator.targets, stems):
        soundfile.write(out / "test" / track / f"{target}.wav", stem.T.numpy(), rate, subtype="FLOAT")
PY
    $umx evaluate --root "$data" --is-wav --tracks "$@" --estimates "$evaldir/estimates" \
        --evaldir "$evaldir" --jobs 2
}
if [ "$name" = umxsynth-rt ]; then
    causal "$work/synth" "$work/evals/$name-causal" $tracks
    evals+=("$work/evals/$name-causal")
fi
$umx evaluate --compare "${evals[@]}" "$work/evals/irm" "$work/evals/mix" \
    --evaldir "$work/evals/all-$name"

# 7. The base and the final model on twelve produced test tracks (the first excerpt of the four
#    MIDI and eight procedural test songs; held-out soundfont TimGM6mb, drum kit GMRockKit and
#    Schroeder reverb), with the baselines; umxsynth-rt also through the stream's path.
produced="midnight_snow_run-00 say_what_redfarn-00 train_filled_with_cash-00 ultimate_run-00
    procedural-00003-00 procedural-00015-00 procedural-00033-00 procedural-00036-00
    procedural-00065-00 procedural-00073-00 procedural-00079-00 procedural-00085-00"
out=$work/evals-produced
for method in "base-$name" "$name" irm mix; do
    case $method in
        base-*) what=(--model "$model") ;; "$name") what=(--model "$name") ;;
        *) what=(--method "$method") ;;
    esac
    $umx evaluate --root "$work/synth-produced" --is-wav --tracks $produced "${what[@]}" \
        --evaldir "$out/$method" --jobs 2
done
rows=("$out/base-$name" "$out/$name")
if [ "$name" = umxsynth-rt ]; then
    causal "$work/synth-produced" "$out/$name-causal" $produced
    rows+=("$out/$name-causal")
fi
$umx evaluate --compare "${rows[@]}" "$out/irm" "$out/mix" --evaldir "$out/all-$name"
