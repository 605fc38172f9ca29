"""Runs that never lose work: unreadable and half-damaged checkpoints, atomic writes under a full disk."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from tests.integration.test_run_behaviour import cfg_for
from var_lightning.checkpoints.safe_io import atomic_torch_save
from var_lightning.training.resume import (
    candidate_checkpoints,
    inspect_checkpoint,
    resolve_resume,
    verify_records,
)


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    """A finished tiny tokenizer run: checkpoints/last.ckpt at step 4."""
    from var_lightning.cli.train import train

    run = tmp_path_factory.mktemp("good")
    train(cfg_for(run, "trainer.max_epochs=1", "callbacks.periodic_checkpoint.minutes=null"))
    return run


def damage_a_tensor_record(src: Path, dst: Path) -> str:
    """Copy ``src`` with one byte flipped inside its largest tensor record: the zip directory stays intact."""
    shutil.copy(src, dst)
    with zipfile.ZipFile(dst) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(dst, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        pos = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0xFF]))
    return info.filename


def test_a_checkpoint_damaged_in_the_middle_is_caught_and_skipped(good_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(good_run / "checkpoints", run / "checkpoints")
    older = run / "checkpoints" / "last.ckpt"
    damaged = run / "checkpoints" / "periodic.ckpt"
    record = damage_a_tensor_record(older, damaged)
    os.utime(damaged)  # the newest file
    # what a cheap (memory-mapped) open sees: nothing wrong; what every record's CRC says: damaged
    torch.load(damaged, map_location="cpu", weights_only=True, mmap=True)
    with pytest.raises(RuntimeError, match=f"record {record} fails its CRC check"):
        verify_records(damaged)
    with pytest.warns(UserWarning, match=f"{damaged.name} is unreadable"):
        assert resolve_resume("auto", run, "tokenizer") == str(older)
    from var_lightning.cli.train import train

    train(cfg_for(run, "trainer.max_epochs=2", "resume=auto"))  # the relaunch continues from the good one
    newest = candidate_checkpoints(run)[0]
    assert torch.load(newest, weights_only=True)["global_step"] == 8


def test_resume_auto_with_only_unreadable_checkpoints_stops_instead_of_starting_over(good_run, tmp_path):
    from var_lightning.cli.train import train

    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    data = (good_run / "checkpoints" / "last.ckpt").read_bytes()
    (ckpts / "last.ckpt").write_bytes(data[: len(data) // 3])  # killed while saving
    damage_a_tensor_record(good_run / "checkpoints" / "last.ckpt", ckpts / "periodic.ckpt")
    with pytest.raises(ValueError) as err:
        train(cfg_for(tmp_path / "run", "trainer.max_epochs=1", "resume=auto"))
    msg = str(err.value)
    assert "every checkpoint under" in msg and "last.ckpt" in msg and "periodic.ckpt" in msg
    assert "overwrite=true" in msg and "hydra.run.dir" in msg and "Nothing was started" in msg
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "periodic.ckpt"]  # nothing new written
    with pytest.raises(RuntimeError, match="truncated"):
        inspect_checkpoint(ckpts / "last.ckpt")


@pytest.mark.process
def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(good_run, tmp_path):
    """The next save of a resumed run hits a file-size limit (RLIMIT_FSIZE, as a full disk would): the run
    fails, last.ckpt is still the previous, loadable checkpoint, and no partial file is left beside it."""
    run = tmp_path / "run"
    shutil.copytree(good_run / "checkpoints", run / "checkpoints")
    before = (run / "checkpoints" / "last.ckpt").read_bytes()
    limit = len(before) // 2
    script = tmp_path / "full_disk.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import resource, signal, sys
            sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
            resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
            from tests.integration.test_run_behaviour import cfg_for
            from var_lightning.cli.train import train
            train(cfg_for({str(run)!r}, "trainer.max_epochs=2", "resume=auto"))
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert out.returncode != 0 and "could not write checkpoint" in out.stderr, out.stderr[-2000:]
    assert "the previous checkpoint there is unchanged" in out.stderr
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == before
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name not in ("last.ckpt",) and
                 not p.name.startswith("best-")]  # fmt: skip
    assert leftovers == [], leftovers


def test_atomic_save_replaces_in_one_step_and_cleans_up_on_failure(tmp_path):
    target = tmp_path / "x.ckpt"
    atomic_torch_save({"a": torch.zeros(3)}, target)

    class Boom:
        def __reduce__(self):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"a": Boom()}, target)
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["x.ckpt"]


def test_resume_with_a_checkpoint_of_another_shape_stops_before_fitting(good_run, tmp_path):
    """The same message init_from gives, before Lightning starts (it used to fail inside its restore)."""
    from var_lightning.cli.train import train

    last = good_run / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError) as err:
        train(cfg_for(tmp_path / "other", "trainer.max_epochs=2", f"resume={last}", "model.tokenizer.ch=8",
                      "model.tokenizer.norm_groups=4"))  # fmt: skip
    msg = str(err.value)
    assert (
        msg.startswith(f"resume={last}: the checkpoint's model differs from this run's")
        and "with other shapes" in msg
    )
    assert "vae.decoder.conv_in.bias (32,) vs (16,)" in msg and f"init_from={last}" in msg
    assert not (tmp_path / "other" / "checkpoints").exists()


def test_save_top_k_stays_true_across_kills(tmp_path):
    """Files a killed run wrote after the resumed checkpoint (or failed to delete) are removed when the run
    resumes; the restored top-k list, last.ckpt and unrelated files stay."""
    from var_lightning.cli.train import train

    run = tmp_path / "run"
    train(cfg_for(run, "trainer.max_epochs=1", "callbacks.periodic_checkpoint.minutes=null"))
    ckpts = run / "checkpoints"
    tracked = sorted(p.name for p in ckpts.glob("best-*.ckpt"))
    assert len(tracked) == 1
    for name in ("best-e007-s0000031.ckpt", "best-e000-s0000004-v1.ckpt"):  # an abandoned timeline's files
        shutil.copy(ckpts / tracked[0], ckpts / name)
        os.utime(ckpts / name, (1e9, 1e9))  # older than last.ckpt, which resume=auto picks
    (ckpts / "my-notes.ckpt").write_bytes(b"")  # not the callback's pattern: kept
    train(cfg_for(run, "trainer.max_epochs=2", "resume=auto", "callbacks.periodic_checkpoint.minutes=null"))
    best = sorted(p.name for p in ckpts.glob("best-*.ckpt"))
    assert (
        len(best) == 1 and "best-e007-s0000031.ckpt" not in best and "best-e000-s0000004-v1.ckpt" not in best
    )
    assert (ckpts / "my-notes.ckpt").exists() and (ckpts / "last.ckpt").exists()


def test_a_run_folder_copied_elsewhere_resumes_with_its_files_tracked(good_run, tmp_path):
    """Copied (another disk, another cluster) and resumed: the top-k list follows the folder, so save_top_k
    stays true and last.ckpt is updated in place (was: last-v1.ckpt beside it and best files piling up)."""
    from var_lightning.cli.train import train

    copy = tmp_path / "copied"
    shutil.copytree(good_run, copy)
    (copy / "checkpoints" / "periodic.ckpt").unlink(missing_ok=True)
    train(cfg_for(copy, "trainer.max_epochs=3", "resume=auto", "callbacks.periodic_checkpoint.minutes=null"))
    names = sorted(p.name for p in (copy / "checkpoints").glob("*.ckpt"))
    assert "last-v1.ckpt" not in names and len([n for n in names if n.startswith("best-")]) == 1, names
    assert torch.load(copy / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 12
