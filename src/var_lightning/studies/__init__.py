"""Studies that combine several runs into one report (the AR-vs-VAR comparison); the scaling-law study is
:mod:`var_lightning.scaling`."""
