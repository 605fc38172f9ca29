"""Every shipped config composes, instantiates and runs; unknown keys are caught with the closest valid one;
the YAML defaults are the code's; the published recipes differ only in their published values."""

from __future__ import annotations

import dataclasses
import inspect
import math
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

import var_lightning
from tests.helpers import compose_config, tiny_vae_cfg

CONF = Path(var_lightning.__file__).parent / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
TINY = {"tokenizer_tiny", "var_tiny", "ar_tiny"}


def compose_train(overrides: list[str], tmp_path: Path):
    return compose_config("train", overrides, run_dir=tmp_path)


def test_configs_are_shipped_inside_the_package():
    assert (CONF / "train.yaml").is_file() and (CONF / "sample.yaml").is_file()
    assert {"tokenizer_tiny", "tokenizer_imagenet256", "var_tiny"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_validates(name, tmp_path):
    from var_lightning.cli.validate import validate_config

    cfg = compose_train(
        [f"experiment={name}", "model.tokenizer_ckpt=/nonexistent.ckpt"]
        if name.startswith(("var", "scaling", "ar_"))
        else [f"experiment={name}"],
        tmp_path,
    )
    validate_config(cfg, "train")
    assert cfg.task_name == name
    assert cfg.model._target_.startswith("var_lightning.training.")
    assert list(cfg.schedule.patch_nums) == sorted(cfg.schedule.patch_nums)


@pytest.mark.parametrize("debug", ["fdr", "overfit", "limit", "profiler"])
def test_debug_configs_compose(debug, tmp_path):
    cfg = compose_train(["experiment=tokenizer_tiny", f"debug={debug}"], tmp_path)
    assert cfg.task_name == "debug"


TINY_TOKENIZER = dict(
    vocab_size=256, z_channels=16, ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, norm_groups=8
)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_instantiates(name, tmp_path):
    """Data, model (on the meta device for the published sizes), callbacks, loggers and trainer build; the
    class count comes from the data."""
    from hydra.utils import instantiate

    from var_lightning.cli.instantiate import instantiate_callbacks, instantiate_loggers
    from var_lightning.data.fit_to_model import fit_data_to_model, transformer_with_data_classes

    overrides = [f"experiment={name}"]
    if name.startswith("tokenizer"):
        overrides.append("model.loss.perceptual_random_backbone=true")
    cfg = compose_train(overrides, tmp_path)
    dm = instantiate(cfg.data)
    if hasattr(dm, "_classes"):  # an ImageNet folder this machine does not have: pin the class list
        dm._classes = [f"n{i:08d}" for i in range(1000)]
    patch_nums = list(cfg.schedule.patch_nums)
    if name.startswith("tokenizer"):
        model = instantiate(cfg.model, patch_nums=patch_nums, _convert_="all")
    else:
        small = name in TINY or name.startswith("scaling")
        tok = {**(TINY_TOKENIZER if small else {}), "patch_nums": patch_nums}
        transformer = transformer_with_data_classes(
            {
                "_target_": cfg.model.get("_target_"),
                "transformer": OmegaConf.to_container(cfg.model.transformer, resolve=True)
                if cfg.model.get("transformer")
                else {},
            },
            dm,
        )
        with torch.device("meta"):
            model = instantiate(
                cfg.model, tokenizer_ckpt=None, tokenizer=tok, patch_nums=patch_nums, transformer=transformer,
                _convert_="all",
            )  # fmt: skip
        assert model.var.cfg.num_classes == dm.num_classes == (10 if small else 1000)
    fit_data_to_model(model, dm)
    assert dm.image_size == model.vae.cfg.image_size  # data.image_size: null took the model's
    callbacks = instantiate_callbacks(cfg.callbacks)
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer_cfg = dict(cfg.trainer)
    from var_lightning.cli.validate import OUR_TRAINER_KEYS

    for key in OUR_TRAINER_KEYS:  # var-train's own keys (removed before the Trainer is built)
        trainer_cfg.pop(key)
    if not torch.cuda.is_available():  # GPU/multi-node recipes: check the rest of the trainer config on CPU
        trainer_cfg.update(accelerator="cpu", devices=1, num_nodes=1, strategy="auto", precision="32-true")
    trainer = instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False)
    assert trainer.max_epochs == cfg.trainer.max_epochs


