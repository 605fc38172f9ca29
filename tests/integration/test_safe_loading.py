"""No load path executes pickled code: a checkpoint whose unpickling would write a marker file is refused by
every entry point (var-train resume / init_from / model.tokenizer_ckpt, var-sample, var-eval in all modes,
var-edit, var-convert, var-make-shards --tokenizer, pretrained=<dir>, vae_path=), the marker never
appears, and the message names the file and the opt-in. ``trust_pickle`` loads it, with a warning."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from tests.helpers import compose_config, tiny_vae, tiny_vae_cfg
from tests.integration.test_configs import compose_train
from tests.unit.test_webdataset import write_tree
from var_lightning.checkpoints.published import OfficialCheckpointError, export_official_vae
from var_lightning.checkpoints.reader import read_checkpoint
from var_lightning.checkpoints.safe_io import CheckpointError, UnsafeCheckpointError
from var_lightning.cli import convert, make_shards
from var_lightning.cli.train import train
from var_lightning.training.var_module import VARModule

REFUSED = (UnsafeCheckpointError, OfficialCheckpointError)


class Payload:
    """Unpickling this opens (creates) the marker file: what a malicious checkpoint would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture()
def evil(tmp_path) -> tuple[Path, Path]:
    """(a checkpoint-shaped file carrying the payload, the marker path it would create)."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.ckpt"
    torch.save(
        {
            "state_dict": {"var.x": torch.zeros(1)},
            "hyper_parameters": {"payload": Payload(marker)},
            "var_lightning": {"stage": "var"},
            "optimizer_states": [],
            "loops": {},
        },
        path,
    )
    yield path, marker
    assert not marker.exists(), "the payload ran"


def refused(fn, path: Path) -> str:
    with pytest.raises(REFUSED) as err:
        fn()
    msg = str(err.value)
    assert str(path) in msg and "trust_pickle" in msg.replace("trust-pickle", "trust_pickle"), msg
    return msg


TINY_TOK = [
    "experiment=tokenizer_tiny",
    "data.train_size=32",
    "data.val_size=16",
    "data.test_size=16",
    "logger=none",
]


@pytest.mark.parametrize("key", ["resume", "init_from"])
def test_var_train_resume_and_init_from(evil, tmp_path, key):
    path, _ = evil
    cfg = compose_train([*TINY_TOK, f"{key}={path}"], tmp_path / "run")
    refused(lambda: train(cfg), path)


def test_var_train_tokenizer_ckpt(evil, tmp_path):
    path, _ = evil
    cfg = compose_train(
        ["experiment=var_tiny", f"model.tokenizer_ckpt={path}", "logger=none"], tmp_path / "run"
    )
    refused(lambda: train(cfg), path)


def test_var_train_resume_auto_refuses_a_planted_checkpoint(evil, tmp_path):
    path, _ = evil
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(path, run_dir / "checkpoints" / "last.ckpt")
    cfg = compose_train([*TINY_TOK, "resume=auto"], run_dir)
    refused(lambda: train(cfg), run_dir / "checkpoints" / "last.ckpt")


def test_var_sample_and_var_edit(evil, tmp_path):
    from var_lightning.cli import edit, sample

    path, _ = evil
    cfg = compose_config("sample", [f"ckpt_path={path}", "device=cpu"])
    refused(lambda: sample.run(cfg, tmp_path / "s"), path)
    cfg = compose_config(
        "edit", [f"ckpt_path={path}", "device=cpu", "image=synthetic:0:0", "box=[0.2,0.2,0.8,0.8]"]
    )
    refused(lambda: edit.run(cfg, tmp_path / "e"), path)


@pytest.mark.parametrize("mode", ["loss", "reconstruction", "generation"])
def test_var_eval_every_mode(evil, tmp_path, mode):
    from var_lightning.cli import evaluate

    path, _ = evil
    extra = ["extractor=tiny-random", "reconstruction.lpips=null", "generation.num_samples=4"]
    cfg = compose_config(
        "eval",
        [f"mode={mode}", f"ckpt_path={path}", "device=cpu", "data=synthetic", "data.val_size=8", *extra],
    )
    with open_dict(cfg):
        cfg.cache_dir = str(tmp_path / "cache")
    refused(lambda: evaluate.run(cfg, tmp_path / "out"), path)


def test_var_convert_both_directions(evil, tmp_path, capsys):
    path, _ = evil
    assert convert.main(["to-official", str(path), "--out-dir", str(tmp_path / "o")]) == 2
    assert (
        convert.main(
            ["to-lightning", "--var", str(path), "--vae", str(path), "--out", str(tmp_path / "x.ckpt")]
        )
        == 2
    )
    assert convert.main(["to-lightning", "--vae", str(path), "--out", str(tmp_path / "y.ckpt")]) == 2
    err = capsys.readouterr().err
    assert err.count("refused to load") == 3 and str(path) in err and "--trust-pickle" not in err


def test_var_make_shards_tokenizer(evil, tmp_path):
    path, _ = evil
    tree = write_tree(tmp_path / "tree" / "train")
    args = make_shards.parse_args(
        [str(tree), str(tmp_path / "out"), "--workers", "0", "--no-progress", "--tokenizer", str(path)]
    )
    refused(lambda: make_shards.make_shards(args), path)


def test_released_file_paths(evil, tmp_path):
    from var_lightning.checkpoints.load import load_models

    path, _ = evil
    folder = tmp_path / "released"
    folder.mkdir()
    shutil.copy(path, folder / "var_d16.pth")
    torch.save(export_official_vae(tiny_vae()), folder / "vae_ch160v4096z32.pth")
    refused(lambda: load_models(pretrained=folder), folder / "var_d16.pth")
    # a good transformer with a malicious tokenizer
    torch.manual_seed(0)
    module = VARModule(
        transformer=dict(depth=1, width=32, num_heads=1, num_classes=3), tokenizer=asdict(tiny_vae_cfg())
    )
    from var_lightning.checkpoints.published import export_official_var

    torch.save(export_official_var(module.var), folder / "var_d16.pth")
    refused(lambda: load_models(folder / "var_d16.pth", vae_path=path), path)


def test_the_console_script_exits_with_the_message(evil, tmp_path):
    from tests.helpers import run_command

    path, _ = evil
    code, _, err = run_command("sample", [f"ckpt_path={path}", "device=cpu", f"hydra.run.dir={tmp_path / 'r'}"],
                               cwd=str(tmp_path))  # fmt: skip
    assert code != 0 and "refused to load" in err and str(path) in err


def test_trust_pickle_loads_it_with_a_warning_naming_the_file(evil):
    path, marker = evil
    with pytest.warns(UserWarning, match=f"trust_pickle=true: loading {path}"):
        ckpt = read_checkpoint(path, trust_pickle=True)
    assert "payload" in ckpt["hyper_parameters"] and marker.exists()
    marker.unlink()  # the fixture checks that nothing else ran it


def test_the_refusal_does_not_pass_on_torchs_advice_to_allowlist_the_global(evil):
    path, _ = evil
    msg = refused(lambda: read_checkpoint(path), path)
    assert (
        "it references the Python object builtins.open" in msg
        or "it references the Python object io.open" in msg
    )
    assert "add_safe_globals" not in msg and "allowlist" not in msg


def test_a_text_file_given_as_a_checkpoint_is_named_as_such(tmp_path):
    from tests.helpers import run_command

    text = tmp_path / "notes.ckpt"
    text.write_text("epoch 3 looked good\n")
    code, _, err = run_command("sample", [f"ckpt_path={text}", "device=cpu", f"hydra.run.dir={tmp_path / 'r'}"],
                               cwd=str(tmp_path))  # fmt: skip
    assert code == 2, err[-2000:]
    assert (
        f"ckpt_path={text}: not a checkpoint: it is a text file (it starts with 'epoch 3 looked good" in err
    )
    assert "101" not in err
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="not a checkpoint: it is empty"):
        read_checkpoint(empty)


def test_a_safetensors_weight_stored_as_integers_is_refused_by_name(tmp_path):
    from var_lightning.checkpoints.load import load_models
    from var_lightning.checkpoints.safe_io import CheckpointError, save_checkpoint

    torch.manual_seed(0)
    module = VARModule(
        transformer=dict(depth=1, width=32, num_heads=1, num_classes=10, drop_path_rate=0.0),
        tokenizer=asdict(tiny_vae_cfg(patch_nums=(1, 2, 4), ch=16, norm_groups=8)),
    )
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
            "var_lightning": {"stage": "var"}}  # fmt: skip
    good = save_checkpoint(ckpt, tmp_path / "good.safetensors")
    assert load_models(good).var.head.weight.dtype == torch.float32
    sd = dict(ckpt["state_dict"])
    sd["var.head.weight"] = (sd["var.head.weight"] * 1000).to(torch.int64)
    bad = save_checkpoint({**ckpt, "state_dict": sd}, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match=r"head.weight is torch.int64 but the model's is torch.float32"):
        load_models(bad)
    from var_lightning.checkpoints.published import export_official_var, load_official_var

    released = export_official_var(module.var)
    released["head.weight"] = released["head.weight"].to(torch.int32)
    with pytest.raises(CheckpointError, match=r"head.weight is torch.int32"):
        load_official_var(released)


# ------------------------------------------------------------------------------------------ DCP directories
def write_dcp(path: Path, state_dict: dict, optimizer: dict | None = None, meta: dict | None = None) -> Path:
    """A sharded checkpoint directory as ``trainer=fsdp*`` writes it (``.metadata``, ``__0_0.distcp``,
    ``meta.pt``), written in one process; non-tensor values become DCP's pickled "bytes" entries."""
    import warnings

    import torch.distributed.checkpoint as dcp

    state = {"state_dict": state_dict, **({"optimizer_0": optimizer} if optimizer is not None else {})}
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process"
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(path))
    torch.save(
        meta or {"hyper_parameters": {}, "var_lightning": {"stage": "var"}, "loops": {}}, path / "meta.pt"
    )
    return path


