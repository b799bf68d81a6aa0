"""One command for a GPU box (`bash scripts/gpu_check.sh`): benchmark ours vs the reference in fp16
and bf16 with MFU, the whole step compiled (`--compile-step`, as task.compile_step), each with a
torch.profiler summary (top kernels, share of time the GPU idles waiting for the host), short `fairseq-hydra-train` runs
of the 95M (fp16, bf16) and 330M configs (DDP, FSDP, FSDP + CPU offload) through
scripts/run_training.sh on demo data with EnCodec labels (random-init EnCodec), the steady-state
throughput and MFU of each run from its log, and whether each process exited within 10 s of its last
log line. Prints one table and writes JSON.

`--cpu-smoke` runs the same pipeline on the CPU with tiny sizes (a dry run of the script itself).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from mert_fairseq.common.recipes import package_parent

REPO_ROOT = package_parent()  # a source checkout: scripts/run_training.sh is what the check exercises
EXIT_LIMIT_S = 10.0


def run_timed(cmd: Sequence[str], log_path: Path, env: Optional[dict] = None, timeout: float = 3600) -> dict:
    """Run a command, tee its output to `log_path`; return code, wall time and the seconds between its
    last output line and its exit (a process still alive `timeout` s after start is killed)."""
    start = time.monotonic()
    last = [start]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=REPO_ROOT, env={**os.environ, **(env or {})}, start_new_session=True)

        def pump():
            for line in proc.stdout:
                log.write(line)
                log.flush()
                last[0] = time.monotonic()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # the whole process group: training spawns loader/DDP workers
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        exited = time.monotonic()
        reader.join(5)
    delay = exited - last[0]
    return {"cmd": " ".join(map(str, cmd)), "rc": rc, "wall_s": exited - start, "exit_after_last_line_s": delay,
            "exited_in_time": rc == 0 and delay < EXIT_LIMIT_S, "log": str(log_path)}


def prepare_demo_data(root: Path, clips: int, seconds: float, device: str) -> Dict[str, str]:
    """Demo corpus -> 24 kHz manifests -> EnCodec labels (8 codebooks, random-init EnCodec)."""
    py = sys.executable
    corpus, audio, manifest, labels = (root / d for d in ("corpus", "audio24k", "manifest", "labels"))
    steps = [
        [py, "scripts/make_demo_corpus.py", "--out-dir", corpus, "--num-clips", clips, "--seconds", seconds],
        [py, "scripts/prepare_manifest.py", "--root-dir", corpus, "--converted-root-dir", audio, "--out-dir",
         manifest, "--target-rate", 24000, "--valid-percent", 0.1, "--seed", 1],
        [py, "scripts/prepare_codecs_from_manifest.py", "--manifest-dir", manifest, "--splits", "train,valid",
         "--label-dir", labels, "--random-init", "--device", device],
    ]
    if not (labels / "valid.encodec_7").is_file():
        for cmd in steps:
            subprocess.run([str(c) for c in cmd], check=True, cwd=REPO_ROOT)
    return {"DATA_DIR": str(manifest), "LABEL_DIR": str(labels)}


def training_runs(smoke: bool, quick: bool = False) -> List[dict]:
    """(name, config, overrides) of the training checks; tiny models with --cpu-smoke."""
    if smoke:
        tiny = ["++model.encoder_layers=1", "++model.encoder_embed_dim=64", "++model.encoder_ffn_embed_dim=128",
                "++model.encoder_attention_heads=4", "++model.conv_feature_layers='[(64,10,5)]+[(64,3,2)]*4+[(64,2,2)]*2'",
                "++model.final_dim=32", "++model.audio_cqt_bins=84", "++model.conv_pos=16", "++model.conv_pos_groups=4",
                "common.cpu=true", "common.fp16=false", "dataset.max_tokens=240000", "common.log_interval=1"]
        return [{"name": "95M-shape fp32 (smoke)", "config": "MERT_RVQ-VAE_CQT_95M", "updates": 3, "overrides": tiny},
                {"name": "95M-shape adamw_torch (smoke)", "config": "MERT_RVQ-VAE_CQT_95M", "updates": 3,
                 "overrides": tiny + ["optimizer._name=adamw_torch"]}]
    log = ["common.log_interval=10", "dataset.validate_interval_updates=100", "checkpoint.save_interval_updates=1000"]
    bf16 = ["common.fp16=false", "common.bf16=true"]
    compiled = ["task.compile_step=true"]
    big = ["common.log_interval=5", "dataset.disable_validation=true"]
    fsdp = [  # 330M, fp16 (the recipe's precision): DDP vs FSDP (fairscale) vs FSDP + CPU offload, same batches
        {"name": "330M fp16 DDP", "config": "MERT_RVQ-VAE_CQT_330M", "updates": 20, "overrides": big},
        {"name": "330M fp16 FSDP", "config": "MERT_RVQ-VAE_CQT_330M", "updates": 20,
         "overrides": big + ["distributed_training.ddp_backend=fully_sharded"]},
        {"name": "330M fp16 FSDP cpu_offload", "config": "MERT_RVQ-VAE_CQT_330M", "updates": 20,
         "overrides": big + ["distributed_training.ddp_backend=fully_sharded", "distributed_training.cpu_offload=true"]},
    ]
    if quick:  # one bf16 and one fp16 (fused AdamW) 95M run and the 330M: fits a 10-minute device lease
        return [{"name": "95M bf16", "config": "MERT_RVQ-VAE_CQT_95M", "updates": 100, "overrides": log + bf16},
                {"name": "95M fp16 adamw_torch", "config": "MERT_RVQ-VAE_CQT_95M", "updates": 100,
                 "overrides": log + ["optimizer._name=adamw_torch"]},
                {"name": "330M bf16", "config": "MERT_RVQ-VAE_CQT_330M", "updates": 20,
                 "overrides": ["common.log_interval=5", "dataset.disable_validation=true"] + bf16}] + fsdp[:2]
    return [
        {"name": "95M fp16", "config": "MERT_RVQ-VAE_CQT_95M", "updates": 150, "overrides": log},
        {"name": "95M bf16", "config": "MERT_RVQ-VAE_CQT_95M", "updates": 150,
         "overrides": log + ["common.fp16=false", "common.bf16=true"]},
        {"name": "95M fp16 adamw_torch", "config": "MERT_RVQ-VAE_CQT_95M", "updates": 150,
         "overrides": log + ["optimizer._name=adamw_torch"]},
        {"name": "95M bf16 adamw_torch", "config": "MERT_RVQ-VAE_CQT_95M", "updates": 150,
         "overrides": log + ["common.fp16=false", "common.bf16=true", "optimizer._name=adamw_torch"]},
        {"name": "95M bf16 adamw_torch compiled step", "config": "MERT_RVQ-VAE_CQT_95M", "updates": 150,
         "overrides": log + bf16 + ["optimizer._name=adamw_torch"] + compiled},
        {"name": "330M bf16 adamw_torch compiled step", "config": "MERT_RVQ-VAE_CQT_330M", "updates": 20,
         "overrides": ["common.log_interval=5", "dataset.disable_validation=true"] + bf16
         + ["optimizer._name=adamw_torch"] + compiled},
    ] + fsdp


def benchmark_runs(smoke: bool, quick: bool = False) -> List[dict]:
    if smoke:
        small = ["--config", "MERT_demo_cpu", "--device", "cpu", "--batch-size", "2", "--seconds", "1",
                 "--warmup", "0", "--steps", "1", "--split-steps", "0", "--skip-cqt", "--skip-data-prep",
                 "--peak-tflops", "1.0", "--profile-steps", "1"]
        return [{"name": "demo fp32 (smoke)", "args": small}]
    base = ["--config", "MERT_RVQ-VAE_CQT_95M", "--device", "cuda", "--seconds", "5", "--warmup", "3", "--steps", "10",
            "--split-steps", "2", "--skip-cqt", "--skip-data-prep"]
    runs = [{"name": f"95M {dt} batch {b}" + (" (no reference)" if b > 16 else ""),
             "args": base + ["--dtype", dt, "--batch-size", str(b)] + (["--no-reference"] if b > 16 else [])
             + (["--profile-steps", "3"] if (dt, b) == ("bf16", 16) else [])}
            for dt in ("fp16", "bf16") for b in (16, 64) if not (quick and dt == "fp16" and b == 64)]
    for b in (16,) if quick else (16, 64):  # the whole step compiled (task.compile_step)
        runs.append({"name": f"95M bf16 batch {b} compiled step",
                     "args": base + ["--dtype", "bf16", "--batch-size", str(b), "--no-reference", "--compile-step",
                                     "--profile-steps", "3"]})
    return runs


def run_all(out_dir: Path, smoke: bool, num_workers: int, quick: bool = False,
            deadline_s: float = float("inf")) -> dict:
    """Every check in turn; a check that would start with under 30 s of `deadline_s` left is skipped,
    and each one is killed when the deadline passes (both recorded in the results)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    device = "cpu" if smoke else "cuda"
    results: dict = {"smoke": smoke, "quick": quick, "benchmarks": [], "training": [], "skipped": []}
    end = time.monotonic() + deadline_s
    left = lambda: end - time.monotonic()  # noqa: E731
    if not smoke:
        import torch

        results["gpu"] = torch.cuda.get_device_name(0)
        results["gpu_memory_gb"] = torch.cuda.get_device_properties(0).total_memory / 1024 ** 3
    for b in benchmark_runs(smoke, quick):
        if left() < 30:
            results["skipped"].append(b["name"])
            continue
        path = out_dir / f"bench_{len(results['benchmarks'])}.json"
        r = run_timed([sys.executable, "-m", "mert_fairseq.perf.step_benchmark", *b["args"], "--out", str(path)],
                      out_dir / f"bench_{len(results['benchmarks'])}.log", timeout=left())
        if path.is_file():
            r["result"] = {k: v for k, v in json.loads(path.read_text()).items()
                           if k in ("mfu", "flops_per_audio_second", "peak_tflops", "results", "speedup_ours_vs_reference",
                                    "profile", "compile_step")}
        results["benchmarks"].append({"name": b["name"], **r})
    data_env = prepare_demo_data(out_dir / "data", clips=24 if smoke else (100 if quick else 200),
                                 seconds=3 if smoke else 6, device=device)
    for i, t in enumerate(training_runs(smoke, quick)):
        if left() < 30:
            results["skipped"].append(t["name"])
            continue
        env = {**data_env, "SAVE_DIR": str(out_dir / f"train_{i}"), "NUM_WORKERS": str(num_workers)}
        cmd = ["bash", "scripts/run_training.sh", "0", "local", t["config"], f"run{i}", "127.0.0.1", str(39700 + i),
               f"optimization.max_update={t['updates']}", *t["overrides"]]
        r = run_timed(cmd, out_dir / f"train_{i}.log", env=env, timeout=left())
        r["train_log"] = _train_log_mfu(out_dir / f"train_{i}.log", t, smoke)
        r["peak_gb"] = peak_memory_gb(out_dir / f"train_{i}.log", results.get("gpu_memory_gb"))
        results["training"].append({"name": t["name"], "updates": t["updates"], **r})
    results["all_exited_in_time"] = all(r["exited_in_time"] for r in results["training"])
    return results


