"""The ``var-*`` commands.

omegaconf 2.4 deprecates APIs that Hydra 1.3 itself calls on every run (``register_new_resolver`` in
``hydra.core.utils.setup_globals``, a ``Version`` assigned to a string node). Those warnings name Hydra's code,
not the user's config, and nothing the user can change, so the commands do not print them.
"""

import warnings

warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning)
warnings.filterwarnings("ignore", message=r"Implicit conversion from Version to str", category=FutureWarning)
