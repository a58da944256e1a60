"""Causal separation of a stream, block by block: the block engine with its carried state
(`umx.stream.engine`: `StreamingSeparator`, `separate_causal`) and the input and output around it
for `umx stream` (`umx.stream.io`: files and raw PCM in and out, paced by the clock if asked)."""
