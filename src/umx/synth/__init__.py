"""`umx synth`: synthetic music for training, rendered from General MIDI.

`midi` reads and writes MIDI files; `gm` splits a song into the four stems by General MIDI rules;
`procedural` writes songs from a seed; `plan` draws each track's excerpt and parameters;
`render` renders a track (fluidsynth, with the drum `sampler`, the `singer` and the effects of
`production`); `dataset` writes a dataset folder or one example file; `run` holds `SynthOptions`
and `make_dataset`, a dataset's run; `options` is the command's argument parsing.
"""
