"""A checkpoint in the layout of the published `MERT-v1-95M_fairseq.pt` (written here from the original's
config field names and state-dict keys, tiny sizes): it converts to a verified HF folder, and it restores
into `fairseq-hydra-train` for continued pretraining."""
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from synthetic import make_tone_dataset
from training_runs import train

ROOT = Path(__file__).resolve().parents[1]

# tiny sizes, 95M layout: post-LN, group-norm CNN, 8 EnCodec codebooks, untied projection, CQT teacher
D, FFN, HEADS, LAYERS, CONV, FINAL, POS, POS_GROUPS = 32, 64, 4, 2, 48, 16, 8, 4
N_STREAMS, N_CODES, CQT_BINS = 8, 8, 84
LABELS = [f"encodec_{i}" for i in range(N_STREAMS)]
CONV_SPEC = f"[({CONV},10,5)] + [({CONV},3,2)] * 4 + [({CONV},2,2)] * 2"


def original_model_cfg() -> dict:
    """`cfg.model` as the original stores it: every field of its config (95M values, tiny sizes)."""
    return {
        "_name": "mert", "label_rate": 75.0, "extractor_mode": "default", "encoder_layers": LAYERS,
        "encoder_embed_dim": D, "encoder_ffn_embed_dim": FFN, "encoder_attention_heads": HEADS,
        "activation_fn": "gelu", "layer_type": "transformer", "dropout": 0.1, "attention_dropout": 0.1,
        "activation_dropout": 0.0, "encoder_layerdrop": 0.05, "dropout_input": 0.1, "dropout_features": 0.1,
        "final_dim": FINAL, "untie_final_proj": True, "layer_norm_first": False,
        "conv_feature_layers": CONV_SPEC, "conv_bias": False, "logit_temp": 0.1, "target_glu": False,
        "feature_grad_mult": 0.1, "mask_length": 5, "mask_prob": 0.8, "mask_selection": "static",
        "mask_other": 0.0, "no_mask_overlap": False, "mask_min_space": 1, "mask_channel_length": 10,
        "mask_channel_prob": 0.0, "mask_channel_selection": "static", "mask_channel_other": 0.0,
        "no_mask_channel_overlap": False, "mask_channel_min_space": 1, "conv_pos": POS,
        "conv_pos_groups": POS_GROUPS, "latent_temp": [2.0, 0.5, 0.999995], "skip_masked": False,
        "skip_nomask": True, "checkpoint_activations": False, "required_seq_len_multiple": 2,
        "depthwise_conv_kernel_size": 31, "attn_type": "", "pos_enc_type": "abs", "fp16": True,
        "audio_extract_type": "w2v_conv", "music_conv_nmel": 80, "music_conv_hoplen": 40,
        "audio_cqt_loss_m": True, "audio_cqt_bins": CQT_BINS, "audio_mel_loss_m": False, "audio_mel_bins": 84,
        "feature_extractor_cqt": False, "feature_extractor_cqt_bins": 336, "mixture_prob": 0.5,
        "inbatch_noise_augment_len_range": "[12000, 24000]", "inbatch_noise_augment_number_range": "[1, 3]",
        "inbatch_noise_augment_volume": 1.0, "learnable_temp": False, "learnable_temp_init": 0.1,
        "learnable_temp_max": 100.0, "chunk_nce_cal": -1, "pretrained_weights": "/home/someone/MERT/ckpt/cnn_init.pt", "random_codebook": -1,
        "deepnorm": False, "subln": False, "attention_relax": -1.0, "emb_grad_mult": 1.0,
        "do_cnn_feat_stable_layernorm": False, "wav_normalize": False, "pos_conv_depth": 1,
        "mask_replace": 0.0, "mask_replace_type": "in_sample", "mask_origin": 0.0,
        "mask_dynamic_prob_step": "[]", "mask_dynamic_prob": "[]", "mask_dynamic_len_step": "[]",
        "mask_dynamic_len": "[]",
    }


