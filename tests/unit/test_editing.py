"""Zero-shot editing with random tiny models: exact teacher forcing, the two limits (all keep, all
generate), masks and boxes, guidance context, file handling and bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import TINY_PN, tiny_vae, tiny_var
from var_lightning.inference.edit_images import edit_panel, load_image, load_mask, synthetic_image
from var_lightning.transformer.editing import (
    EditRequest,
    box_region,
    edit,
    edit_label,
    edit_region,
    keep_mask_for,
    parse_box,
    to_token_grid,
)
from var_lightning.transformer.sampling import EditSpec, sample, scale_masks

PN6 = (1, 2, 3, 4, 6, 8)  # a 16 px model: enough room for a region far from the edit


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return tiny_vae().eval(), tiny_var().eval()


@pytest.fixture(scope="module")
def image():
    return torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1


def kept_positions(mask_B1hw: torch.Tensor, rows: int) -> torch.Tensor:
    return mask_B1hw.reshape(mask_B1hw.shape[0], -1).bool().expand(rows, -1)


# ---------------------------------------------------------------- masks and boxes
def test_box_uses_python_round_half_even_at_the_token_grid():
    # grid 10: 0.25*10 = 2.5 -> 2, 0.35*10 = 3.5 -> 4, 0.75*10 = 7.5 -> 8, 0.85*10 = 8.5 -> 8
    region = box_region((0.25, 0.35, 0.75, 0.85), grid=10, image_size=160)
    expect = torch.zeros(10, 10)
    expect[4:8, 2:8] = 1
    assert torch.equal(region, expect)
    # the same box in pixels of the 160 px image gives the same region
    assert torch.equal(box_region((40, 56, 120, 136), grid=10, image_size=160), expect)


def test_box_is_fractions_only_when_every_value_is_at_most_one():
    assert parse_box((0, 0, 1, 1), 32) == (0.0, 0.0, 1.0, 1.0)
    assert parse_box((0, 0, 16, 8), 32) == (0.0, 0.0, 0.5, 0.25)
    for bad in [(0.5, 0.1, 0.2, 0.9), (0, 0, 40, 8), (0.1, 0.2, 0.3), (-0.1, 0, 0.5, 0.5)]:
        with pytest.raises(ValueError, match=r"key box"):
            parse_box(bad, 32)


def test_scale_masks_follow_the_published_rule():
    keep = 1 - box_region((0.5, 0.5, 1.0, 1.0), grid=4, image_size=8)
    masks = scale_masks(keep, TINY_PN)
    assert [tuple(m.shape) for m in masks] == [(1, 1, p, p) for p in TINY_PN]
    assert torch.equal(masks[-1][0, 0], keep)  # the last scale is the mask itself
    assert masks[0].item() == 1  # the 1x1 scale is always kept
    # bilinear (align_corners=False) then > 0.5. 3x3 cell centres sit at 0.17, 1.5, 2.83 on the 4x4 grid:
    # the centre cell averages 3 kept and 1 generated token (0.75: kept), the edge cells next to the box
    # half and half (0.5: generated, the threshold is strict)
    expect3 = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]]).float()
    assert torch.equal(masks[2][0, 0], expect3)
    # without keep_first_scale the 1x1 scale follows the mask like any other scale
    none = scale_masks(torch.zeros(4, 4), TINY_PN, keep_first_scale=False)
    assert all(m.sum() == 0 for m in none)
    assert scale_masks(torch.zeros(4, 4), TINY_PN)[0].item() == 1


def test_pixel_masks_reduce_to_the_token_grid_by_majority():
    px = torch.zeros(8, 8)
    px[0:2, 0:2] = 1  # a full token (2x2 pixels) at grid 4
    px[4, 4] = 1  # a quarter of a token: not enough
    px[6:8, 6] = 1  # half a token: not more than half
    grid = to_token_grid(px, 4)
    expect = torch.zeros(4, 4)
    expect[0, 0] = 1
    assert torch.equal(grid, expect)


def test_modes_map_the_region_to_a_keep_mask():
    region = box_region((0.25, 0.25, 0.75, 0.75), grid=4, image_size=8)
    assert torch.equal(keep_mask_for(region, "inpaint"), 1 - region)
    assert torch.equal(keep_mask_for(region, "class-edit"), 1 - region)
    assert torch.equal(keep_mask_for(region, "outpaint"), region)
    for mode in ("inpaint", "outpaint", "class-edit"):
        with pytest.raises(ValueError, match="region is empty"):
            keep_mask_for(torch.zeros(4, 4), mode)
    with pytest.raises(ValueError, match="key mode"):
        keep_mask_for(region, "paint")


def test_labels_per_mode():
    assert edit_label("inpaint", None, 5) is None and edit_label("outpaint", None, 5) is None
    assert edit_label("class-edit", 4, 5) == 4
    with pytest.raises(ValueError, match=r"needs the class.*key class"):
        edit_label("class-edit", None, 5)
    with pytest.raises(ValueError, match=r"out of range.*0\.\.4.*key class"):
        edit_label("class-edit", 5, 5)
    with pytest.raises(ValueError, match="only with mode=class-edit"):
        edit_label("inpaint", 2, 5)


# ---------------------------------------------------------------- exactness with random models
@pytest.mark.parametrize(
    "mode,label,more_smooth", [("inpaint", None, False), ("outpaint", None, True), ("class-edit", 3, True)]
)
def test_kept_tokens_equal_the_image_tokens_at_every_scale(models, image, mode, label, more_smooth):
    vae, var = models
    box = (0.25, 0.0, 0.75, 0.75)
    out = edit_region(
        var,
        vae,
        EditRequest.of(var, vae, image, box, mode=mode, label=label),
        cfg=2.0,
        top_k=20,
        top_p=0.9,
        seed=3,
        num_variations=3,
        more_smooth=more_smooth,
    )
    image_tokens = vae.img_to_idx(image)
    n_generated = 0
    for si, (tok, gt, m) in enumerate(zip(out.tokens, image_tokens, out.scale_masks, strict=True)):
        keep = kept_positions(m, 3)
        assert torch.equal(tok[keep], gt.expand(3, -1)[keep]), f"scale {si}"
        n_generated += int((~keep).sum())
    assert n_generated > 0  # the test would be empty if everything were kept
    assert out.images.shape == (3, 3, 8, 8) and out.images.min() >= 0 and out.images.max() <= 1
    expected_label = var.num_classes if label is None else label
    assert out.labels.tolist() == [expected_label] * 3
    assert not torch.equal(out.images[0], out.images[1])  # variations differ


def test_all_keep_returns_the_tokenizer_reconstruction(models, image):
    vae, var = models
    out = edit(
        var, vae, image, torch.ones(4, 4), cfg=1.5, top_k=10, seed=0, num_variations=2, more_smooth=True
    )
    for tok, gt in zip(out.tokens, vae.img_to_idx(image), strict=True):
        assert torch.equal(tok, gt.expand(2, -1))
    recon = vae.img_to_reconstruction(image).add(1).mul(0.5)
    torch.testing.assert_close(out.images, recon.expand(2, -1, -1, -1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.reconstruction, recon, atol=1e-5, rtol=0)


@pytest.mark.parametrize("more_smooth", [False, True])
def test_all_generate_without_the_first_scale_equals_plain_sampling(models, image, more_smooth):
    vae, var = models
    kw = dict(cfg=1.5, top_k=20, top_p=0.9, more_smooth=more_smooth, seed=11)
    out = edit(var, vae, image, torch.zeros(4, 4), label=2, num_variations=3, keep_first_scale=False, **kw)
    ref = sample(var, vae, 3, labels=2, **kw)
    assert all(torch.equal(a, b) for a, b in zip(out.tokens, ref.tokens, strict=True))
    assert torch.equal(out.images, ref.images)
    # the published rule keeps the image's 1x1 token even then
    anchored = edit(var, vae, image, torch.zeros(4, 4), label=2, num_variations=3, **kw)
    assert torch.equal(anchored.tokens[0], vae.img_to_idx(image)[0].expand(3, -1))


def test_kept_region_matches_the_reconstruction_away_from_the_edit():
    # A 16 px model (8x8 tokens); in-paint the bottom-right 2x2 tokens. With random weights the decoder's
    # attention and GroupNorm, and the bicubic upsampling of coarse generated tokens, carry a little of
    # the edit to every pixel, so the check is on the far corner, in absolute terms and against what
    # regenerating the whole image does there (trained models: tests/integration/test_edit_cli.py).
    torch.manual_seed(0)
    vae, var = tiny_vae(patch_nums=PN6).eval(), tiny_var(patch_nums=PN6).eval()
    img = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    request = EditRequest.of(var, vae, img, (0.75, 0.75, 1.0, 1.0), mode="inpaint")
    kept = edit_region(var, vae, request, num_variations=4, seed=0)
    fresh = edit(var, vae, img, torch.zeros(8, 8), num_variations=4, seed=0, keep_first_scale=False)
    far = (slice(None), slice(None), slice(0, 4), slice(0, 4))
    err_kept = (kept.images - kept.reconstruction)[far].abs().mean().item()
    err_fresh = (fresh.images - kept.reconstruction)[far].abs().mean().item()
    assert err_kept < 0.06, err_kept
    assert err_kept < 0.5 * err_fresh, (err_kept, err_fresh)


def test_both_guidance_halves_see_the_mixed_context(models, image):
    # The logits seen at each scale must be the guided logits of a teacher-forced forward pass on the
    # tokens that formed f_hat (the image's where kept): cond and uncond rows share that context.
    vae, var = models
    keep = 1 - box_region((0.0, 0.25, 0.5, 1.0), grid=4, image_size=8)
    spec = EditSpec(keep_idx=vae.img_to_idx(image), keep_mask_BHW=keep)
    seen = {}
    cfg, B = 2.5, 2
    out = sample(
        var,
        vae,
        B,
        labels=[1, 4],
        cfg=cfg,
        top_k=10,
        seed=5,
        edit=spec,
        logits_hook=lambda si, lg: seen.__setitem__(si, lg),
    )
    x_BLCv = vae.quantize.idx_to_var_input(out.tokens)
    cond = var(out.labels, x_BLCv)
    uncond = var(torch.full_like(out.labels, var.num_classes), x_BLCv)
    K = len(TINY_PN)
    for si, (b, e) in enumerate(var.begin_ends):
        t = cfg * si / (K - 1)
        torch.testing.assert_close(
            seen[si], (1 + t) * cond[:, b:e] - t * uncond[:, b:e], atol=1e-4, rtol=1e-4
        )


def test_same_seed_same_edit_and_batches_of_images(models):
    vae, var = models
    imgs = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    keep = torch.stack([1 - box_region((0, 0, 0.5, 0.5), 4, 8), 1 - box_region((0.5, 0.5, 1, 1), 4, 8)])
    a = edit(var, vae, imgs, keep, label=1, cfg=2.0, seed=4, num_variations=2)
    b = edit(var, vae, imgs, keep, label=1, cfg=2.0, seed=4, num_variations=2)
    c = edit(var, vae, imgs, keep, label=1, cfg=2.0, seed=5, num_variations=2)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert a.images.shape == (4, 3, 8, 8)
    last = vae.img_to_idx(imgs)[-1]
    for row in range(4):  # image-major rows, each with its own image's kept tokens and mask
        img_i = row // 2
        kept = keep[img_i].reshape(-1).bool()
        assert torch.equal(a.tokens[-1][row, kept], last[img_i, kept])


def test_edit_rejects_bad_input(models, image):
    vae, var = models
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        edit(var, vae, image * 127.5 + 127.5, torch.ones(4, 4))
    with pytest.raises(ValueError, match="num_variations"):
        edit(var, vae, image, torch.ones(4, 4), num_variations=0)
    with pytest.raises(ValueError, match="out of range"):
        edit(var, vae, image, torch.ones(4, 4), label=var.num_classes + 1)
    with pytest.raises(ValueError, match="images must be 8x8"):
        edit(var, vae, torch.zeros(1, 3, 12, 12), torch.ones(4, 4))
    with pytest.raises(ValueError, match="keep masks for 1 images"):
        edit(var, vae, image, torch.ones(3, 4, 4))
    with pytest.raises(ValueError, match="keep_idx"):
        sample(var, vae, 2, edit=EditSpec(keep_idx=vae.img_to_idx(image)[:2], keep_mask_BHW=torch.ones(4, 4)))


# ---------------------------------------------------------------- files
def test_load_image_resizes_the_shorter_side_and_crops_the_centre(tmp_path):
    arr = np.zeros((40, 80, 3), np.uint8)  # 80 wide, 40 high: red left quarter, green centre, blue right
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:60] = (0, 255, 0)
    arr[:, 60:] = (0, 0, 255)
    Image.fromarray(arr).save(tmp_path / "wide.png")
    x = load_image(tmp_path / "wide.png", 8)
    assert x.shape == (1, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert x[0, 1].mean() > 0.9 and x[0, 0].mean() < -0.9  # only the green centre survives the crop


def test_unreadable_image_and_missing_file_give_clear_errors(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"cannot be read as an image.*key image"):
        load_image(tmp_path / "broken.png", 8)
    with pytest.raises(FileNotFoundError, match=r"no such file.*key image"):
        load_image(tmp_path / "missing.png", 8)


def test_mask_png_white_is_the_region_and_other_sizes_warn(tmp_path, caplog):
    m = np.zeros((8, 8), np.uint8)
    m[2:6, 4:8] = 255
    Image.fromarray(m).save(tmp_path / "same.png")
    assert torch.equal(load_mask(tmp_path / "same.png", 8), torch.from_numpy(m > 127).float())
    big = np.kron(m, np.ones((4, 4), np.uint8))  # 32x32: the same region at 4x the size
    Image.fromarray(big).save(tmp_path / "big.png")
    with caplog.at_level(logging.WARNING, logger="var_lightning.inference.edit_images"):
        resized = load_mask(tmp_path / "big.png", 8, image_wh=(8, 8))
    assert "resizing the mask" in caplog.text
    assert torch.equal(resized, torch.from_numpy(m > 127).float())
    # drawn on the original (wider) photo, the mask is cropped like the image: no warning
    wide = np.zeros((8, 16), np.uint8)
    wide[:, 4:8] = 255  # the left half of the centre crop
    Image.fromarray(wide).save(tmp_path / "wide.png")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="var_lightning.inference.edit_images"):
        cropped = load_mask(tmp_path / "wide.png", 8, image_wh=(16, 8))
    assert caplog.text == ""
    assert cropped[:, :4].all() and not cropped[:, 4:].any()


def test_synthetic_images_are_held_out_and_checked():
    x, label = synthetic_image("synthetic:3:2", 16, 5)
    y, _ = synthetic_image("synthetic:3:2", 16, 5)
    assert label == 3 and x.shape == (1, 3, 16, 16) and torch.equal(x, y)
    assert not torch.equal(x, synthetic_image("synthetic:3:1", 16, 5)[0])
    with pytest.raises(ValueError, match="synthetic:<class id>:<index>"):
        synthetic_image("synthetic:red", 16, 5)
    with pytest.raises(ValueError, match=r"0\.\.4"):
        synthetic_image("synthetic:7:0", 16, 5)


def test_panel_has_original_reconstruction_mask_and_every_result(tmp_path):
    results = torch.rand(3, 3, 8, 8)
    gen = torch.zeros(8, 8)
    gen[:4] = 1
    recon = torch.zeros(3, 8, 8)
    recon[0] = 1  # pure red
    path = edit_panel(torch.rand(3, 8, 8), recon, gen, results, tmp_path / "panel.png")
    w, h = Image.open(path).size
    cell = 128  # 8 px cells upscaled to 128
    assert w == 6 * (cell + 4) + 4 and h == 16 + cell + 4
    recon_cell = np.asarray(Image.open(path))[16 : 16 + cell, 4 + cell + 4 : 4 + 2 * cell + 4]
    assert (recon_cell == [255, 0, 0]).all()
    mask_cell = np.asarray(Image.open(path))[16 : 16 + cell, 4 + 2 * (cell + 4) : 4 + 2 * (cell + 4) + cell]
    assert (mask_cell[: cell // 2] == 255).all() and (mask_cell[cell // 2 :] == 0).all()


# ---------------------------------------------------------------- one label per image, any sampler
def test_each_image_can_have_its_own_class(models):
    vae, var = models
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(5)) * 2 - 1
    keep = torch.zeros(4, 4)
    keep[:, :2] = 1
    out = edit(var, vae, images, keep, label=[1, 3], num_variations=2, cfg=1.0, seed=2)
    assert out.labels.tolist() == [1, 1, 3, 3]
    # one label for the batch equals that label given per image
    same = edit(var, vae, images, keep, label=[4, 4], num_variations=2, cfg=1.0, seed=2)
    one = edit(var, vae, images, keep, label=4, num_variations=2, cfg=1.0, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(same.tokens, one.tokens, strict=True))
    # image b's rows reach the sampler with image b's class
    seen = []

    def spy(B, labels, **kw):
        seen.append(labels.tolist())
        return sample(var, vae, B, labels=labels, **kw)

    mixed = edit(var, vae, images, keep, label=[4, 1], num_variations=2, cfg=1.0, seed=2, sampler=spy)
    assert seen == [[4, 4, 1, 1]] and mixed.labels.tolist() == [4, 4, 1, 1]
    assert all(torch.equal(a[:2], b[:2]) for a, b in zip(mixed.tokens, one.tokens, strict=True))
    nulls = edit(var, vae, images, keep, label=[None, 2], cfg=1.0, seed=2)
    assert nulls.labels.tolist() == [var.num_classes, 2]
    with pytest.raises(ValueError, match="got 3 labels for 2 images"):
        edit(var, vae, images, keep, label=[1, 2, 3])
    with pytest.raises(ValueError, match="class id 9 is out of range"):
        edit(var, vae, images, keep, label=[1, 9])


def test_the_fast_sampler_edits_identically(models, image):
    from var_lightning.transformer.fast_sampling import FastSampler

    vae, var = models
    keep = torch.ones(4, 4)
    keep[1:3, 1:3] = 0
    plain = edit(var, vae, image, keep, label=2, num_variations=3, cfg=1.5, top_k=20, top_p=0.9, seed=4)
    fast = edit(var, vae, image, keep, label=2, num_variations=3, cfg=1.5, top_k=20, top_p=0.9, seed=4,
                sampler=FastSampler(var, vae, channels_last=True).sample)  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(plain.tokens, fast.tokens, strict=True))
    torch.testing.assert_close(fast.images, plain.images, rtol=0, atol=1e-4)


def test_the_panel_frames_each_cell_so_a_white_mask_stays_distinct_from_the_page(tmp_path):
    """An out-paint mask is white where the model generates: on the white page it merged into the
    background; each cell now has a grey frame around it."""
    gen = torch.ones(8, 8)  # all generated: an all-white mask cell
    path = edit_panel(
        torch.rand(3, 8, 8), torch.rand(3, 8, 8), gen, torch.rand(1, 3, 8, 8), tmp_path / "p.png"
    )
    arr = np.asarray(Image.open(path).convert("RGB")).astype(int)
    cell, pad, head = 128, 4, 16  # 8 px upscaled to 128; the panel's layout
    x_mask = pad + 2 * (cell + pad)
    assert (arr[head + 10, x_mask + 10] == 255).all()  # inside the mask cell: white
    assert (arr[head + 10, x_mask - 1] == 128).all() and (
        arr[head - 1, x_mask + 10] == 128
    ).all()  # its frame
    assert (arr[head + 10, x_mask + cell] == 128).all()
