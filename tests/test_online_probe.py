"""Probing during pretraining: `task.probe_csv` logs probe_<task> keys into fairseq's train log."""
from pathlib import Path

from test_training import metric, train


def test_online_probe_logs_probe_keys(tone_data, tmp_path):
    audio = Path(tone_data["data"]) / "audio"
    rows = [f"{audio / f'train_{i:03d}.wav'},{'ab'[i % 2]},{i % 4}\n" for i in range(12)]
    csv = tmp_path / "probe.csv"
    csv.write_text("file,parity,quarter\n" + "".join(rows))
    log = train(tone_data, tmp_path / "run", f"task.probe_csv={csv}", "task.probe_interval_updates=2",
                "task.probe_folds=2", "task.probe_tasks=null", "optimization.max_update=4", "dataset.disable_validation=true",
                "common.log_interval=1", "checkpoint.save_interval_updates=1000")
    parity, quarter = metric(log, "train_inner", "probe_parity"), metric(log, "train_inner", "probe_quarter")
    assert len(parity) == 4 and len(quarter) == 4, log[-3000:]  # every line carries the latest probe
    assert log.count("online probe (") == 2  # probed at updates 0 and 2
    assert all(0.0 <= v <= 1.0 for v in parity + quarter)
    assert "online probe" in log
