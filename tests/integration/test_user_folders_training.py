"""A user folder through var-train: a training split smaller than one batch stops before training."""

from __future__ import annotations

import pytest

from tests.integration.test_run_behaviour import TINY, cfg_for
from tests.unit.test_user_folders import _tree  # noqa: F401 - helpers and fixtures


def test_a_training_split_smaller_than_one_batch_stops_before_training(tmp_path):
    from var_lightning.cli.train import train

    data = tmp_path / "data"
    _tree(data / "train", per_class=2)
    _tree(data / "val", per_class=1)
    folder = [
        "data=imagenet",
        f"data.root={data}",
        "data.image_size=8",
        "data.num_workers=0",
        "data.batch_size=8",
    ]
    with pytest.raises(ValueError) as err:
        train(cfg_for(tmp_path / "run", "trainer.max_epochs=1", *folder, data=[]))
    msg = str(err.value)
    assert "the training split has 4 images, fewer than one batch of data.batch_size=8" in msg
    assert "data.batch_size=4 (or less)" in msg and "data.drop_last=false" in msg
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert "experiment=tokenizer_tiny" in TINY  # (the tokenizer stage; the same loader serves the VAR stage)
