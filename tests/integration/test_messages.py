"""Messages that point the right way: each names the problem, the key the user typed, and a fix that works
(where the fix is a command line, the test runs it)."""

from __future__ import annotations

import pytest

from tests.integration.test_run_behaviour import cfg_for
from var_lightning.cli.command_line import accept_target_arguments, precheck


def test_the_documented_schedule_form_works_and_unknown_numbers_list_the_options():
    assert accept_target_arguments("train", ["schedule=256"]) == ["schedule=s256"]
    assert precheck("train", ["schedule=256"]) is None and precheck("train", ["schedule=512"]) is None
    msg = precheck("train", ["schedule=384"])
    assert "schedule=384: no such option in group 'schedule'; options: cpu_micro, cpu_tiny, s256, s512" in msg
    assert "schedule.patch_nums=" in msg


def test_lightning_trainer_arguments_are_accepted_and_no_suggestion_is_invalid():
    assert precheck("train", ["trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0"]) is None
    assert accept_target_arguments("train", ["trainer.limit_val_batches=0"]) == [
        "++trainer.limit_val_batches=0"
    ]
    msg = precheck("train", ["trainer.limit_val_batchs=1"])
    assert msg.startswith("unknown config key trainer.limit_val_batchs") and "trainer.trainer." not in msg
    assert "did you mean trainer.max_steps?" in precheck("train", ["trainer.max_step=2"])


def test_an_image_size_that_does_not_fit_names_the_schedule_that_would_and_that_schedule_trains(tmp_path):
    from var_lightning.cli.train import train

    with pytest.raises(ValueError) as err:
        train(cfg_for(tmp_path / "a", "trainer.max_steps=1", "data.image_size=16"))
    msg = str(err.value)
    assert "data.image_size=16 does not fit the model" in msg and "schedule.patch_nums=[1,2,4]" in msg
    fix = msg.split("end the schedule at 16/2=8: ", 1)[1].split(" ", 1)[0]
    assert fix == "schedule.patch_nums=[1,2,4,8]"
    train(cfg_for(tmp_path / "b", "trainer.max_steps=1", "data.image_size=16", fix))
    assert (tmp_path / "b" / "checkpoints" / "last.ckpt").is_file()


def test_data_root_without_an_image_folder_data_option_suggests_one():
    msg = precheck("train", ["data.root=/datasets/photos"])
    assert "data.root is not a key of the default data option; it is a key of data=imagenet" in msg
    assert "data=imagenet data.root=" in msg
    assert precheck("train", ["data=imagenet", "data.root=/datasets/photos"]) is None


def test_the_folder_layout_hint_shows_the_split_level(tmp_path):
    from var_lightning.data.datamodules import ImageFolderDataModule

    (tmp_path / "cat").mkdir()  # class folders straight under data.root: no train/
    with pytest.raises(FileNotFoundError) as err:
        ImageFolderDataModule(str(tmp_path), image_size=8).class_names  # noqa: B018
    msg = str(err.value)
    assert "<data.root>/train/<class_name>/<image>.jpg and <data.root>/val/<class_name>/<image>.jpg" in msg
    assert "<root>/<class_name>" not in msg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "model.transformer.depth=abc",
            "model.transformer.depth='abc' must be an integer (key model.transformer.depth)",
        ),
        ("model.transformer.depth=2.5", "model.transformer.depth=2.5 must be an integer"),
        ("model.optim.base_lr=fast", "model.optim.base_lr='fast' must be a number (key model.optim.base_lr)"),
        ("trainer.max_epochs=abc", "trainer.max_epochs='abc' must be an integer (key trainer.max_epochs)"),
        ("trainer.accumulate_grad_batches=1.5", "trainer.accumulate_grad_batches=1.5 must be an integer"),
        ("trainer.limit_val_batches=all", "trainer.limit_val_batches='all' must be a number"),
    ],
)
def test_a_value_of_the_wrong_type_names_its_key(override, message):
    assert message in (precheck("train", ["experiment=var_tiny", override]) or "")