# ---------------------------------------------------------------------------------------------- run as shipped
@pytest.fixture(scope="module")
def tiny_var_ckpt(tmp_path_factory) -> Path:
    from var_lightning.training.var_module import VARModule

    torch.manual_seed(0)
    module = VARModule(
        transformer=dict(depth=1, width=32, num_heads=1, num_classes=10, drop_path_rate=0.0),
        tokenizer=asdict(tiny_vae_cfg(patch_nums=(1, 2, 4), ch=16, norm_groups=8)),
    )
    path = tmp_path_factory.mktemp("root") / "var.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "var_lightning": {"stage": "var"}}, path)  # fmt: skip
    return path


def test_a_bare_var_train_trains_the_cpu_tokenizer(tmp_path):
    from var_lightning.cli.train import train

    cfg = compose_train(["trainer.max_steps=2", "logger=none", "data.val_size=32"], tmp_path)
    train(cfg)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["hyper_parameters"]["tokenizer"]["ch"] == 32


def test_the_inference_root_configs_run_as_shipped(tiny_var_ckpt, tmp_path):
    """sample / edit / eval / classifier / app with only their required inputs (a model, an image, a feature
    extractor that needs no download) run end to end (the app is built, not served)."""
    from var_lightning.cli import classifier, edit, evaluate, sample

    meta = sample.run(
        compose_config("sample", [f"ckpt_path={tiny_var_ckpt}", "num_per_class=1"]), tmp_path / "s"
    )
    assert meta["num_images"] == 10
    out = edit.run(compose_config("edit", [f"ckpt_path={tiny_var_ckpt}", "image=synthetic:0:0", "box=[0.2,0.2,0.8,0.8]",
                                         "num_variations=1"]), tmp_path / "e")  # fmt: skip
    assert len(out["results"]) == 1
    cfg = compose_config("eval", [f"ckpt_path={tiny_var_ckpt}", "data=synthetic", "extractor=tiny-random",
                                "generation.num_per_class=2", "metrics.kid=false"])  # fmt: skip
    with open_dict(cfg):
        cfg.cache_dir = str(tmp_path / "cache")
    report = evaluate.run(cfg, tmp_path / "v")
    assert report["samples"]["count"] == 20 and math.isfinite(report["metrics"]["fid"])
    cfg = compose_config(
        "classifier", ["epochs=1", "data.train_size=64", "data.val_size=32", "data.test_size=32"]
    )
    with open_dict(cfg):
        cfg.out = str(tmp_path / "c" / "classifier.pt")
    assert (classifier.run(cfg)["num_classes"]) == 10 and (tmp_path / "c" / "classifier.pt").is_file()
    from var_lightning.cli.app import make_app

    app = make_app(compose_config("app", [f"ckpt_path={tiny_var_ckpt}"]), tmp_path / "a")  # served by var-app
    assert app.sampler_kind == "fast" and len(app.class_choices()) == 10


# ---------------------------------------------------------------------------------------------- typos
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["model.optim.lrr=3"], "unknown config key model.optim.lrr: did you mean model.optim.lr?"),
        (["+model.optim.lrr=3"], "unknown config key model.optim.lrr: did you mean model.optim.lr?"),
        (["experiment=var_tiny", "model.depht=4"], "model.depht: did you mean model.transformer.depth?"),
        (["experiment=var_tiny", "+model.depht=4"], "model.depht: did you mean model.transformer.depth?"),
        (["trainer.max_step=2"], "trainer.max_step: did you mean trainer.max_steps?"),
        (["+data.image_sise=32"], "data.image_sise: did you mean data.image_size?"),
        (["data=imagenett"], "data=imagenett: no such option in group 'data' (did you mean data=imagenet?)"),
        (["+resum=auto"], "unknown config key resum: did you mean resume?"),
        (["experiment=var_tiny", "+model.train.progressive.untill=0.5"],
         "model.train.progressive.untill: did you mean model.train.progressive.until?"),
        (["+callbacks.model_checkpoint.save_lst=true"],
         "callbacks.model_checkpoint.save_lst: did you mean callbacks.model_checkpoint.save_last?"),
    ],
)  # fmt: skip
def test_var_train_typos_name_the_key_and_the_closest_valid_one(argv, message):
    from var_lightning.cli.command_line import precheck

    assert message in (precheck("train", argv) or "")


