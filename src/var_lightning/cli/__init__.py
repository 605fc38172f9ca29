"""The ``var-*`` commands.

omegaconf 2.4 deprecates APIs that Hydra 1.3 itself calls on every run (``register_new_resolver`` in
``hydra.core.utils.setup_globals``, a ``Version`` assigned to a string node). Those warnings name Hydra's code,
not the user's config, and nothing the user can change, so the commands do not print them. Lightning's
"Found N module(s) in eval mode at the start of training" names the frozen parts of every run (the VAR
stage's tokenizer, the tokenizer stage's LPIPS network), which stay in eval mode by design.
"""

import warnings

warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning)
warnings.filterwarnings("ignore", message=r"Implicit conversion from Version to str", category=FutureWarning)
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
