"""The VAR transformer and its samplers, plain torch: ``config`` (depth rule, presets, :class:`SamplingArgs`),
``layers``, ``masks``, ``var`` (the teacher-forced forward), ``sampling`` / ``fast_sampling`` / ``flex`` /
``compile_budget`` (generation), ``editing`` (zero-shot in/out-painting), ``ar`` (the raster AR baseline)."""