@pytest.fixture()
def evil_dir(tmp_path) -> tuple[Path, Path]:
    """A sharded checkpoint directory whose index and meta.pt are clean and whose shard file holds a
    pickled bytes entry that would create the marker (torch's DCP reader unpickles those fully)."""
    marker = tmp_path / "PWNED"
    path = write_dcp(tmp_path / "last.ckpt", {"var.x": torch.zeros(2), "var.extra": Payload(marker)})
    yield path, marker
    assert not marker.exists(), "the payload in the shard file ran"


def test_a_clean_sharded_directory_with_plain_bytes_entries_reads_without_trust(tmp_path):
    """What our sharded checkpoints store as bytes entries (AdamW's param groups: numbers, tuples, bools)
    passes the check, and the weights come back."""
    from var_lightning.checkpoints.sharded import check_byte_entries, read_metadata

    groups = [{"lr": 1e-4, "betas": (0.9, 0.95), "weight_decay": 0.05, "foreach": None, "params": [0, 1]}]
    path = write_dcp(tmp_path / "ok.ckpt", {"var.x": torch.arange(3.0)}, {"param_groups": groups, "step": 7})
    metadata = read_metadata(path)
    kinds = {type(m).__name__ for m in metadata.state_dict_metadata.values()}
    assert "BytesStorageMetadata" in kinds  # the check has something to look at
    check_byte_entries(path, metadata)
    assert torch.equal(read_checkpoint(path)["state_dict"]["var.x"], torch.arange(3.0))


