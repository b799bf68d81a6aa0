"""End-to-end training with `fairseq-hydra-train` on CPU: learning, stop/resume, data parallel."""
import re
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from synthetic import make_tone_dataset
from training_runs import TRAINED_RUN_OVERRIDES, TRAINED_RUN_UPDATES, load_params, metric, train


def test_loss_falls_and_masked_accuracy_rises_above_chance(tone_data, tmp_path):
    log = train(tone_data, tmp_path / "run", "optimization.max_update=60", "dataset.validate_interval_updates=20",
                "lr_scheduler.warmup_updates=20",
                "checkpoint.save_interval_updates=1000")
    loss = metric(log, "valid", "loss")
    acc = metric(log, "valid", "correct_m_0")
    assert len(loss) >= 3, log[-3000:]
    assert loss[-1] < 0.8 * loss[0], loss
    # 8 pitch classes: chance is 1/8
    assert acc[-1] > 0.35 and acc[-1] > acc[0], acc


def test_stop_and_resume_continues_exactly(tone_data, trained_run, tmp_path):
    """The session's run (stopped at update 6, mid-epoch 2) continued to 14 updates equals a run of 14."""
    common = [*TRAINED_RUN_OVERRIDES, "task.probe_csv=null"]  # the probe does not touch training
    train(tone_data, tmp_path / "straight", "optimization.max_update=14", *common)
    resumed = trained_run.copy_to(tmp_path / "resumed")
    first = load_params(resumed)
    assert first["optimizer_history"][-1]["num_updates"] == TRAINED_RUN_UPDATES == 6
    assert first["extra_state"]["train_iterator"]["iterations_in_epoch"] == 2  # stopped mid-epoch 2
    log = train(tone_data, resumed, "optimization.max_update=14", *common)
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch 2 @ 6 updates\)", log), log[-3000:]
    a, b = load_params(tmp_path / "straight"), load_params(resumed)
    assert b["optimizer_history"][-1]["num_updates"] == 14
    assert a["extra_state"]["train_iterator"] == b["extra_state"]["train_iterator"]
    assert a["last_optimizer_state"]["param_groups"][0]["lr"] == pytest.approx(
        b["last_optimizer_state"]["param_groups"][0]["lr"])
    for k, v in a["model"].items():
        assert torch.allclose(v, b["model"][k], atol=1e-6), k


# Deterministic objective (no masking randomness, no mixture): every frame is predicted.
DET = ["model.mask_prob=0.0", "++model.skip_masked=true", "model.skip_nomask=false",
       "criterion.pred_nomask_weight=1.0", "++criterion.pred_masked_weight=0.0", "model.mixture_prob=-1",
       "optimization.max_update=1", "dataset.disable_validation=true", "common.log_interval=1"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """(data, run folder, log) of the one-process reference run (8 clips in one batch), shared by both backends."""
    root = tmp_path_factory.mktemp("one_process")
    data = make_tone_dataset(root / "data", n_clips=8, seed=3)
    return data, root / "one", train(data, root / "one", *DET, "dataset.max_tokens=384000")


@pytest.mark.parametrize("ddp_backend", ["no_c10d", "c10d"])
def test_two_process_data_parallel_matches_one_process(tmp_path, ddp_backend, one_process):
    """no_c10d (all-reduce after the backward, the original's) and c10d (bucketed all-reduce overlapping the
    backward, without find_unused_parameters: the recipes')."""
    data, one_dir, one = one_process
    # Two CPU processes, one per rank (fairseq's own spawn and torchrun paths assume CUDA devices).
    port = _free_port()
    ddp = [*DET, "dataset.max_tokens=192000", "distributed_training.distributed_world_size=2",
           "distributed_training.distributed_backend=gloo", f"distributed_training.ddp_backend={ddp_backend}",
           "distributed_training.find_unused_parameters=false",
           f"distributed_training.distributed_init_method=tcp://127.0.0.1:{port}",
           "distributed_training.distributed_no_spawn=true"]
    with ThreadPoolExecutor(2) as pool:
        logs = list(pool.map(lambda r: train(data, tmp_path / "two", *ddp, f"distributed_training.distributed_rank={r}",
                                             f"hydra.run.dir={tmp_path / f'two_rank{r}'}"), (0, 1)))
    two = logs[0]
    loss_one, loss_two = metric(one, "train", "loss"), metric(two, "train", "loss")
    assert loss_one and loss_two and loss_one[0] == pytest.approx(loss_two[0], abs=2e-3), (loss_one, loss_two)
    a, b = load_params(one_dir)["model"], load_params(tmp_path / "two")["model"]
    for k, v in a.items():
        assert torch.allclose(v, b[k], atol=1e-5), k


def test_bf16_autocast_switch_trains(tone_data, tmp_path):
    log = train(tone_data, tmp_path / "run", "task.bf16_autocast=true", "optimization.max_update=4",
                "dataset.disable_validation=true", "common.log_interval=1")
    losses = metric(log, "train_inner", "loss")
    assert len(losses) == 4 and all(0 < l < 100 for l in losses), losses
    state = load_params(tmp_path / "run")
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())


