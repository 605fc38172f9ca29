"""The experiment trackers, offline: one tiny VAR run with ``logger=[csv,tensorboard,wandb,mlflow]`` and each
tracker's own files read back (TensorBoard event files, W&B's offline run file, MLflow's file store): the
resolved config, the metrics, the image grids and the checkpoint paths reach every one. A missing tracker
package stops the run before it starts, naming the pip command."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from omegaconf import open_dict

from tests.integration.test_training import var_cfg
from var_lightning.cli.train import train


def wandb_records(run_file: Path) -> list:
    """The records of W&B's offline run file (``run-<id>.wandb``: a ``:W&B`` header, then LevelDB-log framed
    protobuf ``Record`` messages in 32 KiB blocks), parsed with wandb's own protobuf classes."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, parts, out = run_file.read_bytes(), 7, 32768, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += block - pos % block
            continue
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(parts)
            out.append(record)
        if kind != 2 and kind != 3:
            parts = b""
    return out


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tokenizer_ckpt):
    run = tmp_path_factory.mktemp("tracked")
    cfg = var_cfg(run, tokenizer_ckpt, "trainer.max_epochs=2", "logger=[csv,tensorboard,wandb,mlflow]",
                  "logger.wandb.offline=true", "logger.wandb.name=tiny-run")  # fmt: skip
    with open_dict(cfg):
        cfg.trainer.log_every_n_steps = 1
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")  # never the network; a user syncs later with `wandb sync`
        env.setenv("WANDB_SILENT", "true")
        train(cfg)
        import wandb

        wandb.finish()
    return run


@pytest.mark.process
def test_tensorboard_gets_config_metrics_images_and_checkpoints(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tracked_run / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert "train/loss" in tags["scalars"] and "val/loss" in tags["scalars"]
    assert any(t.startswith("val/") for t in tags["images"]), tags["images"]
    text = " ".join(str(e.tensor_proto.string_val) for e in acc.Tensors("checkpoints/text_summary"))
    assert "last.ckpt" in text
    hparams = (tracked_run / "tensorboard" / "hparams.yaml").read_text()
    assert "tokenizer_ckpt" in hparams and "depth: 2" in hparams  # the resolved config


@pytest.mark.process
def test_wandb_offline_gets_config_metrics_images_and_checkpoints(tracked_run):
    (run_file,) = (tracked_run / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    kind = [r.WhichOneof("record_type") for r in records]
    config = {i.key or "/".join(i.nested_key): i.value_json for r, k in zip(records, kind, strict=True) if k == "config"
              for i in r.config.update}  # fmt: skip
    history = [{i.key or "/".join(i.nested_key): i.value_json for i in r.history.item}
               for r, k in zip(records, kind, strict=True) if k == "history"]  # fmt: skip
    summary = {i.key or "/".join(i.nested_key): i.value_json for r, k in zip(records, kind, strict=True) if k == "summary"
               for i in r.summary.update}  # fmt: skip
    assert json.loads(config["model"])["transformer"]["depth"] == 2
    assert any("train/loss" in h for h in history) and any("val/loss" in h for h in history)
    images = [h for h in history if any(k.endswith("/_type") and "images" in v for k, v in h.items())]
    assert images and list((run_file.parent / "files" / "media" / "images").rglob("*.png"))
    assert json.loads(summary["checkpoint/last"]).endswith("last.ckpt")


@pytest.mark.process
def test_mlflow_file_store_gets_config_metrics_images_and_checkpoints(tracked_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"file:{tracked_run / 'mlruns'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "var_lightning"]
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.params["model/transformer/depth"] == "2"  # the resolved config, flattened
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert "val/loss" in run.data.metrics
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert images and all(p.endswith(".png") for p in images)
    assert run.data.tags["checkpoint/last"].endswith("last.ckpt")


def test_a_missing_tracker_package_names_the_pip_command(tmp_path, tokenizer_ckpt, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    cfg = var_cfg(tmp_path, tokenizer_ckpt, "debug=fdr", "logger=[csv,wandb]")
    with pytest.raises(
        ValueError, match=r"logger=wandb needs the wandb package.*pip install 'var_lightning\[wandb\]'"
    ):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_wandb_online_without_a_login_stops_before_the_run_naming_the_fixes(
    tmp_path, tokenizer_ckpt, monkeypatch
):
    """Not wandb's UsageError traceback once the run has started: login, the key, or offline."""
    pytest.importorskip("wandb")
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    cfg = var_cfg(tmp_path / "run", tokenizer_ckpt, "debug=fdr", "logger=[csv,wandb]")
    with pytest.raises(ValueError) as err:
        train(cfg)
    msg = str(err.value)
    assert msg.startswith("logger=wandb: W&B has no login on this machine: run `wandb login`")
    assert "logger.wandb.offline=true" in msg and "WANDB_MODE=offline" in msg
    assert not (tmp_path / "run" / "checkpoints").exists()
