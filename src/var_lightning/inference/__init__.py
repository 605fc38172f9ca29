"""The inference front ends and what they share: the commands (``var-sample``, ``var-edit``, ``var-eval``'s
sampling) and the web app load models the same way (``models``), parse classes the same way (``classes``),
sample and edit through the same two functions (``generate``), read and write images the same way
(``edit_images``, ``grids``) on the device and precision ``devices`` picks. The app adds its page
(``app_page``), its checked inputs (``app_inputs``) and its serving rules (``app_serving``) around
:class:`~var_lightning.inference.webapp.VarApp`.
"""