def _ddp(port: int, rank: int, run: Path) -> list:
    return ["distributed_training.distributed_world_size=2", "distributed_training.distributed_backend=gloo",
            "distributed_training.ddp_backend=c10d", "distributed_training.find_unused_parameters=false",
            f"distributed_training.distributed_init_method=tcp://127.0.0.1:{port}",
            "distributed_training.distributed_no_spawn=true", f"distributed_training.distributed_rank={rank}",
            "checkpoint.load_checkpoint_on_all_dp_ranks=true",  # as the GPU recipes (fairseq's broadcast fails)
            f"hydra.run.dir={run.parent / (run.name + f'_rank{rank}')}"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ranks_draw_their_own_masks_and_resume_exactly(tmp_path):
    """Masking, the noise mixture and layerdrop on, 2 processes (gloo, c10d without find_unused_parameters:
    a layer one rank skips still gets its zero gradient): each rank's batches carry their own draws (row i
    of rank 0's batch is not masked like row i of rank 1's), and a run resumed from the checkpoint of update 4
    (the end of epoch 1) ends with the weights of the uninterrupted run of 8."""
    from step_helpers import build_recipe

    data = make_tone_dataset(tmp_path / "data", n_clips=16, seed=4)
    task, model, criterion, ds = build_recipe("MERT_demo_cpu", data, n_streams=1,
                                              extra=["model.mixture_prob=0.5", "model.encoder_layerdrop=0.5"])
    assert task.draw_spec is not None and task.draw_spec.mixture_prob == 0.5
    ranks = []
    for rank in (0, 1):  # the batches fairseq hands each rank in epoch 1
        itr = task.get_batch_iterator(ds, max_tokens=96000, seed=1, num_shards=2, shard_id=rank, num_workers=0,
                                      disable_iterator_cache=True)
        batch = next(iter(itr.next_epoch_itr(shuffle=True)))
        ranks.append(batch)
    m0, m1 = (b["net_input"]["draws"].mask for b in ranks)
    assert m0.shape == m1.shape and not torch.equal(m0, m1)
    assert not all(torch.equal(m0[i], m1[i]) for i in range(len(m0)))
    assert not torch.equal(ranks[0]["net_input"]["draws"].mix_len, ranks[1]["net_input"]["draws"].mix_len)
    assert all(len(b["net_input"]["draws"].layer_keep_host) == 2 for b in ranks)  # eager steps skip from these

    common = ["dataset.max_tokens=96000", "dataset.disable_validation=true", "checkpoint.save_interval_updates=1000",
              "lr_scheduler.warmup_updates=4", "model.mixture_prob=0.5", "model.encoder_layerdrop=0.5",
              "common.log_interval=1"]

    def two(run: Path, *overrides: str) -> str:  # rank 0's log
        port = _free_port()
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(lambda r: train(data, run, *common, *overrides, *_ddp(port, r, run)), (0, 1)))[0]

    two(tmp_path / "straight", "optimization.max_update=8", "checkpoint.no_epoch_checkpoints=false")
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)  # as if stopped at update 4
    shutil.copyfile(tmp_path / "straight" / "checkpoints" / "checkpoint1.pt",
                    tmp_path / "resumed" / "checkpoints" / "checkpoint_last.pt")
    log = two(tmp_path / "resumed", "optimization.max_update=8")
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 4 updates\)", log), log[-3000:]
    a, b = load_params(tmp_path / "straight"), load_params(tmp_path / "resumed")
    assert b["optimizer_history"][-1]["num_updates"] == 8
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
