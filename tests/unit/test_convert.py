"""`var-convert`: released layout -> Lightning checkpoint -> released layout, losslessly."""

from __future__ import annotations

import torch

from tests.helpers import tiny_vae, tiny_var
from var_lightning.checkpoints import load_tokenizer, load_var_module, read_checkpoint
from var_lightning.cli.convert import main
from var_lightning.interop.official import export_official_vae, export_official_var


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
    module = load_var_module(out)
    x = torch.randn(2, sum(p * p for p in var.patch_nums) - 1, var.Cvae)
    label = torch.tensor([0, 4])
    torch.testing.assert_close(module.var(label, x), var(label, x), rtol=0, atol=0)
    img = torch.rand(1, 3, 8, 8) * 2 - 1
    assert all(
        torch.equal(a, b) for a, b in zip(module.vae.img_to_idx(img), vae.img_to_idx(img), strict=True)
    )
    assert module.generate([1, 2], cfg=1.0, top_k=5).shape == (2, 3, 8, 8)

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
