#!/usr/bin/env bash
# Rebuilds the bundled model `umxsynth` (src/umx/pretrained/umxsynth) from scratch in six
# stages: a base model trained on General MIDI renderings (the first umxsynth), fine-tuned on
# produced tracks (recorded Hydrogen drum kits, effect chains, the formant singer), then on
# tracks with the realer sources of docs/synthetic-data.md (mix bus, denser `other`, guitar
# amps, Festival's recorded-voice singer), then on more such tracks, half of them played by a
# second, larger soundfont, then twice on yet other songs made so (the last stage's weights
# averaged with those of the stage before); it exports the weights and scores
# the stages on the produced and the realer test splits, whose soundfont, drum kit, reverb
# family (and, for the realer split, Festival voice) training never uses.
# With CAUSAL=1 it builds the causal `umxsynth-rt` (src/umx/pretrained/umxsynth-rt) instead: the
# same data (shared by both in one WORKDIR) and the same stages with a unidirectional LSTM,
# scored offline like umxsynth and through the stream's causal path
# (umx.stream.engine.separate_causal).
# Needs: apt-get install fluidsynth fluid-soundfont-gm timgm6mb-soundfont \
#          musescore-general-soundfont-small openttd-openmsx planetblupi-music-midi ffmpeg \
#          hydrogen-drumkits hydrogen-data festival festvox-kallpc16k festvox-kdlpc16k \
#          musescore-general-soundfont-lossless
# HIDDEN=N trains a model of that width (default 128) in model folders named -hN, beside the
# 128-wide ones and on the same data, and scores it into evaluation folders named -hN; its export
# replaces the bundled model as any run's does. 192 is the widest whose float16 export stays
# under 20 MB.
# Usage: [CAUSAL=1] [HIDDEN=N] scripts/make_umxsynth.sh [WORKDIR]
#   (default WORKDIR: data/umxsynth-build; resumable)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-data/umxsynth-build}
umx=.venv/bin/umx
mkdir -p "$work"
case ${CAUSAL:-0} in
    0) name=umxsynth; model=$work/model; stage2=$work/model-produced; stage3=$work/model-real
       stage4=$work/model-real2; stage5=$work/model-real3; stage6=$work/model-real4
       lstm=; recipe=scripts/make_umxsynth.sh ;;
    1) name=umxsynth-rt; model=$work/model-rt; stage2=$work/model-rt-produced
       stage3=$work/model-rt-real; stage4=$work/model-rt-real2; stage5=$work/model-rt-real3
       stage6=$work/model-rt-real4; lstm=--unidirectional
       recipe="CAUSAL=1 scripts/make_umxsynth.sh" ;;
    *) echo "CAUSAL must be 0 or 1, not '$CAUSAL'" >&2; exit 2 ;;
esac
hidden=${HIDDEN:-128}
[[ $hidden =~ ^[1-9][0-9]*$ ]] || { echo "HIDDEN must be a whole number, not '$hidden'" >&2; exit 2; }
tag=$name  # the scores' folders: a run at another width must not find the 128-wide one's
if [ "$hidden" != 128 ]; then
    for stage in model stage2 stage3 stage4 stage5 stage6; do
        printf -v $stage %s "${!stage}-h$hidden"; done
    tag=$name-h$hidden recipe="HIDDEN=$hidden $recipe"
fi
final=$stage6-averaged

# 1. Data: 100 procedural songs and the General MIDI songs of two Debian packages, two
#    20-second excerpts each; test songs rendered with a soundfont never used in training.
[ -d "$work/synth" ] || $umx synth --root "$work/synth" --procedural 100 --excerpts 2 \
    --duration 20 --test-fraction 0.1 --valid-fraction 0.1 --seed 1 --jobs 2 \
    --midi /usr/share/games/openttd/baseset/openmsx /usr/share/planetblupi/music

