"""One tiny training run into all three trackers (local, W&B offline, TensorBoard): every key, scalars, samples, videos and
health events, is the same in each (DESIGN §5); and --auto_remedy's action shows in the logged learning rates."""
import json
import re
import struct

import pytest

from wubugen.cli import main


def wandb_keys(run_dir):
    """The history keys of an offline W&B run, read from its .wandb file (a LevelDB-style log of protobuf records:
    a 7-byte file header, then records with 7-byte headers in 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    data = path.read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1
    pos, buf, block, keys = 7, b"", 32768, set()
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            if rec.WhichOneof("record_type") == "history":
                keys |= {it.key or it.nested_key[0] for it in rec.history.item}
    return {k for k in keys if not k.startswith("_")}


def tensorboard_keys(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0,
                                                                        "tensors": 0}).Reload()
    tags = acc.Tags()
    return set(tags["scalars"]) | set(tags["images"]) | set(tags["tensors"]), acc


def local_keys(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    scalars = {k for rec in lines for k, v in rec["values"].items() if v is not None}  # None: unavailable, not plotted
    media = {json.loads(x)["key"] for x in (run_dir / "media.jsonl").read_text().splitlines()}
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    return scalars, media, events, lines


def test_local_wandb_offline_and_tensorboard_get_the_same_keys(tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    import wubugen.train.health as health

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setattr(health, "ADV_ZERO", 1e9)  # the D-collapsed rule holds for any Adv: it fires every window
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--max_steps", "20", "--val_interval", "10", "--progress", "false",
                 "--checkpoint_dir", str(run), "--cache_dir", str(tmp_path / "cache"), "--wandb", "true",
                 "--wandb_mode", "offline", "--tensorboard", "true", "--wandb_log_train_recon_interval", "10",
                 "--wandb_log_fixed_noise_samples_interval", "10", "--health_window", "2", "--health_phase1_ranges",
                 "false", "--auto_remedy", "true", "--learning_rate_disc", "1e-4", "--learning_rate_gen", "3e-4"]) == 0
    out = capsys.readouterr().out
    scalars, media, events, lines = local_keys(run)
    local = scalars | media | {e["key"] for e in events}
    assert {"train/loss_recon", "train/loss_d_real", "train/loss_d_fake", "train/loss_g_adv", "train/lr_gen",
            "train/lambda_kl", "val/avg_val_psnr", "samples/train_recon", "samples/val_reconstruction_samples",
            "samples/fixed_noise_generated", "videos/train_recon", "videos/fixed_noise_generated",
            "health/d_collapsed"} <= local
    tb, acc = tensorboard_keys(run)
    assert wandb_keys(run) == local
    assert tb == local

    # the health finding: one console line per firing, the same text in every tracker, and the remedy applied
    collapsed = [e for e in events if e["key"] == "health/d_collapsed"]
    assert [e["step"] for e in collapsed] == [10, 20] and out.count("health: step") == len(events)
    assert "Auto-remedy: D's learning rate 0.0001 -> 0.0002, G's 0.0003 -> 0.00015" in collapsed[0]["text"]
    assert all(e["text"] in out for e in events)
    (tb_text,) = [e for e in acc.Tensors("health/d_collapsed") if e.step == 10]
    assert tb_text.tensor_proto.string_val[0].decode() == collapsed[0]["text"]
    lr_d = {rec["step"]: rec["values"]["train/lr_disc"] for rec in lines if "train/lr_disc" in rec["values"]}
    assert lr_d[5] == pytest.approx(1e-4) and lr_d[15] == pytest.approx(2e-4)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["health"]["fired"]["d_collapsed"] == 2
    # what the last finding that moved D's learning rate says it set is what the run ended with
    said = [re.search(r"D's learning rate ([0-9.e-]+) -> ([0-9.e-]+)", e["text"]) for e in events]
    last_said = [m for m in said if m][-1]
    assert float(last_said.group(2)) == pytest.approx(1e-4 * summary["health"]["remedies"]["lr_d"], rel=1e-3)

    # videos during training, at their intervals; fixed-noise samples once per interval, not again at validation
    fixed = [json.loads(x)["step"] for x in (run / "media.jsonl").read_text().splitlines()
             if json.loads(x)["key"] == "samples/fixed_noise_generated"]
    assert fixed == [10, 20]
    assert sorted(p.name for p in (run / "media" / "videos_train_recon").iterdir()) == ["step_10.gif", "step_20.gif"]