def test_typos_on_the_other_commands_and_in_experiment_files():
    from var_lightning.cli.command_line import precheck
    from var_lightning.cli.validate import validate_config
    from var_lightning.keys import ConfigKeyError

    assert "unknown config key top_kk: did you mean top_k?" in precheck("sample", ["ckpt_path=x", "top_kk=3"])
    assert "generation.cfgg: did you mean generation.cfg?" in precheck("eval", ["+generation.cfgg=1"])
    assert "extractor" not in (precheck("eval", ["extractor=tiny-random"]) or "")
    assert precheck("train", ["experiment=var_tiny", "model.tokenizer_ckpt=x"]) is None
    assert (
        precheck(
            "train",
            ["-m", "experiment=scaling_tiny", "model.transformer.depth=1,2", "model.tokenizer_ckpt=t"],
        )
        is None
    )
    # a misspelled key inside an experiment file (simulated on the composed config) is caught too
    cfg = compose_config("train", ["experiment=var_tiny"])
    OmegaConf.set_struct(cfg, False)
    cfg.model.optim.warmup_fration = 0.1
    with pytest.raises(
        ConfigKeyError, match=r"model.optim.warmup_fration: did you mean model.optim.warmup_fraction\?"
    ):
        validate_config(cfg, "train")
    # and by the module itself, for Python users
    from var_lightning.training.var_module import VARModule

    with pytest.raises(ConfigKeyError, match=r"model.optim.base_lrr: did you mean model.optim.base_lr\?"):
        VARModule(
            transformer=dict(depth=1, num_classes=2), tokenizer=asdict(tiny_vae_cfg()), optim={"base_lrr": 1}
        )
    with pytest.raises(ValueError, match=r"model.optim.schedule='linear'.*lin0"):
        VARModule(
            transformer=dict(depth=1, num_classes=2),
            tokenizer=asdict(tiny_vae_cfg()),
            optim={"schedule": "linear"},
        )


def test_the_console_script_prints_one_line_and_creates_no_run_directory(tmp_path):
    from tests.helpers import run_command

    code, out, err = run_command("train", ["model.optim.lrr=1"], cwd=str(tmp_path))
    assert (
        code == 2
        and err.strip()
        == "var-train: error: unknown config key model.optim.lrr: did you mean model.optim.lr?"
    )
    assert out == "" and list(tmp_path.iterdir()) == []  # no outputs/ for a run that never started


# ---------------------------------------------------------------------------------------------- one place per number
def _yaml(path: str) -> dict:
    cfg = OmegaConf.load(CONF / path)
    return OmegaConf.to_container(cfg, resolve=False)