def original_state_dict(seed: int = 0) -> dict:
    """The original's state-dict keys and shapes, written out independently of this project's model
    (old-style weight norm `weight_g`/`weight_v`, nnAudio CQT kernels stored as buffers)."""
    from mert_fairseq.perf.reference import build_nnaudio_cqt

    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=None):
        fan_in = shape[-1] if len(shape) > 1 else 1
        return torch.randn(*shape, generator=g) * (scale if scale is not None else 1 / math.sqrt(fan_in))

    def norm(n):
        return {"weight": 1 + 0.1 * rnd(n, scale=1), "bias": 0.1 * rnd(n, scale=1)}

    s = {}
    convs = [(1, 10)] + [(CONV, 3)] * 4 + [(CONV, 2)] * 2
    for i, (cin, k) in enumerate(convs):
        s[f"feature_extractor.conv_layers.{i}.0.weight"] = rnd(CONV, cin, k, scale=math.sqrt(2 / (cin * k)))
    for p, v in norm(CONV).items():
        s[f"feature_extractor.conv_layers.0.2.{p}"] = v
    s["post_extract_proj.weight"], s["post_extract_proj.bias"] = rnd(D, CONV), 0.1 * rnd(D, scale=1)
    for p, v in norm(CONV).items():
        s[f"layer_norm.{p}"] = v
    s["mask_emb"] = torch.rand(D, generator=g)
    s["encoder.pos_conv.0.bias"] = 0.1 * rnd(D, scale=1)
    s["encoder.pos_conv.0.weight_g"] = 1 + rnd(1, 1, POS, scale=0.2)
    s["encoder.pos_conv.0.weight_v"] = rnd(D, D // POS_GROUPS, POS)
    for i in range(LAYERS):
        pre = f"encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            s[pre + f"self_attn.{proj}.weight"], s[pre + f"self_attn.{proj}.bias"] = rnd(D, D), 0.1 * rnd(D, scale=1)
        for p, v in norm(D).items():
            s[pre + f"self_attn_layer_norm.{p}"] = v
        s[pre + "fc1.weight"], s[pre + "fc1.bias"] = rnd(FFN, D), 0.1 * rnd(FFN, scale=1)
        s[pre + "fc2.weight"], s[pre + "fc2.bias"] = rnd(D, FFN), 0.1 * rnd(D, scale=1)
        for p, v in norm(D).items():
            s[pre + f"final_layer_norm.{p}"] = v
    for p, v in norm(D).items():
        s[f"encoder.layer_norm.{p}"] = v
    s["final_proj.weight"], s["final_proj.bias"] = rnd(N_STREAMS * FINAL, D), 0.1 * rnd(N_STREAMS * FINAL, scale=1)
    s["label_embs_concat"] = torch.rand(N_STREAMS * (4 + N_CODES), FINAL, generator=g)
    cqt = build_nnaudio_cqt(24000, 320, CQT_BINS)  # what the original saved: nnAudio's buffers
    s["encoder_cqt_model.spec_layer.lenghts"] = cqt.lenghts.clone()
    s["encoder_cqt_model.spec_layer.cqt_kernels_real"] = cqt.cqt_kernels_real.clone()
    s["encoder_cqt_model.spec_layer.cqt_kernels_imag"] = cqt.cqt_kernels_imag.clone()
    s["encoder_cqt_model.fc.weight"], s["encoder_cqt_model.fc.bias"] = rnd(CQT_BINS, D), 0.1 * rnd(CQT_BINS, scale=1)
    return s


def original_checkpoint(path: Path) -> Path:
    """A fairseq 0.12 hydra checkpoint as the original training saved it (cfg as a plain dict)."""
    state = {
        "args": None,
        "cfg": {
            "_name": None,
            "common": {"_name": None, "no_progress_bar": False, "log_interval": 100, "log_format": "json",
                       "seed": 1, "cpu": False, "fp16": True, "memory_efficient_fp16": False,
                       "fp16_init_scale": 128, "user_dir": "/home/someone/MERT/mert_fairseq"},
            "model": original_model_cfg(),
            "task": {"_name": "mert_pretraining", "data": "/home/someone/data/music_manifests",
                     "label_dir": "/home/someone/data/encodec_labels", "labels": LABELS, "label_rate": 75.0,
                     "sample_rate": 24000, "normalize": False, "enable_padding": False, "max_keep_size": None,
                     "max_sample_size": 120000, "min_sample_size": 72000, "single_target": False,
                     "random_crop": True, "pad_audio": False, "store_labels": False, "numpy_memmap_label": False,
                     "augmentation_effects": "[]", "augmentation_probs": "[]",
                     "inbatch_noise_augment_len_range": "[12000, 24000]",
                     "inbatch_noise_augment_number_range": "[1, 3]", "inbatch_noise_augment_volume": 1.0,
                     "dynamic_crops": "[]", "dynamic_crops_epoches": "[]", "cqt_loss_bin_dataloader": -1,
                     "sharding_data": -1, "load_random_data_shard": True},
            "criterion": {"_name": "hubert", "pred_masked_weight": 1.0, "pred_nomask_weight": 0.0,
                          "loss_weights": [10, 1], "log_keys": []},
            "optimizer": {"_name": "adam", "adam_betas": "(0.9,0.98)", "adam_eps": 1e-06, "weight_decay": 0.01,
                          "lr": [0.0005]},
            "lr_scheduler": {"_name": "polynomial_decay", "warmup_updates": 32000, "total_num_update": 400000},
        },
        "model": original_state_dict(),
        "criterion": {},
        "optimizer_history": [{"criterion_name": "HubertCriterion", "optimizer_name": "FP16Optimizer",
                               "lr_scheduler_state": {"best": 3.21}, "num_updates": 400000}],
        "task_state": {},
        "extra_state": {"epoch": 120, "train_iterator": {"epoch": 120, "iterations_in_epoch": 1234,
                                                         "shuffle": True},
                        "metrics": {}, "previous_training_time": 1.0e6},
        "last_optimizer_state": {"state": {}, "param_groups": [{"lr": 1e-5, "params": []}], "loss_scale": 8.0},
    }
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def original_ckpt(tmp_path_factory) -> Path:
    return original_checkpoint(tmp_path_factory.mktemp("original") / "MERT-v1-95M_fairseq.pt")


def test_original_layout_loads_strictly_and_drops_only_the_cqt_buffers(original_ckpt):
    from mert_fairseq.checkpoint.model_loading import load_mert_model

    model, task_cfg = load_mert_model(original_ckpt)
    saved = torch.load(original_ckpt, weights_only=False)["model"]
    ours = model.state_dict()
    dropped = set(saved) - set(ours)
    assert dropped == {"encoder_cqt_model.spec_layer.lenghts", "encoder_cqt_model.spec_layer.cqt_kernels_real",
                       "encoder_cqt_model.spec_layer.cqt_kernels_imag"}
    assert set(ours) <= set(saved)
    for k in ours:
        assert torch.equal(ours[k], saved[k]), k
    assert task_cfg.sample_rate == 24000 and list(task_cfg.labels) == LABELS


def test_original_checkpoint_converts_and_verifies(original_ckpt, tmp_path):
    import json

    from mert_fairseq.export.convert import convert_checkpoint

    result = convert_checkpoint(original_ckpt, tmp_path / "MERT-v1-95M", expected_layout="mert_base")
    report = result["report"]
    assert report["passed"] and report["hubert_compatible"]
    assert max(report["max_abs_diff"].values()) <= 1e-4
    config = json.loads((tmp_path / "MERT-v1-95M" / "config.json").read_text())
    assert config["hidden_size"] == D and not config["do_stable_layer_norm"] and config["feat_extract_norm"] == "group"


def test_original_checkpoint_restores_for_continued_pretraining(original_ckpt, tmp_path):
    data = make_tone_dataset(tmp_path / "data", n_clips=8, n_classes=N_CODES, label="encodec_0")
    for name in LABELS[1:]:  # 8 codebooks (same tone labels), 4 + 8 symbols per dictionary as in the checkpoint
        for split in ("train", "valid"):
            shutil.copyfile(Path(data["label_dir"]) / f"{split}.encodec_0", Path(data["label_dir"]) / f"{split}.{name}")
        shutil.copyfile(Path(data["label_dir"]) / "dict.encodec_0.txt", Path(data["label_dir"]) / f"dict.{name}.txt")
    run = tmp_path / "continued"
    log = train({**data, "labels": LABELS}, run,
           # the architecture of the checkpoint
           f"model.encoder_layers={LAYERS}", f"model.encoder_embed_dim={D}", f"model.encoder_ffn_embed_dim={FFN}",
           f"model.encoder_attention_heads={HEADS}", f"model.conv_feature_layers='{CONV_SPEC}'",
           f"model.conv_pos={POS}", f"model.conv_pos_groups={POS_GROUPS}", f"model.final_dim={FINAL}",
           "model.untie_final_proj=true", f"++model.audio_cqt_bins={CQT_BINS}", "++model.extractor_mode=default",
           "model.feature_extractor_cqt=false",  # the demo config adds a CQT input; the original has none
           # continue from the original checkpoint with fresh optimizer, schedule and data iterator
           f"checkpoint.restore_file={original_ckpt}", "checkpoint.reset_optimizer=true",
           "checkpoint.reset_dataloader=true", "checkpoint.reset_meters=true", "checkpoint.reset_lr_scheduler=true",
           "optimization.max_update=2", "dataset.disable_validation=true", "dataset.max_tokens=96000",
           "checkpoint.save_interval_updates=1000", "lr_scheduler.warmup_updates=1")
    assert re.search(r"Loaded checkpoint .*MERT-v1-95M_fairseq\.pt", log), log[-3000:]

    from mert_fairseq.checkpoint.safe_load import load_checkpoint_state

    new = load_checkpoint_state(run / "checkpoints" / "checkpoint_last.pt")
    assert new["optimizer_history"][-1]["num_updates"] == 2
    old = original_state_dict()
    # two small Adam steps away from the original weights (a fresh init would be O(1) away)
    for key in ("encoder.layers.0.fc1.weight", "label_embs_concat", "final_proj.weight",
                "encoder.pos_conv.0.weight_v", "encoder_cqt_model.fc.weight"):
        diff = (new["model"][key].float() - old[key]).abs().max()
        assert 0 < diff < 0.05, (key, float(diff))
    assert not any("cqt_kernels" in k for k in new["model"])  # kernels are no longer stored
