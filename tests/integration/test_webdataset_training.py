"""WebDataset shards through var-train (Trainer runs): the data configs, and lost samples counted per shard."""

from __future__ import annotations

import json
import logging

import pytest

from tests.unit.test_webdataset import _truncate_after, shard, shards, tokenizer_ckpt, tree, write_tree  # noqa: F401 - helpers and fixtures
from var_lightning.data.shard_health import count_readable
from var_lightning.data.shards import read_manifest
from var_lightning.data.webdataset import WebDatasetDataModule


@pytest.mark.parametrize("name", ["webdataset", "webdataset_tokens"])
def test_data_configs_instantiate_without_touching_the_shards(name, tmp_path):
    from hydra.utils import instantiate

    from tests.integration.test_configs import compose_train

    cfg = compose_train(["experiment=var_tiny", "model.tokenizer_ckpt=x.ckpt", f"data={name}"], tmp_path)
    dm = instantiate(cfg.data)
    assert isinstance(dm, WebDatasetDataModule) and dm.pretokenized == (name == "webdataset_tokens")
    assert str(dm.train_spec).endswith("train-tok" if dm.pretokenized else "imagenet-wds/train")
    with pytest.raises(FileNotFoundError, match="data.train_shards"):
        dm.setup("fit")


def test_lost_samples_are_counted_per_shard_per_pass_not_per_read_error(tmp_path, caplog):
    from tests.integration.test_run_behaviour import cfg_for
    from var_lightning.cli.train import train

    root = write_tree(tmp_path / "tree", n=40, num_classes=2)
    out = tmp_path / "wds"
    shard(root, out, "--max-count", "20")
    man = read_manifest(out)
    bad = out / man.shards[0].name
    _truncate_after(bad, 7)  # 13 of its 20 samples lost on every pass
    assert count_readable(str(bad))[0] == 7
    dm = WebDatasetDataModule(str(out), image_size=8, batch_size=4, num_workers=0, shuffle_buffer=1)
    dm.setup("fit")
    seen = sum(len(y) for _, y in dm.train_dataloader())
    ledger = dm.train_stream.ledger
    c = ledger.counters("epoch")
    passes, lost = int(c["passes"][0]), int(c["lost"][0])
    assert seen == 40 and passes >= 1 and lost == 13 * passes  # samples, not the one error per pass
    assert int(c["lost"][1]) == 0 and dm.num_skipped == lost
    lines, metrics = ledger.report(c, "epoch0")
    assert f"{bad.name}: 13 of 20 samples lost per pass, {passes} passes, {lost} sample reads lost" in lines
    assert metrics["data/training/epoch0/lost_samples"] == lost
    # through a run: the DataHealth callback reports per epoch and for the run, into the log and metrics.json
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        wds = ["data=webdataset", f"data.train_shards={out}", "data.val_shards=null", "data.batch_size=4",
               "data.num_workers=0"]  # fmt: skip
        train(cfg_for(run, "trainer.max_epochs=2", "+trainer.limit_val_batches=0", data=wds))
    logged = json.loads((run / "metrics.json").read_text())
    for key in (
        "data/training/epoch0/lost_samples",
        "data/training/epoch1/lost_samples",
        "data/training/run/lost_samples",
    ):
        assert logged[key] > 0, key
    assert (
        logged["data/training/run/lost_samples"]
        == logged["data/training/epoch0/lost_samples"] + logged["data/training/epoch1/lost_samples"]
    )
    assert logged["data/training/run/shards"][bad.name]["lost_per_pass"] == 13
    assert f"{bad.name}: 13 of 20 samples lost per pass" in caplog.text
