#!/usr/bin/env bash
# The levers of `umx synth`, each alone (docs/synthetic-data.md, "Levers: what each adds"): the
# same 60 procedural songs (seed 3) rendered produced (--production --sung, 13 drum kits) with no
# lever, each lever alone, and all four; a base model fine-tuned on each for 2 epochs per target;
# every model scored on the test split of the all-levers dataset (12 songs, TimGM6mb, GMRockKit,
# Schroeder reverb, and the Festival voice ked_diphone, which training never hears).
# Resumable: run it again after an interruption.
# Needs: the packages of scripts/make_umxsynth.sh, festival festvox-kallpc16k festvox-kdlpc16k,
# musescore-general-soundfont-lossless (the larger soundfont lever) and sonic-pi-samples (the
# recorded sounds of `other`, whose model is also scored on its own test split: recorded sounds
# training never hears).
# Usage: scripts/ablate_levers.sh BASE_MODEL [WORKDIR]   (default WORKDIR: data/levers)
#   SEED=2 trains again with another seed (models and scores named -s2): the seed's noise
#   BASE_MODEL: the causal base stage of umxsynth-rt (scripts/make_umxsynth.sh's model-rt/)
set -u
cd "$(dirname "$0")/.."
umx=.venv/bin/umx
base=${1:?usage: scripts/ablate_levers.sh BASE_MODEL [WORKDIR]}
w=${2:-data/levers}
mkdir -p $w
k=/usr/share/hydrogen/data/drumkits
kits=("$k"/{Audiophob,BJA_Pacific,ColomboAcousticDrumkit,ElectricEmpireKit,ForzeeStereo,HardElectro1} \
      "$k"/{Millo-Drums_v.1,Millo_MultiLayered2,Millo_MultiLayered3,TR808EmulationKit,"The Black Pearl 1.0"} \
      "$k"/{VariBreaks,rumpf_kit_z01_h2})
musescore=/usr/share/sounds/sf2/MuseScore_General_Full.sf2  # a second GM soundfont, 490 MB
s=/usr/share/sonic-pi/samples  # recorded sounds for `other` (CC0, three MIT); the test split's held out
train_sounds=("$s"/{ambi_dark_woosh,ambi_drone,ambi_glass_hum,ambi_lunar_land,ambi_piano,ambi_sauna} \
    "$s"/{ambi_soft_buzz,ambi_swoosh,guit_e_fifths,guit_e_slide,guit_em9,loop_drone_g_97} \
    "$s"/{perc_bell,elec_chime,elec_blup,elec_twang,misc_cineboom})
test_sounds=("$s"/{ambi_glass_rub,ambi_haunted_hum,guit_harmonics,perc_bell2,loop_garzul})
played=("$s"/{ambi_piano,guit_e_fifths,guit_e_slide,guit_em9,perc_bell,elec_chime,elec_blup,elec_twang})
recorded="--other-samples ${train_sounds[*]/%/.flac} --test-other-samples ${test_sounds[*]/%/.flac}"
recorded_played="--other-samples ${played[*]/%/.flac} --test-other-samples ${test_sounds[*]/%/.flac}"
declare -A lever=([none]="" [mix-bus]="--mix-bus" [dense-other]="--dense-other" \
    [amp-guitars]="--amp-guitars" [festival-singer]="--festival-singer" \
    [musescore-general]="--soundfont /usr/share/sounds/sf2/FluidR3_GM.sf2 $musescore" \
    [other-samples]="$recorded" [other-played]="$recorded_played" \
    [all]="--mix-bus --dense-other --amp-guitars --festival-singer --test-festival-voice ked_diphone")
seed=${SEED:-1}; run=""; [ "$seed" = 1 ] || run=-s$seed
export OMP_NUM_THREADS=1
epochs=2  # per target and lever
trained() {  # the target's run ended: its epochs done or stopped early (its .chkpnt stays)
  [ -f "$1" ] && python3 -c 'import json, sys; r = json.load(open(sys.argv[1]))
sys.exit(not (r["stopped_early"] or r["epochs_trained"] >= int(sys.argv[2])))' "$1" $epochs
}
# LEVERS="all other-samples" runs only those (the others' results already in WORKDIR)
for v in ${LEVERS:-all none mix-bus dense-other amp-guitars festival-singer musescore-general \
    other-samples other-played}; do
  d=$w/data-$v
  [ -d $d ] || nice -n 5 $umx synth --root $d --procedural 60 --excerpts 1 --duration 20 \
      --test-fraction 0.2 --valid-fraction 0.1 --seed 3 --jobs 2 -q \
      --soundfont /usr/share/sounds/sf2/FluidR3_GM.sf2 --drum-kits "${kits[@]}" \
      --test-drum-kits "$k"/GMRockKit --production --sung ${lever[$v]}
  [ $v = all ] && continue  # its test split is the common test set
  for t in vocals drums bass other; do
    m=$w/model-$v$run
    trained $m/$t.json && continue
    if [ -f $m/$t.chkpnt ]; then nice -n 5 $umx train --checkpoint $m --target $t -q
    else nice -n 5 $umx train --root $d --is-wav --target $t --model "$base" \
        --output $m --epochs $epochs --lr 0.001 --seed $seed --seq-dur 4 --batch-size 16 \
        --samples-per-track 8 -q; fi
  done
  tracks=$(ls $w/data-all/test)
  [ -d $w/eval-$v$run ] || nice -n 5 $umx evaluate --root $w/data-all --is-wav --tracks $tracks \
      --model $w/model-$v$run --evaldir $w/eval-$v$run --jobs 1 -q
  echo "$v done $(date)"
done
for v in base none other-samples other-played; do  # on the test split with recorded sounds
  m=$w/model-$v$run e=$w/eval-$v$run-recorded; [ $v = base ] && m=$base e=$w/eval-base-recorded
  [ -d $e ] || nice -n 5 $umx evaluate --root $w/data-other-samples --is-wav \
      --tracks $(ls $w/data-other-samples/test) --model "$m" --evaldir $e --jobs 1 -q
done
[ -d $w/eval-base ] || $umx evaluate --root $w/data-all --is-wav --tracks $(ls $w/data-all/test) \
    --model "$base" --evaldir $w/eval-base --jobs 1 -q
$umx evaluate --compare $w/eval-base $w/eval-{none,mix-bus,dense-other,amp-guitars}$run \
    $w/eval-{festival-singer,musescore-general,other-samples,other-played}$run \
    --evaldir $w/all$run
$umx evaluate --compare $w/eval-base-recorded $w/eval-{none,other-samples,other-played}$run-recorded \
    --evaldir $w/all$run-recorded
