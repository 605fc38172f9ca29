"""`var-app`: serve the sampling and editing web app (:mod:`var_lightning.inference.webapp`) for one VAR model.

var-app pretrained=var_d16
var-app ckpt_path=outputs/demo/var/checkpoints/last.ckpt port=7861
VAR_APP_AUTH=me:secret var-app pretrained=var_d16 host=0.0.0.0   # beyond this machine: a login
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from var_lightning.cli.command_line import checked_main
from var_lightning.inference.app_serving import check_serving, resolve_auth
from var_lightning.inference.devices import resolve_device
from var_lightning.inference.models import load_for_inference, require_var_stage
from var_lightning.inference.webapp import VarApp

log = logging.getLogger("var_lightning.app")


def make_app(cfg: DictConfig, out_dir: Path):
    """The :class:`~var_lightning.inference.webapp.VarApp` a config describes (models loaded, nothing served yet);
    ``out_dir`` receives the results and is the only folder served."""

    device = resolve_device(cfg.device)
    models = load_for_inference(cfg, device)
    require_var_stage(models, "the app (coarse-to-fine view and editing)")
    return VarApp(models, out_dir, sampler=cfg.sampler, device=device, precision=cfg.precision,
                  batch_size=cfg.batch_size, max_images=cfg.max_images)  # fmt: skip


def serve(cfg: DictConfig, run_dir: Path, block: bool = True):
    """Check the serving options (port, login) before loading anything, then load and serve: results in
    ``run_dir/results``; the run folder's config and logs are blocked."""

    port = check_serving(cfg.host, cfg.port)
    auth = resolve_auth(cfg.host, bool(cfg.share), bool(cfg.insecure), cfg.auth_file)
    app = make_app(cfg, run_dir / "results")
    blocked = [p for p in run_dir.iterdir() if p.name != "results"] + [run_dir / ".hydra"]
    log.info("serving on http://%s:%d%s (Ctrl-C stops)", cfg.host, port, " with a login" if auth else "")
    return app.launch(host=cfg.host, port=port, share=bool(cfg.share), block=block, auth=auth,
                      blocked_paths=blocked)  # fmt: skip


@checked_main("app", "var-app")
def main(cfg: DictConfig) -> None:
    serve(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