def test_var_train_prints_the_key_of_a_wrong_value_at_the_command_line(tmp_path):
    from tests.helpers import run_command

    code, _, err = run_command("train", ["experiment=tokenizer_tiny", "model.tokenizer.ch=abc",
                                         f"hydra.run.dir={tmp_path / 'r'}"], cwd=str(tmp_path))  # fmt: skip
    assert code == 2 and "model.tokenizer.ch='abc' must be an integer" in err, err[-2000:]
    assert "full_key: model" not in err and not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("module", "args", "message"),
    [
        ("sample", ["hydra.run.dir=/proc/x/run"], "hydra.run.dir=/proc/x/run: cannot create the run directory ("),
        ("sample", ["seed=1180591620717411303424"], "seed=1180591620717411303424 is out of range: a seed is an "
                                                    "integer in 0..4294967295"),
        ("app", ["port=80000"], "port=80000 is out of range: use 1..65535"),
        ("app", ["host=0.0.0.0"], "host=0.0.0.0 serves every machine that can reach this one, and the app has no "
                                  "login"),
    ],
)  # fmt: skip
def test_bad_run_options_are_one_line_errors(tmp_path, module, args, message, monkeypatch):
    from tests.helpers import run_command

    monkeypatch.delenv("VAR_APP_AUTH", raising=False)
    run_dir = [] if any(a.startswith("hydra.run.dir") for a in args) else [f"hydra.run.dir={tmp_path / 'r'}"]
    code, _, err = run_command(module, [*args, *run_dir], cwd=str(tmp_path))
    assert code == 2 and message in err, err[-2000:]
    assert "Traceback" not in err


@pytest.mark.process
def test_make_app_before_make_demo_says_what_to_run(tmp_path):
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parents[2]
    # APP_STAMP= skips the extras' install: only the target's own check runs
    out = subprocess.run(["make", "-s", "app", "APP_STAMP=", f"DEMO_DIR={tmp_path / 'demo'}"], cwd=root,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode != 0 and "does not exist" in out.stderr and "run make demo first" in out.stderr
    assert "make app APP_CKPT=" in out.stderr and "Traceback" not in out.stderr


def test_a_typo_in_a_blocks_name_gets_our_did_you_mean_not_hydras_plus_advice():
    """``model.optimm.lr=3``: Hydra says "To append to your config use +model.optimm.lr=3"; the typo is one
    level up, and the message names it and the block meant."""
    msg = precheck("train", ["model.optimm.lr=3"])
    assert msg == "unknown config key model.optimm: did you mean model.optim?"
    assert precheck("train", ["experiment=var_tiny", "model.transformr.depth=3"]) == (
        "unknown config key model.transformr: did you mean model.transformer?"
    )


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        ("train", ["experiment=var_tiny"], "model.tokenizer_ckpt is required and not set: the VAR (and AR) stage trains on "
                                           "a frozen tokenizer: give a tokenizer checkpoint, e.g. model.tokenizer_ckpt="),
        ("edit", ["pretrained=var_d16"], "image is required and not set: give the image to edit: image=photo.jpg"),
        ("eval", ["ckpt_path=x.ckpt", "extractor=classifier"], "extractor.path is required and not set: give the "
                                                               "classifier var-classifier wrote"),
    ],
)  # fmt: skip
def test_a_required_value_left_unset_is_named_with_what_to_give(command, args, message):
    """Not omegaconf's MissingMandatoryValue traceback from deep inside the run."""
    assert message in (precheck(command, args) or "")
    assert precheck("train", ["experiment=var_tiny", "model.tokenizer_ckpt=tok.ckpt"]) is None


def test_another_commands_settings_are_named_as_such():
    """trainer.limit_val_batches=0 on var-eval was answered with a look-alike key; the group belongs to
    another command, and the message says which, with this command's keys."""
    msg = precheck("eval", ["mode=loss", "ckpt_path=x", "trainer.limit_val_batches=0"])
    assert msg.startswith("unknown config key trainer.limit_val_batches: this command has no trainer settings "
                          "(trainer.* configures var-train); its keys: ")  # fmt: skip
    assert "ckpt_path" in msg and "val_batch_size" not in msg and "pretrained?" not in msg
    msg = precheck("sample", ["ckpt_path=x", "extractor.name=x"])
    assert "(extractor.* configures var-eval)" in msg
