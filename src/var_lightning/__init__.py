"""var_lightning: VAR (next-scale prediction) with Hydra and PyTorch Lightning.

Layers: ``tokenizer`` and ``transformer`` hold plain-torch model code; ``training``, ``data`` and
``callbacks`` hold Lightning code; ``cli`` holds the Hydra entry points.
"""

__version__ = "0.1.0"