train() {  # train OUTPUT EPOCHS OPTION...: the four targets into OUTPUT; a target killed
           # mid-run resumes from its checkpoint, so a stage can be run again after an interruption
    local out=$1 epochs=$2; shift 2
    for target in vocals drums bass other; do
        if [ -f "$out/$target.chkpnt" ]; then
            $umx train --checkpoint "$out" --target "$target" --epochs "$epochs"
        else
            $umx train --target "$target" --output "$out" --epochs "$epochs" "$@"
        fi
    done
}

# 2. Training: a small model (hidden size 128, or HIDDEN), 12 epochs per target.
train "$model" 12 --root "$work/synth" --is-wav --hidden-size "$hidden" --seq-dur 4 --batch-size 16 \
    --samples-per-track 4 --lr 0.002 --seed 1 $lstm

# 3. Stage 2: produced tracks, 160 procedural songs and the MIDI songs, two
#    excerpts each, rendered with FluidR3 (MuseScore's compressed soundfont is 3 times slower)
#    and, for the drums, one of 13 Hydrogen kits or the soundfont; GMRockKit is held out for the
#    test split. The base model is fine-tuned on them, 8 epochs per target.
kits=/usr/share/hydrogen/data/drumkits
produced_kits=("$kits"/{Audiophob,BJA_Pacific,ColomboAcousticDrumkit,ElectricEmpireKit}
    "$kits"/{ForzeeStereo,HardElectro1,Millo-Drums_v.1,Millo_MultiLayered2}
    "$kits"/{Millo_MultiLayered3,TR808EmulationKit,"The Black Pearl 1.0",VariBreaks}
    "$kits"/rumpf_kit_z01_h2)
[ -d "$work/synth-produced" ] || $umx synth --root "$work/synth-produced" --procedural 160 \
        --excerpts 2 --duration 20 --test-fraction 0.1 --valid-fraction 0.1 --seed 2 --jobs 2 \
        --soundfont /usr/share/sounds/sf2/FluidR3_GM.sf2 \
        --midi /usr/share/games/openttd/baseset/openmsx /usr/share/planetblupi/music \
        --drum-kits "${produced_kits[@]}" \
        --test-drum-kits "$kits"/GMRockKit --production --sung
train "$stage2" 8 --root "$work/synth-produced" --is-wav --model "$model" --seq-dur 4 \
    --batch-size 16 --samples-per-track 4 --lr 0.001 --seed 1

# 3b. Stage 3, realer sources: 120 procedural songs (denser `other`) and the MIDI songs, two
#     excerpts each, produced as in stage 2 plus the mix bus, guitar amps and Festival's singer;
#     the test split is sung by ked_diphone, a voice training never hears. The produced stage
#     is fine-tuned on them, 12 epochs per target.
realer=(--procedural 120 --excerpts 2 --duration 20 --test-fraction 0.1 --valid-fraction 0.1
    --jobs 2 --midi /usr/share/games/openttd/baseset/openmsx /usr/share/planetblupi/music
    --drum-kits "${produced_kits[@]}" --test-drum-kits "$kits"/GMRockKit --production --sung
    --mix-bus --dense-other --amp-guitars --festival-singer --test-festival-voice ked_diphone)
[ -d "$work/synth-real" ] || $umx synth --root "$work/synth-real" --seed 5 \
        --soundfont /usr/share/sounds/sf2/FluidR3_GM.sf2 "${realer[@]}"
train "$stage3" 12 --root "$work/synth-real" --is-wav --model "$stage2" --seq-dur 4 \
    --batch-size 16 --samples-per-track 4 --lr 0.001 --seed 1

# 3c. Stage 4, a second soundfont: as stage 3 with other songs (seed 6), each track played by
#     FluidR3 or by the larger MuseScore_General_Full; stage 3 is fine-tuned on them, 10 epochs
#     per target.
[ -d "$work/synth-real2" ] || $umx synth --root "$work/synth-real2" --seed 6 \
        --soundfont /usr/share/sounds/sf2/{FluidR3_GM.sf2,MuseScore_General_Full.sf2} "${realer[@]}"
