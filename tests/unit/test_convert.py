"""`var-convert`: released layout -> Lightning checkpoint -> released layout, losslessly."""

from __future__ import annotations

import torch

from tests.helpers import tiny_vae, tiny_var
from var_lightning.checkpoints.load import load_models, load_tokenizer
from var_lightning.checkpoints.published import export_official_vae, export_official_var
from var_lightning.checkpoints.reader import read_checkpoint
from var_lightning.cli.convert import main
from var_lightning.transformer.sampling import sample


def _released_files(tmp_path):
    vae, var = tiny_vae().eval(), tiny_var().eval()
    torch.save(export_official_vae(vae), tmp_path / "vae.pth")
    torch.save(export_official_var(var), tmp_path / "var.pth")
    return vae, var


def test_round_trip_is_lossless_and_the_checkpoint_samples(tmp_path):
    vae, var = _released_files(tmp_path)
    out = tmp_path / "model.ckpt"
    assert (
        main(
            [
                "to-lightning",
                "--vae",
                str(tmp_path / "vae.pth"),
                "--var",
                str(tmp_path / "var.pth"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    var2, vae2, info = load_models(out)
    x = torch.randn(2, sum(p * p for p in var.patch_nums) - 1, var.Cvae)
    label = torch.tensor([0, 4])
    torch.testing.assert_close(var2(label, x), var(label, x), rtol=0, atol=0)
    img = torch.rand(1, 3, 8, 8) * 2 - 1
    assert all(torch.equal(a, b) for a, b in zip(vae2.img_to_idx(img), vae.img_to_idx(img), strict=True))
    assert sample(var2, vae2, 2, labels=[1, 2], cfg=1.0, top_k=5).images.shape == (2, 3, 8, 8)
    # the released protocol (cfg 1.5, top-p 0.96), top-k 900/4096 of this V = 64
    assert info.sampling == {"cfg": 1.5, "top_k": 14, "top_p": 0.96, "more_smooth": False}

    back = tmp_path / "back"
    assert main(["to-official", str(out), "--out-dir", str(back)]) == 0
    for name, ref in (("vae.pth", tmp_path / "vae.pth"), ("var_d2.pth", tmp_path / "var.pth")):
        a, b = torch.load(back / name), torch.load(ref)
        assert list(a) == list(b)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_tokenizer_only_conversion(tmp_path):
    vae, _ = _released_files(tmp_path)
    out = tmp_path / "vae.ckpt"
    assert (
        main(
            ["to-lightning", "--vae", str(tmp_path / "vae.pth"), "--out", str(out), "--patch-nums", "1,2,3,4"]
        )
        == 0
    )
    assert read_checkpoint(out)["var_lightning"]["stage"] == "tokenizer"
    loaded = load_tokenizer(out, patch_nums=(1, 2, 3, 4))
    img = torch.rand(2, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(
        loaded.img_to_reconstruction(img), vae.eval().img_to_reconstruction(img), rtol=0, atol=0
    )


def test_wrong_inputs_are_reported(tmp_path, capsys):
    _released_files(tmp_path)
    assert main(["to-lightning", "--vae", str(tmp_path / "var.pth"), "--out", str(tmp_path / "x.ckpt")]) == 2
    assert "error" in capsys.readouterr().err
    assert main(["to-official", str(tmp_path / "vae.pth"), "--out-dir", str(tmp_path / "o")]) == 2
    assert "not a var_lightning checkpoint" in capsys.readouterr().err


def test_safetensors_in_both_directions_load_everywhere(tmp_path):
    vae, var = _released_files(tmp_path)
    st = tmp_path / "model.safetensors"
    args = [
        "to-lightning",
        "--vae",
        str(tmp_path / "vae.pth"),
        "--var",
        str(tmp_path / "var.pth"),
        "--out",
        str(st),
    ]
    assert main(args) == 0
    from safetensors import safe_open

    with safe_open(str(st), framework="pt") as f:  # a real safetensors file: tensors + JSON metadata
        assert "var_lightning" in f.metadata() and "var.head.weight" in f.keys()  # noqa: SIM118
    var2, vae2, info = load_models(st)
    assert info.kind == "var_lightning" and info.stage == "var"
    x = torch.randn(2, var.L - 1, var.Cvae)
    torch.testing.assert_close(var2(torch.tensor([0, 3]), x), var(torch.tensor([0, 3]), x), rtol=0, atol=0)
    assert all(torch.equal(v, vae2.state_dict()[k]) for k, v in vae.state_dict().items())
    # back to the published layout as safetensors: loadable by our loader and as plain tensors
    out = tmp_path / "released"
    assert main(["to-official", str(st), "--out-dir", str(out), "--format", "safetensors"]) == 0
    from safetensors.torch import load_file

    assert set(load_file(out / "var_d2.safetensors")) == set(export_official_var(var))
    var3, vae3, info3 = load_models(out / "var_d2.safetensors", vae_path=out / "vae.safetensors")
    assert info3.kind == "released"
    torch.testing.assert_close(var3(torch.tensor([1, 2]), x), var(torch.tensor([1, 2]), x), rtol=0, atol=0)
    # the default format follows the suffix; --format overrides
    assert main(["to-lightning", "--vae", str(tmp_path / "vae.pth"), "--out", str(tmp_path / "t.ckpt"),
                 "--patch-nums", "1,2,3,4", "--format", "safetensors"]) == 0  # fmt: skip
    assert read_checkpoint(tmp_path / "t.ckpt") != {} and (tmp_path / "t.ckpt").read_bytes()[8:9] == b"{"
