"""The benchmark's results as text: the step table (ours vs reference) and the training-log summary."""
from __future__ import annotations

from typing import Optional

from mert_fairseq.perf.timing import PHASES


def format_table(res: dict) -> str:
    r = res["results"]
    modes = list(r)
    lines = [
        f"config {res['config']} {' '.join(res['overrides'])} | {res['device']} {res['dtype']} | "
        f"batch {res['batch_size']} x {res['seconds_per_clip']} s | {res['parameters'] / 1e6:.1f}M params | "
        f"torch {res['machine']['torch']}, {res['machine']['torch_threads']} threads, {res['machine']['processor']}",
        "",
        "| | " + " | ".join(modes) + " |",
        "|---|" + "---|" * len(modes),
        "| step (median) s | " + " | ".join(f"{r[m]['step_s']:.3f}" for m in modes) + " |",
        "| updates/s | " + " | ".join(f"{r[m]['updates_per_s']:.3f}" for m in modes) + " |",
        "| audio-seconds/s | " + " | ".join(f"{r[m]['audio_seconds_per_s']:.2f}" for m in modes) + " |",
        "| peak memory MB | " + " | ".join(f"{r[m]['peak_memory_mb']:.0f}" for m in modes) + " |",
        "| TFLOP/s | " + " | ".join(f"{r[m]['tflops_per_s']:.3f}" for m in modes) + " |",
        "| MFU | " + " | ".join(_percent(r[m]["mfu"]) for m in modes) + " |",
    ]
    for k in PHASES:
        if all(k in r[m]["split_s"] for m in modes):
            lines.append(f"| {k} s | " + " | ".join(f"{r[m]['split_s'][k]:.3f}" for m in modes) + " |")
    lines += ["", f"FLOPs per step (forward + backward): {res['flops_per_step'] / 1e9:.1f} GFLOP = "
                  f"{res['flops_per_audio_second'] / 1e9:.2f} GFLOP per audio-second; peak: "
                  + (f"{res['peak_tflops']:.0f} TFLOP/s ({res['peak_source']})" if res["peak_tflops"] else res["peak_source"])]
    for fast, slow, what in (("ours", "reference", "ours vs reference"), ("compiled", "ours", "compiled vs eager")):
        if f"speedup_{fast}_vs_{slow}" in res:
            s = res[f"speedup_{fast}_vs_{slow}"]
            lines += ["", f"{what}: {s['median_of_step_ratios']:.2f}x (median of interleaved step ratios), "
                          f"{s['ratio_of_medians']:.2f}x (ratio of medians)"]
    d = res["data_loading"]
    lines.append(f"data loading (1 process): {d['text_labels_s'] * 1e3:.1f} ms/batch text labels, "
                 f"{d['npy_labels_s'] * 1e3:.1f} ms/batch .npy labels; workers to keep up: {d['num_workers_to_keep_up']}")
    if "cqt" in res and "ours_s" in res["cqt"]:
        c = res["cqt"]
        lines.append(f"CQT teacher ({c['n_bins']} bins, batch {c['batch']}): ours {c['ours_s'] * 1e3:.1f} ms "
                     f"(first call {c['ours_first_call_s']:.2f} s builds kernels), nnAudio fp32 {c['nnaudio_fp32_s'] * 1e3:.0f} ms "
                     f"-> {c['speedup_vs_nnaudio_fp32']:.0f}x; max |diff| = {c['max_abs_diff_rel_to_max']:.1e} x max magnitude")
    if "data_prep" in res:
        p = res["data_prep"]
        if "audio_hours_per_hour" in p.get("encodec", {}):
            lines.append(f"EnCodec labels: {p['encodec']['audio_hours_per_hour']:.1f} audio-hours/hour "
                         f"({p['audio_seconds']:.0f} s audio in {p['encodec']['seconds']:.1f} s)")
        else:
            lines.append(f"EnCodec labels: {p.get('encodec', {}).get('skipped', 'n/a')}")
        if "apply_audio_hours_per_hour" in p.get("kmeans", {}):
            k = p["kmeans"]
            lines.append(f"MFCC k-means labels (apply): {k['apply_audio_hours_per_hour']:.0f} audio-hours/hour; "
                         f"fit {k['fit_clusters']} clusters on {k['fit_frames']} frames: {k['fit_s']:.1f} s")
        else:
            lines.append(f"k-means labels: {p.get('kmeans', {}).get('skipped', 'n/a')}")
    return "\n".join(lines)


def _percent(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def format_train_log(res: dict) -> str:
    return (f"{res['train_log']}: updates {res['first_update']}-{res['last_update']} "
            f"({res['steady_intervals']} of {res['intervals']} log intervals), "
            f"{res['updates_per_s']:.3f} updates/s x {res['clips_per_update']:.0f} clips x {res['clip_seconds']:.2f} s = "
            f"{res['audio_seconds_per_s']:.1f} audio-s/s; {res['flops_per_audio_second'] / 1e9:.2f} GFLOP per audio-s "
            f"-> {res['tflops_per_s']:.2f} TFLOP/s, MFU {_percent(res['mfu'])} "
            f"(peak: {res['peak_tflops'] or 'unknown'}, {res['peak_source']}, device {res['device_name']})")