train "$stage4" 10 --root "$work/synth-real2" --is-wav --model "$stage3" --seq-dur 4 \
    --batch-size 16 --samples-per-track 4 --lr 0.001 --seed 1
# 3d. Stage 5, more songs: as stage 4 with other songs (seed 7), the MIDI songs of the earlier
#     stages' test splits kept in its test split, never trained on; stage 4 is fine-tuned on
#     them, 10 epochs per target.
[ -d "$work/synth-real3" ] || $umx synth --root "$work/synth-real3" --seed 7 \
        --soundfont /usr/share/sounds/sf2/{FluidR3_GM.sf2,MuseScore_General_Full.sf2} \
        "${realer[@]}" --test-songs-of "$work"/synth{,-produced,-real,-real2}
train "$stage5" 10 --root "$work/synth-real3" --is-wav --model "$stage4" --seq-dur 4 \
    --batch-size 16 --samples-per-track 4 --lr 0.001 --seed 1
# 3e. Stage 6, more songs again: as stage 5 with 150 procedural songs (seed 8), the earlier
#     stages' MIDI test songs kept out; stage 5 is fine-tuned on them, 10 epochs per target, and
#     the bundled weights are the mean of stage 5's and stage 6's, tensor by tensor (the
#     interpolation scored better than either stage on stage 6's own procedural test songs).
[ -d "$work/synth-real4" ] || $umx synth --root "$work/synth-real4" --seed 8 \
        --soundfont /usr/share/sounds/sf2/{FluidR3_GM.sf2,MuseScore_General_Full.sf2} \
        "${realer[@]}" --procedural 150 --test-songs-of "$work"/synth{,-produced,-real{,2,3}}
train "$stage6" 10 --root "$work/synth-real4" --is-wav --model "$stage5" --seq-dur 4 \
    --batch-size 16 --samples-per-track 4 --lr 0.001 --seed 1
[ -f "$final/separator.json" ] || .venv/bin/python - "$stage5" "$stage6" "$final" <<'PY'
import shutil, sys
from pathlib import Path
import torch

*runs, out = map(Path, sys.argv[1:])
out.mkdir(exist_ok=True)
for target in ("vocals", "drums", "bass", "other"):
    states = [torch.load(run / f"{target}.pth", weights_only=True) for run in runs]
    mean = {key: sum(state[key] for state in states) / len(states) if value.is_floating_point()
            else value for key, value in states[-1].items()}  # counters: the last stage's
    torch.save(mean, out / f"{target}.pth")
    shutil.copy(runs[-1] / f"{target}.json", out)
shutil.copy(runs[-1] / "separator.json", out)  # last: it marks the folder complete
PY

# 4. Export: float16 weight matrices, the training data's description in every target json.
.venv/bin/python - "$work" "$model" "$stage2" "$stage3" "$stage4" "$stage5" "$stage6" "$final" \
    "$name" "$recipe" <<'PY'
import json, sys
from pathlib import Path
from umx.modeldir import export_model
from umx.zoo.registry import PRETRAINED_DIR

# the runs: base, produced, realer, second soundfont, more songs, more songs again
work, *runs, final = map(Path, sys.argv[1:9])
name, recipe = sys.argv[9], sys.argv[10]
stages = ["synth", "synth-produced", "synth-real", "synth-real2", "synth-real3", "synth-real4"]
data = {"generator": "umx synth", "recipe": recipe, "stages": [],
        "averaged": "the weights of the last two stages, their mean tensor by tensor"}
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
targets = ("vocals", "drums", "bass", "other")
logs = [[json.loads((run / f"{t}.json").read_text()) for t in targets] for run in runs]
data["epochs"] = {t: [run[i]["epochs_trained"] for run in logs] for i, t in enumerate(targets)}
seconds = sum(sum(log["train_time_history"]) for run in logs for log in run)
data["training_wall_hours"] = round(seconds / 3600, 2)
export_model(final, PRETRAINED_DIR / name, metadata={"training_data": data}, force=True)
PY

