"""The documented pipeline on demo audio: corpus -> manifest -> EnCodec labels -> validation ->
one update of the full-size 95M RVQ config through fairseq-hydra-train on CPU."""
from data_prep_helpers import run_script
from training_runs import metric, train

ENCODEC = [f"encodec_{i}" for i in range(8)]


def test_demo_audio_encodec_labels_train_95m_config(tmp_path):
    corpus, manifest, labels = tmp_path / "corpus", tmp_path / "manifest", tmp_path / "labels"
    steps = [
        ("make_demo_corpus", "--out-dir", corpus, "--num-clips", "6", "--seconds", "4"),
        ("prepare_manifest", "--root-dir", corpus, "--converted-root-dir", tmp_path / "audio24k",
         "--out-dir", manifest, "--valid-percent", "0.34", "--seed", "1"),
        ("prepare_codecs_from_manifest", "--manifest_path", manifest, "--manifest_file_name", "train.tsv,valid.tsv",
         "--out_root", labels, "--codebook_size", "1024", "--n_codebook", "8", "--random-init"),
        ("validate_data", "--manifest-dir", manifest, "--label-dir", labels, "--splits", "train,valid"),
    ]
    for name, *args in steps:
        proc = run_script(name, *args)
        assert proc.returncode == 0, f"{name}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    data = {"data": str(manifest), "label_dir": str(labels), "labels": ENCODEC}
    log = train(data, tmp_path / "run", "common.cpu=true", "common.fp16=false", "model.label_rate=75",
                "optimization.max_update=2", "dataset.max_tokens=200000", "dataset.num_workers=0",
                "dataset.disable_validation=true", "common.log_interval=1", "common.log_format=simple",
                config="MERT_RVQ-VAE_CQT_95M")
    losses = metric(log, "train_inner", "loss")
    assert len(losses) == 2 and all(l > 0 for l in losses), log[-3000:]
    assert metric(log, "train_inner", "count_m_7"), "all 8 codebooks are predicted"
    assert (tmp_path / "run" / "checkpoints" / "checkpoint_last.pt").is_file()
