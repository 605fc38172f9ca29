"""What training minimises and ``var-eval`` measures on held-out data (plain torch; no Lightning, no Hydra).

Modules: ``losses`` (the tokenizer's tokens, label dropout, the per-token head loss, the next-scale objective
of VAR and the raster objective of the AR baseline), ``chunked_ce`` (the head's cross-entropy without the
(B, L, V) logits), ``progressive`` (which prefix of scales a step trains, and its loss ramp).
"""