def test_a_pickled_bytes_entry_in_a_shard_file_is_refused_with_the_file_and_entry_named(evil_dir):
    path, marker = evil_dir
    msg = refused(lambda: read_checkpoint(path), path)
    assert "shard file __0_0.distcp, entry state_dict.var.extra" in msg and ".open" in msg
    assert "add_safe_globals" not in msg and "weights_only=False" not in msg


def test_every_command_refuses_the_sharded_directory(evil_dir, tmp_path, capsys):
    """The nine ways a user hands one over: var-sample, var-edit, var-eval, var-app, var-convert
    consolidate / to-hub, init_from=, model.tokenizer_ckpt=, resume (auto and by path)."""
    from var_lightning.cli import app, edit, evaluate, sample

    path, _ = evil_dir
    refused(
        lambda: sample.run(compose_config("sample", [f"ckpt_path={path}", "device=cpu"]), tmp_path / "s"),
        path,
    )
    cfg = compose_config(
        "edit", [f"ckpt_path={path}", "device=cpu", "image=synthetic:0:0", "box=[0.2,0.2,0.8,0.8]"]
    )
    refused(lambda: edit.run(cfg, tmp_path / "e"), path)
    cfg = compose_config(
        "eval", ["mode=loss", f"ckpt_path={path}", "device=cpu", "data=synthetic", "data.val_size=8"]
    )
    refused(lambda: evaluate.run(cfg, tmp_path / "out"), path)
    refused(
        lambda: app.make_app(compose_config("app", [f"ckpt_path={path}", "device=cpu"]), tmp_path / "a"), path
    )
    for key in ("init_from", "resume"):
        refused(lambda key=key: train(compose_train([*TINY_TOK, f"{key}={path}"], tmp_path / key)), path)
    cfg = compose_train(
        ["experiment=var_tiny", f"model.tokenizer_ckpt={path}", "logger=none"], tmp_path / "tok"
    )
    refused(lambda: train(cfg), path)
    run_dir = tmp_path / "auto"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(path, run_dir / "checkpoints" / "last.ckpt")
    refused(
        lambda: train(compose_train([*TINY_TOK, "resume=auto"], run_dir)),
        run_dir / "checkpoints" / "last.ckpt",
    )
    assert convert.main(["consolidate", str(path), "--out", str(tmp_path / "c.ckpt")]) == 2
    assert convert.main(["to-hub", str(path), "--out-dir", str(tmp_path / "hub")]) == 2
    err = capsys.readouterr().err
    assert err.count("refused to load") == 2 and "entry state_dict.var.extra" in err


