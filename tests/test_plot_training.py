"""scripts/plot_training.py: fairseq simple and json logs and tensorboard folders -> one PNG."""
import json

import pytest

from mert_fairseq.evaluation.plot_training import main, parse_log_lines, plot_run, read_run

SIMPLE = [
    "[2026-01-01 00:00:01,000][train_inner][INFO] - epoch 001:     10 / 25 loss=6.5, loss_m_0=6.2, loss_features_pen=0.1, "
    "loss_cqt_pred_m=1.5, correct_m_0=0.02, count_m_0=800, wps=5000, ups=2.5, wpb=2000, bsz=8, num_updates=10, lr=0.0005, "
    "gnorm=2.1, train_wall=4, probe_key=0.12, wall=5",
    "[2026-01-01 00:00:05,000][train_inner][INFO] - epoch 001:     20 / 25 loss=5.5, loss_m_0=5.2, loss_cqt_pred_m=1.2, "
    "correct_m_0=0.06, wps=5100, ups=2.6, wpb=2000, bsz=8, num_updates=20, lr=0.001, wall=9",
    "[2026-01-01 00:00:06,000][valid][INFO] - epoch 001 | valid on 'valid' subset | loss 5.4 | loss_m_0 5.1 | "
    "loss_cqt_pred_m 1.1 | correct_m_0 0.07 | wps 9000 | num_updates 20",
    "some unrelated line num_updates=30 loss=1",
]


def test_simple_log_is_parsed_per_kind_and_update():
    s = parse_log_lines(SIMPLE)
    assert s["train_inner"]["loss"] == [(10, 6.5), (20, 5.5)]
    assert s["train_inner"]["probe_key"] == [(10, 0.12)]
    assert s["valid"]["correct_m_0"] == [(20, 0.07)] and s["valid"]["loss_cqt_pred_m"] == [(20, 1.1)]
    assert set(s) == {"train_inner", "valid"}


def test_json_log_and_png(tmp_path):
    lines = ['[2026-01-01][train_inner][INFO] - ' + json.dumps({"epoch": 1, "loss": "6.5", "correct_m_0": "0.1",
             "ups": "2", "bsz": "8", "lr": "0.001", "num_updates": str(n), "probe_mode": "0.6"}) for n in (5, 10)]
    s = parse_log_lines(lines)
    assert s["train_inner"]["loss"] == [(5, 6.5), (10, 6.5)]
    panels = plot_run(s, tmp_path / "a.png", crop_seconds=2.0)
    assert panels == ["loss", "masked accuracy per codebook", "learning rate", "audio-seconds / s",
                      "online probes (best layer)"]
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"


def test_tensorboard_folder(tmp_path):
    from tensorboardX import SummaryWriter

    for kind, values in (("train_inner", [6.0, 5.0, 4.0]), ("valid", [4.5])):
        w = SummaryWriter(str(tmp_path / "tb" / kind))
        for i, v in enumerate(values):
            w.add_scalar("loss", v, (i + 1) * 10)
            w.add_scalar("probe_key", 0.1 * i, (i + 1) * 10)
        w.close()
    s = read_run(tmp_path / "tb")
    assert s["train_inner"]["loss"] == [(10, 6.0), (20, 5.0), (30, 4.0)]
    assert s["valid"]["loss"] == [(10, 4.5)]
    assert main([str(tmp_path / "tb"), "--out", str(tmp_path / "tb.png")]) == 0
    assert (tmp_path / "tb.png").stat().st_size > 5000


def test_errors(tmp_path):
    (tmp_path / "empty.log").write_text("nothing here\n")
    assert main([str(tmp_path / "empty.log")]) == 2
    with pytest.raises(FileNotFoundError, match="no such log file"):
        read_run(tmp_path / "missing.log")
