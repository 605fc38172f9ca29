"""`var-app`: serve the sampling and editing web app (:mod:`var_lightning.webapp`) for one VAR model.

var-app pretrained=var_d16
var-app ckpt_path=outputs/demo/var/checkpoints/last.ckpt port=7861
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from var_lightning.cli.common import load_for_inference, require_var_stage
from var_lightning.cli.runtime import resolve_device
from var_lightning.cli.validate import checked_main, validate_config

log = logging.getLogger("var_lightning.app")


def make_app(cfg: DictConfig, out_dir: Path):
    """The :class:`~var_lightning.webapp.VarApp` a config describes (models loaded, nothing served yet)."""
    validate_config(cfg, "app")
    from var_lightning.webapp import VarApp

    device = resolve_device(cfg.device)
    models = load_for_inference(cfg, device)
    require_var_stage(models, "the app (coarse-to-fine view and editing)")
    return VarApp(models, out_dir, sampler=cfg.sampler, device=device, precision=cfg.precision,
                  batch_size=cfg.batch_size, max_images=cfg.max_images)  # fmt: skip


@checked_main("app", "var-app")
def main(cfg: DictConfig) -> None:
    app = make_app(cfg, Path(HydraConfig.get().runtime.output_dir))
    log.info("serving on http://%s:%d (Ctrl-C stops)", cfg.host, cfg.port)
    app.launch(host=cfg.host, port=int(cfg.port), share=bool(cfg.share))


if __name__ == "__main__":
    main()