def test_trust_pickle_reads_the_sharded_directory(evil_dir):
    path, marker = evil_dir
    ckpt = read_checkpoint(path, trust_pickle=True)
    assert torch.equal(ckpt["state_dict"]["var.x"], torch.zeros(2)) and marker.exists()
    marker.unlink()  # the fixture checks that nothing else ran it


def test_loads_under_the_guard_never_unpickle_code_whatever_the_caller_asks(evil_dir, tmp_path):
    """What the sharded resume relies on (Lightning's DCP read asks torch for weights_only=False)."""
    import pickle

    from var_lightning.checkpoints.safe_io import weights_only_loads

    _, marker = evil_dir
    torch.save({"x": Payload(marker)}, tmp_path / "p.pt")
    with weights_only_loads(), pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "p.pt", weights_only=False)
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in __import__("os").environ


def test_a_bit_flipped_checkpoint_is_named_by_every_loader_not_sampled(tmp_path):
    """var-sample (any loader) on a .ckpt damaged inside a tensor record: the CRC check names the record
    and the file; before, only resume checked and sampling ran on the damaged weights."""
    from tests.integration.test_lose_no_work import damage_a_tensor_record
    from var_lightning.cli import sample

    module = VARModule(
        transformer=dict(depth=1, width=32, num_heads=1, num_classes=3), tokenizer=asdict(tiny_vae_cfg())
    )
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "var_lightning": {"stage": "var"}}, good)  # fmt: skip
    bad = tmp_path / "bad.ckpt"
    record = damage_a_tensor_record(good, bad)
    with pytest.raises(CheckpointError, match=f"bad.ckpt: record {record} fails its CRC check"):
        read_checkpoint(bad)
    with pytest.raises(CheckpointError, match="fails its CRC check.*copy it again"):
        sample.run(compose_config("sample", [f"ckpt_path={bad}", "device=cpu"]), tmp_path / "s")
    assert not (tmp_path / "s" / "samples").exists()
    read_checkpoint(good)  # the intact file reads


def test_npz_files_with_pickled_object_arrays_are_refused(tmp_path):
    """Sample packs and reference statistics (.npz) hold numbers; an object array (a pickle) is refused by
    name wherever one is read (reference=, generation.samples=, the labels), and nothing runs."""
    import numpy as np

    from var_lightning.evaluation.npz import NpzImages, load_reference, read_labels

    marker = tmp_path / "PWNED"
    ref = tmp_path / "ref.npz"
    np.savez(
        ref, mu=np.array([Payload(marker)], dtype=object), sigma=np.array([Payload(marker)], dtype=object)
    )
    pack = tmp_path / "pack.npz"
    np.savez(
        pack, arr_0=np.array([Payload(marker)], dtype=object), arr_1=np.array([Payload(marker)], dtype=object)
    )
    with pytest.raises(ValueError, match=r"ref.npz: refused: it holds an array of Python objects"):
        load_reference(ref)
    with pytest.raises(ValueError, match=r"pack.npz: refused: it holds an array of Python objects"):
        read_labels(pack)
    with pytest.raises(ValueError, match=r"arr_0 must be uint8"):
        NpzImages(pack)
    assert not marker.exists()
