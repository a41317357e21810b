"""Unit tests of the training pieces: presets, CLI parsing, sampler, schedule, checkpoints."""

import copy
import errno

import pytest
import torch
from torch import nn

from encnet_lite import checkpoint as ckpt_io
from encnet_lite import engine, presets
from encnet_lite.distributed import CPUSyncBatchNorm, DistInfo, convert_sync_batchnorm
from encnet_lite.errors import FileWriteError
from encnet_lite.train import build_parser, config_from_args


def test_every_preset_builds_and_takes_overrides():
    for name, fn in presets.PRESETS.items():
        cfg = fn()
        assert cfg.name == name
        assert fn(epochs=3).optim.epochs == 3
    cfg = presets.pcontext_encnet_r50()
    o = cfg.optim
    assert (cfg.data.crop_size, cfg.data.base_size, o.batch_size, o.lr, o.epochs) == (
        480, 520, 16, 1e-3, 80)
    assert (cfg.model.aux_weight, cfg.model.se_weight, o.momentum, o.weight_decay) == (
        0.2, 0.2, 0.9, 1e-4)
    assert presets.pcontext_fcn_r50().model.arch == "fcn"


def test_config_validates_and_accepts_booleans_for_switches():
    assert presets.scenes_encnet_tiny(amp=False).optim.amp == "off"
    assert presets.scenes_encnet_tiny(channels_last=True).runtime.channels_last == "on"
    with pytest.raises(ValueError, match="arch"):
        presets.TrainConfig().replace(arch="unet")
    with pytest.raises(TypeError, match="the architecture is arch"):
        presets.TrainConfig().replace(model="unet")  # "model" names the group now
    with pytest.raises(TypeError, match="no field 'lrate'"):
        presets.TrainConfig().replace(lrate=0.1)
    cfg = presets.scenes_fcn_tiny(seed=3)
    assert presets.TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_cli_overrides_every_field_of_the_preset():
    args = build_parser().parse_args(
        ["--preset", "scenes_encnet_tiny", "--epochs", "3", "--aux", "false", "--lr", "0.1",
         "--num-codes", "16", "--out", "/tmp/x"])
    cfg = config_from_args(args)
    assert (cfg.optim.epochs, cfg.model.aux, cfg.optim.lr, cfg.model.num_codes, cfg.out) == (
        3, False, 0.1, 16, "/tmp/x")
    assert cfg.model.arch == "encnet" and cfg.name == "scenes_encnet_tiny"
    from encnet_lite.cli import UsageError

    with pytest.raises(UsageError, match="--aux maybe: expected a boolean"):
        config_from_args(build_parser().parse_args(["--preset", "scenes_fcn_tiny",
                                                    "--aux", "maybe"]))


def test_amp_and_channels_last_resolution():
    cpu = torch.device("cpu")
    assert engine.resolve_amp("auto", cpu) is None  # off on CPU by default
    assert engine.resolve_amp("on", cpu) == torch.bfloat16
    assert engine.resolve_amp("fp16", cpu) == torch.float16
    assert not engine.resolve_channels_last("auto", cpu)
    assert not engine.make_scaler(torch.bfloat16, cpu).is_enabled()


def test_processes_together_see_the_single_process_batches():
    one = engine.TrainSampler(40, 8, seed=1)
    two = [engine.TrainSampler(40, 8, seed=1, info=DistInfo(r, 2)) for r in range(2)]
    for s in [one, *two]:
        s.set_epoch(3)
    single = list(one)
    parts = [list(s) for s in two]
    assert len(single) == 40 and all(len(p) == 20 for p in parts)
    for t in range(5):  # global batch t = rank 0's slice then rank 1's
        assert single[8 * t: 8 * t + 8] == parts[0][4 * t: 4 * t + 4] + parts[1][4 * t: 4 * t + 4]
    one.set_epoch(3, skip_batches=2)
    assert list(one) == single[16:]  # resume mid-epoch: the same remaining order
    one.set_epoch(4)
    assert [i for i, _ in one] != [i for i, _ in single]  # a new shuffle each epoch
    with pytest.raises(ValueError, match="divisible"):
        engine.TrainSampler(40, 6, info=DistInfo(0, 4))


def test_augmentation_depends_on_the_sample_seed_only():
    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(3)

    ds = engine.SeededSamples(Noisy())
    a = ds[(1, 123)]
    torch.manual_seed(999)
    state = torch.get_rng_state()
    assert torch.equal(ds[(1, 123)], a)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    assert not torch.equal(ds[(1, 124)], a)


def test_poly_schedule_and_head_multiplier():
    model = nn.Module()
    model.backbone = nn.Linear(2, 2)
    model.head = nn.Linear(2, 2)
    cfg = presets.TrainConfig().replace(lr=0.1)
    opt = engine.build_optimizer(model, cfg)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 1.0])
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 1e-4
    sched = engine.build_scheduler(opt, total_iters=10, power=0.9)
    for t in range(1, 11):
        opt.step()
        sched.step()
        expected = 0.1 * (1 - t / 10) ** 0.9
        assert opt.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-12)
        assert opt.param_groups[1]["lr"] == pytest.approx(10 * expected, abs=1e-11)