def _defaults_of(schema) -> dict:
    if dataclasses.is_dataclass(schema):
        out = {}
        for f in dataclasses.fields(schema):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
                out[f.name] = asdict(value) if dataclasses.is_dataclass(value) else value
        return out
    return {
        n: p.default
        for n, p in inspect.signature(schema).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() <= b.keys() and all(_same(v, b[k]) for k, v in a.items())
    return a == b


def test_the_model_and_data_yaml_defaults_are_the_code_defaults():
    from var_lightning.data import ImageFolderDataModule, SyntheticDataModule
    from var_lightning.data.webdataset import WebDatasetDataModule
    from var_lightning.tokenizer.config import VQVAEConfig
    from var_lightning.tokenizer.losses import VQGANLoss
    from var_lightning.training.settings import SamplingDefaults, TokenizerOptim, VAROptim, VARTrain
    from var_lightning.transformer.config import PRESETS, VARConfig

    var_yaml, tok_yaml = _yaml("model/var.yaml"), _yaml("model/tokenizer.yaml")
    checks = [
        (var_yaml["optim"], VAROptim),
        (var_yaml["train"], VARTrain),
        (_yaml("sampling/published.yaml"), SamplingDefaults),
        (tok_yaml["tokenizer"], VQVAEConfig),
        (tok_yaml["loss"], VQGANLoss),
        (tok_yaml["optim"], TokenizerOptim),
    ]
    transformer = {
        k: v
        for k, v in var_yaml["transformer"].items()
        if v is not None and k not in ("preset", "num_classes")
    }
    checks.append((transformer, VARConfig))
    for data_file, cls in (("synthetic", SyntheticDataModule), ("imagenet", ImageFolderDataModule),
                           ("webdataset", WebDatasetDataModule)):  # fmt: skip
        checks.append(({k: v for k, v in _yaml(f"data/{data_file}.yaml").items()
                        if k not in ("_target_", "root", "train_shards", "val_shards")}, cls))  # fmt: skip
    for given, schema in checks:
        defaults = _defaults_of(schema)
        wrong = {
            k: (v, defaults.get(k, "<no such key>"))
            for k, v in given.items()
            if not _same(v, defaults.get(k))
        }
        assert not wrong, f"{getattr(schema, '__name__', schema)}: YAML vs code default {wrong}"
    # the published class default for the AdaLN gamma, which the d30 recipe uses; d16 is the d16 preset
    assert VARConfig().init_adaln_gamma == 1e-5 and var_yaml["transformer"]["preset"] == "d16"
    assert PRESETS["d16"] == {"depth": VARConfig().depth}


# The README recipes of FoundationVision/VAR (shared/spec/official-semantics.md, section c); what is not
# given is the published trainer's default (tblr 1e-4, twde = twd, alng from the recipe table).
PUBLISHED = {
    "var_d16_imagenet256": dict(depth=16, bs=768, ep=200, tblr=1e-4, alng=1e-3, wpe=0.1, twde=None, saln=False, pn=256),
    "var_d20_imagenet256": dict(depth=20, bs=768, ep=250, tblr=1e-4, alng=1e-3, wpe=0.1, twde=None, saln=False, pn=256),
    "var_d24_imagenet256": dict(depth=24, bs=768, ep=350, tblr=8e-5, alng=1e-4, wpe=0.01, twde=None, saln=False, pn=256),
    "var_d30_imagenet256": dict(depth=30, bs=1024, ep=350, tblr=8e-5, alng=1e-5, wpe=0.01, twde=0.08, saln=False, pn=256),
    "var_d36s_imagenet512": dict(depth=36, bs=768, ep=350, tblr=8e-5, alng=5e-6, wpe=0.01, twde=0.08, saln=True, pn=512),
}  # fmt: skip
RECIPE_KEYS = {
    "task_name", "tags", "data.batch_size", "model.transformer.preset", "model.transformer.init_adaln_gamma",
    "model.optim.base_lr", "model.optim.final_ratio", "model.optim.weight_decay_end", "trainer.max_epochs",
}  # fmt: skip


def _flat(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        if k == "defaults":
            continue
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return out


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_the_published_recipes_set_only_their_published_values(name, tmp_path):
    from var_lightning.transformer.config import PRESETS, VARConfig

    assert _flat(_yaml(f"experiment/{name}.yaml")) == RECIPE_KEYS  # everything else is in the shared base
    p = PUBLISHED[name]
    cfg = compose_train([f"experiment={name}", "model.tokenizer_ckpt=x"], tmp_path)
    t, o = cfg.model.transformer, cfg.model.optim
    shape = VARConfig(**{**PRESETS[t.preset], "num_classes": 1000})
    assert shape.depth == p["depth"] and shape.width == 64 * p["depth"] and shape.shared_aln == p["saln"]
    assert cfg.data.batch_size * cfg.trainer.devices * cfg.trainer.num_nodes == p["bs"]
    assert cfg.trainer.max_epochs == p["ep"] and o.base_lr == p["tblr"] and t.init_adaln_gamma == p["alng"]
    assert o.final_ratio == p["wpe"] and o.weight_decay_end == p["twde"] and o.weight_decay == 0.05
    assert o.schedule is None and o.warmup_fraction == 0.02 and cfg.trainer.gradient_clip_val == 2.0
    from var_lightning.training.settings import VAROptim

    assert VAROptim(**o).resolved_schedule(cfg.model.train.progressive.until) == "lin0"
    assert cfg.model.train.cond_drop_rate == 0.1 and cfg.model.train.label_smoothing == 0.0
    assert (cfg.model.sampling.cfg, cfg.model.sampling.top_p) == (1.5, 0.96)
    assert cfg.schedule.patch_nums[-1] * 16 == p["pn"] and cfg.data.image_size is None


@pytest.mark.process
def test_entry_points_find_their_configs_from_any_directory(tmp_path):
    """Console scripts resolve the packaged configs, not files relative to the working directory."""
    import shutil
    import subprocess
    import sys

    exe = shutil.which("var-train") or str(Path(sys.executable).parent / "var-train")
    out = subprocess.run(
        [exe, "experiment=var_tiny", "model.tokenizer_ckpt=x.ckpt", "--cfg", "job"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "task_name: var_tiny" in out.stdout


@pytest.mark.parametrize("sweep", ["scaling_cpu", "scaling_paper"])
def test_sweeps_compose_as_multiruns_over_depth(sweep, tmp_path):
    cfg = compose_config(
        "train", ["experiment=scaling_tiny", f"sweep={sweep}", "model.tokenizer_ckpt=x.ckpt"], hydra=True
    )
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    depths = [int(d) for d in str(cfg.hydra.sweeper.params["model.transformer.depth"]).split(",")]
    assert len(depths) >= 4 and depths == sorted(depths)


def test_a_command_is_composed_and_validated_once_and_each_multirun_job_validates_its_own(
    tmp_path, monkeypatch
):
    """Our check composes a valid command line once (Hydra composes the run) and validates it once; the task
    is not validated again. A multirun's jobs validate their own sweep values (a bad second value stops
    that job with the key named, after the first job ran)."""
    import hydra

    from var_lightning.cli import command_line, validate

    composed, validated, ran = [], [], []
    real_compose, real_validate = hydra.compose, validate.validate_config
    monkeypatch.setattr(
        hydra, "compose", lambda *a, **k: composed.append(k["overrides"]) or real_compose(*a, **k)
    )
    monkeypatch.setattr(
        command_line, "validate_config", lambda c, n, *a: validated.append(n) or real_validate(c, n, *a)
    )
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    command_line._compose_cached.cache_clear()

    def record(cfg):
        ran.append(int(cfg.top_k))

    record.__module__ = "var_lightning.cli.sample"  # Hydra finds conf/ next to the task's module
    task = command_line.checked_main("sample", "var-sample")(record)

    monkeypatch.setattr(
        sys, "argv", ["var-sample", "ckpt_path=x", "top_k=7", f"hydra.run.dir={tmp_path / 'one'}"]
    )
    task()
    assert ran == [7] and validated == ["sample"] and len(composed) == 1

    ran.clear(), validated.clear()
    argv = ["var-sample", "-m", "ckpt_path=x", "top_k=7,abc", f"hydra.sweep.dir={tmp_path / 'many'}"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as stop:
        task()
    assert stop.value.code == 2 and ran == [7] and validated == ["sample", "sample", "sample"]


@pytest.mark.parametrize(
    ("trainer", "want"),
    [("gpu", "high"), ("ddp", "high"), ("fsdp", "high"), ("fsdp_grad_op", "high"), ("fsdp_hybrid", "high"),
     ("slurm", "high"), ("cpu", None), ("ddp_cpu", None), ("fsdp_cpu", None)],
)  # fmt: skip
def test_gpu_trainer_configs_turn_on_tf32(tmp_path, trainer, want):
    cfg = compose_train(["experiment=tokenizer_tiny", f"trainer={trainer}"], tmp_path)
    assert cfg.trainer.get("matmul_precision") == want


def test_matmul_precision_is_applied_and_checked():
    from var_lightning.cli.instantiate import set_matmul_precision

    set_matmul_precision("high")
    assert torch.get_float32_matmul_precision() == "high"  # the conftest restores it after the test
    with pytest.raises(ValueError, match=r"trainer.matmul_precision='tf32': choose one of highest, high"):
        set_matmul_precision("tf32")