def peak_memory_gb(log: Path, total_gb: Optional[float]) -> Optional[float]:
    """Peak GPU memory of a training run: the device's total minus the smallest `gb_free` fairseq logged
    (fairseq logs total - max_memory_allocated per interval); None on CPU or without such lines."""
    import re

    free = [float(x) for x in re.findall(r"gb_free[=| ]+([0-9.]+)", log.read_text(errors="replace"))]
    return None if total_gb is None or not free else total_gb - min(free)


def _train_log_mfu(log: Path, run: dict, smoke: bool) -> Optional[dict]:
    from mert_fairseq.perf import step_benchmark

    args = ["--config", run["config"], "--train-log", str(log)] + (["--peak-tflops", "1.0"] if smoke else [])
    args += [x for o in run["overrides"] if o.lstrip("+").startswith("model.")
             for x in ("-o", o.lstrip("+"))]
    try:
        return step_benchmark.run_train_log(step_benchmark.build_parser().parse_args(args))
    except Exception as exc:  # a failed run has no train_inner lines: reported in the table
        return {"error": f"{type(exc).__name__}: {exc}"}


def format_results(res: dict) -> str:
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f} %"  # noqa: E731
    gb = lambda x: "n/a" if x is None else f"{x:.1f}"  # noqa: E731
    lines = [f"GPU check on {res.get('gpu', 'cpu (smoke)')}", "",
             "| benchmark | ours audio-s/s | ours MFU | reference audio-s/s | ours vs reference | GPU idle |",
             "|---|---|---|---|---|---|"]
    for b in res["benchmarks"]:
        r = b.get("result", {}).get("results", {})
        ours, ref = r.get("ours", {}), r.get("reference", {})
        sp = b.get("result", {}).get("speedup_ours_vs_reference", {}).get("median_of_step_ratios")
        lines.append(f"| {b['name']} | {ours.get('audio_seconds_per_s', float('nan')):.1f} | {pct(ours.get('mfu'))} | "
                     f"{ref.get('audio_seconds_per_s', float('nan')):.1f} | {'n/a' if sp is None else f'{sp:.2f}x'} | "
                     f"{pct((b.get('result', {}).get('profile') or {}).get('device_idle_share'))} |"
                     + ("" if b["rc"] == 0 else f" FAILED (rc {b['rc']}, {b['log']})"))
    lines += ["", "| fairseq-hydra-train | updates | rc | audio-s/s (steady) | MFU | peak GB | exit after last line |",
              "|---|---|---|---|---|---|---|"]
    for t in res["training"]:
        m = t.get("train_log") or {}
        aps = m.get("audio_seconds_per_s")
        lines.append(f"| {t['name']} | {t['updates']} | {t['rc']} | {'n/a' if aps is None else f'{aps:.1f}'} | "
                     f"{pct(m.get('mfu'))} | {gb(t.get('peak_gb'))} | "
                     f"{t['exit_after_last_line_s']:.1f} s "
                     f"{'ok' if t['exited_in_time'] else 'NOT OK'} |")
    lines.append(f"\nall training processes exited within {EXIT_LIMIT_S:.0f} s: {res['all_exited_in_time']}")
    if res.get("skipped"):
        lines.append(f"skipped at the deadline: {', '.join(res['skipped'])}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default="runs/gpu_check", help="folder for the logs, gpu_check.json and gpu_check.md")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU: checks the script itself")
    p.add_argument("--num-workers", type=int, default=4, help="dataset.num_workers of the training runs")
    p.add_argument("--quick", action="store_true",
                   help="3 benchmarks and 3 training runs (95M bf16, 95M fp16 adamw_torch, 330M bf16): ~6 min on an H100")
    p.add_argument("--deadline-s", type=float, default=float("inf"),
                   help="stop starting checks after this many seconds; a running one is killed at it")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out_dir).resolve()
    res = run_all(out, args.cpu_smoke, args.num_workers, args.quick, args.deadline_s)
    table = format_results(res)
    print(table)
    (out / "gpu_check.md").write_text(table + "\n")
    tmp = out / "gpu_check.json.tmp"
    tmp.write_text(json.dumps(res, indent=2))
    os.replace(tmp, out / "gpu_check.json")
    print(f"\nwritten: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}")
    ok = res["all_exited_in_time"] and all(b["rc"] == 0 for b in res["benchmarks"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