def test_atomic_save_survives_a_full_disk(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt_io.save_atomic({"format": ckpt_io.FORMAT, "step": 1}, path)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial bytes")  # part of the file reaches the disk, then it is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(FileWriteError, match="disk full"):
        ckpt_io.save_atomic({"format": ckpt_io.FORMAT, "step": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert ckpt_io.load(path)["step"] == 1  # the last good checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    path = ckpt_io.save_atomic({"format": ckpt_io.FORMAT, "rng": ckpt_io.rng_state()},
                               tmp_path / "c.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    ckpt_io.set_rng_state(ckpt_io.load(path)["rng"])  # loads with weights_only=True
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_load_rejects_foreign_files_and_other_models(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt_io.CheckpointError):
        ckpt_io.load(bad)
    with pytest.raises(ckpt_io.CheckpointError, match="missing.pt"):
        ckpt_io.load(tmp_path / "missing.pt")
    saved = {"num_classes": 7, "config": presets.scenes_encnet_tiny().to_dict()}
    ckpt_io.check_compatible(saved, 7, [])
    with pytest.raises(ckpt_io.IncompatibleCheckpointError, match="num_classes 7 != 59"):
        ckpt_io.check_compatible(saved, 59)
    with pytest.raises(ckpt_io.IncompatibleCheckpointError, match="arch: 'encnet' -> 'fcn'"):
        ckpt_io.check_compatible(saved, 7, ["arch: 'encnet' -> 'fcn'"])


@pytest.mark.numerics
def test_convert_sync_batchnorm_keeps_the_parameters_and_falls_back_without_a_group():
    # Without a process group CPUSyncBatchNorm is plain BatchNorm; the synchronized path is
    # checked in two real processes in test_gloo_group.py.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Flatten(2),
                        nn.BatchNorm1d(4))
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 2.0)
        net[1].running_mean.fill_(0.3)
        net[1].num_batches_tracked.fill_(5)
    synced = convert_sync_batchnorm(copy.deepcopy(net), "cpu")
    assert [type(m) for m in synced.modules()].count(CPUSyncBatchNorm) == 2
    assert torch.equal(synced[1].weight, net[1].weight)
    assert torch.equal(synced[1].running_mean, net[1].running_mean)
    assert int(synced[1].num_batches_tracked) == 5
    x = torch.randn(5, 3, 6, 6)
    torch.testing.assert_close(synced(x), net(x))
    torch.testing.assert_close(synced[1].running_var, net[1].running_var)


def test_validate_returns_the_split_confusion_matrix_and_keeps_the_mode():
    class AlwaysZeroOrTruth(nn.Module):
        """Predicts class 0 on the left half, the true class on the right half."""

        def forward(self, images):
            truth = images[:, 0].long()  # the test stores the mask in channel 0
            pred = torch.where(torch.arange(4) < 2, torch.zeros_like(truth), truth)
            return {"main": torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float()}

    masks = torch.tensor([[[1, 2, 1, 2]] * 4, [[0, 1, 2, 255]] * 4])  # (2, 4, 4)
    images = masks.clamp(max=2)[:, None].float().expand(-1, 3, -1, -1)
    loader = [(images[:1], masks[:1]), (images[1:], masks[1:])]
    model = AlwaysZeroOrTruth().train()
    cm = engine.validate(model, loader, 3, torch.device("cpu"))
    assert model.training
    # rows = truth, cols = prediction; the 4 pixels labelled 255 are not counted
    assert cm.matrix.tolist() == [[4, 0, 0], [8, 4, 0], [4, 0, 8]]
    s = cm.compute()
    assert s["pixAcc"] == pytest.approx(16 / 28)
    assert s["IoU"] == pytest.approx([4 / 16, 4 / 12, 8 / 12])


def test_every_numeric_field_has_a_range_and_it_is_enforced():
    import math

    numeric = {k for k, (_, f) in presets.LEAVES.items() if f.type in ("int", "float")}
    assert numeric == set(presets.RANGES)  # a new numeric field needs a range too
    base = presets.scenes_encnet_tiny(min_lookalikes=1, max_lookalikes=64)  # max >= min
    for key, interval in presets.RANGES.items():
        low, high = (float(t) for t in interval[1:-1].split(","))
        whole = isinstance(base.flat()[key], int)
        step = 1 if whole else 1e-9 * max(1.0, abs(low))
        bad = [low - step if interval[0] == "[" else low, float("nan"), True, "1"]
        good = [low if interval[0] == "[" else low + step]
        if math.isinf(high):
            good.append(10**9)
        else:
            bad.append(high + step if interval[-1] == "]" else high)
            good.append(high if interval[-1] == "]" else high - step)
        if whole:
            bad.append(float(int(low) + 1))  # a float where a count belongs
        good = [int(g) if whole else g for g in good]
        for value in bad:
            with pytest.raises(presets.ConfigRangeError) as info:
                base.replace(**{key: value})
            assert info.value.key == key and str(info.value).startswith(f"{key}={value!r}: ")
        for value in good:
            assert base.replace(**{key: value}).flat()[key] == value, (key, value)
    for fn in presets.PRESETS.values():  # every preset is in range
        presets.check_ranges(fn().flat())


def test_load_history_reads_a_metrics_file_from_before_the_one_score_format(tmp_path):
    from encnet_lite.train import load_history

    # as metrics.jsonl was written then: per-class IoU under "iou", NaN for an absent class
    (tmp_path / "metrics.jsonl").write_text(
        '{"epoch": 1, "loss": 0.5}\n'
        '{"epoch": 2, "loss": 0.25, "pixAcc": 0.875, "mIoU": 0.5, "iou": [0.25, 0.75, NaN]}\n')
    history = load_history(tmp_path)
    assert history == [{"epoch": 1, "loss": 0.5},
                       {"epoch": 2, "loss": 0.25, "pixAcc": 0.875, "mIoU": 0.5,
                        "IoU": [0.25, 0.75, None]}]