# 5. The base stage's scores on six of its held-out test tracks (the first excerpt of six test
#    songs), with the oracle ideal ratio mask and the unprocessed mixture on the same tracks.
tracks="mighty_giant_run-00 relax_song-00 the_fast_route-00 ttsong_iii_imuh3-00 procedural-00010-00 procedural-00030-00"
for method in "$tag" irm mix; do
    if [ "$method" = "$tag" ]; then what=(--model "$model"); else what=(--method "$method"); fi
    $umx evaluate --root "$work/synth" --is-wav --tracks $tracks "${what[@]}" \
        --evaldir "$work/evals/$method" --jobs 2
done
evals=("$work/evals/$tag")

# 6. The causal model also through the stream's path: separate_causal (causal framing and causal
#    Wiener EM, the stems `umx stream` returns, without the latency) writes the estimates.
causal() {  # causal MODEL DATASET EVALDIR TRACK...: score a causal model's stems of test tracks
    local model=$1 data=$2 evaldir=$3; shift 3
    .venv/bin/python - "$model" "$data" "$evaldir/estimates" "$@" <<'PY'
import sys
from pathlib import Path
import soundfile
import torch
from umx import load_separator, separate_causal

model, data, out, tracks = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]
separator = load_separator(model, device="cpu")
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
    causal "$model" "$work/synth" "$work/evals/$tag-causal" $tracks
    evals+=("$work/evals/$tag-causal")
fi
$umx evaluate --compare "${evals[@]}" "$work/evals/irm" "$work/evals/mix" \
    --evaldir "$work/evals/all-$tag"

# 7. The stages on the eight procedural test songs of the produced split (the first excerpt of
#    each; held-out soundfont TimGM6mb, drum kit GMRockKit and Schroeder reverb), with the
#    baselines; umxsynth-rt also through the stream's path. Only procedural songs: each stage
#    splits the same General MIDI songs with its own seed, so a later stage trains on some MIDI
#    songs an earlier one tests on, while procedural songs differ with every seed. (Stages 1 to
#    4 predate `umx synth --test-songs-of`, which keeps stages 5 and 6 off the earlier MIDI
#    test songs.)
produced="procedural-00003-00 procedural-00015-00 procedural-00033-00 procedural-00036-00
    procedural-00065-00 procedural-00073-00 procedural-00079-00 procedural-00085-00"
# and on the realer test split (the first excerpt of its 12 procedural songs; sung by ked_diphone)
real="procedural-00014-00 procedural-00018-00 procedural-00032-00 procedural-00040-00
    procedural-00050-00 procedural-00060-00 procedural-00075-00 procedural-00081-00
    procedural-00084-00 procedural-00089-00 procedural-00095-00 procedural-00106-00"
for split in produced real; do
    out=$work/evals-$split; tracks=${!split}
    for method in "base-$tag" "produced-$tag" "realer-$tag" "second-$tag" "fifth-$tag" \
        "$tag" irm mix; do
        case $method in
            base-*) what=(--model "$model") ;; produced-*) what=(--model "$stage2") ;;
            realer-*) what=(--model "$stage3") ;; second-*) what=(--model "$stage4") ;;
            fifth-*) what=(--model "$stage5") ;;
            "$tag") what=(--model "$name") ;;
            *) what=(--method "$method") ;;
        esac
        $umx evaluate --root "$work/synth-$split" --is-wav --tracks $tracks "${what[@]}" \
            --evaldir "$out/$method" --jobs 2
    done
    rows=("$out/base-$tag" "$out/produced-$tag" "$out/realer-$tag" "$out/second-$tag"
        "$out/fifth-$tag" "$out/$tag")
    if [ "$name" = umxsynth-rt ]; then
        causal "$name" "$work/synth-$split" "$out/$tag-causal" $tracks
        rows+=("$out/$tag-causal")
    fi
    $umx evaluate --compare "${rows[@]}" "$out/irm" "$out/mix" --evaldir "$out/all-$tag"
done
