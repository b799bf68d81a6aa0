"""Probing during pretraining: `task.probe_csv` logs probe_<task> keys into fairseq's train log."""
from training_runs import TRAINED_RUN_UPDATES, metric


def test_online_probe_logs_probe_keys(trained_run):
    """The session's run probes 12 clips (columns parity, quarter) every 2 updates and logs every update."""
    log = trained_run.log
    assert "task.probe_interval_updates=2" in trained_run.overrides and "common.log_interval=1" in trained_run.overrides
    parity, quarter = metric(log, "train_inner", "probe_parity"), metric(log, "train_inner", "probe_quarter")
    n = TRAINED_RUN_UPDATES
    assert len(parity) == n and len(quarter) == n, log[-3000:]  # every line carries the latest probe
    assert log.count("online probe (") == len(range(0, n, 2))  # probed at updates 0, 2 and 4
    assert all(0.0 <= v <= 1.0 for v in parity + quarter)
    assert "online probe" in log
