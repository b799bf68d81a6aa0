#!/usr/bin/env bash
# MERT pretraining launcher.
#
# No arguments: the demo, end to end in about 3 minutes on 2 CPU cores (measured 2 min 25 s; docs/probing.md):
#   demo corpus (+ held-out probe clips) -> manifest -> K-means labels (four streams: MFCC, log-CQT,
#   bass-relative chroma and high-band onset density; DEMO_KMEANS_FEATURE=mfcc for MFCC codes only, =mfcc+cqt
#   for two streams, =mfcc+cqt+chord for the three of the previous recipe, any
#   '+'-joined list of prepare_kmeans_labels.py features) -> MERT_demo_cpu training (the recipe is the YAML;
#   the launcher adds the data paths, the probe clips and, for DEMO_KMEANS_FEATURE, task.labels; online
#   probes) -> probe table of the model vs random init vs MFCC on the held-out clips + PNGs.
#   Steps already done are skipped; training resumes from checkpoint_last.pt.
#     bash scripts/run_training.sh
#     bash scripts/run_training.sh optimization.max_update=2000   # demo with hydra overrides
#
# GPU runs (the original call form):
#   bash scripts/run_training.sh WORKER_RANK PLATFORM CONFIG_NAME [SETTING MASTER_ADDR PORT] [hydra overrides...]
#     WORKER_RANK  index of this node (0 on the first node); global rank = WORKER_RANK * NPROCS_PER_NODE
#     PLATFORM     local  : fairseq spawns NPROCS_PER_NODE workers on this node (single or multi node)
#                  slurm  : run under `srun` (one task per node or one per GPU); ranks from SLURM_* variables
#                  torchrun: launched by `torchrun --nproc_per_node ...` (see README); ranks from its env
#     CONFIG_NAME  a yaml in configs/pretrain, e.g. MERT_RVQ-VAE_CQT_95M, MERT_RVQ-VAE_CQT_330M, MERT_KMeans_CQT_95M
#     SETTING      a run name (default: CONFIG_NAME); checkpoints go to $SAVE_DIR/ckpt_$SETTING/$CONFIG_NAME
#     MASTER_ADDR PORT  rendezvous of node 0 (default 127.0.0.1 39683; slurm: the allocation's first host)
#   Paths and sizes come from the environment:
#     DATA_DIR (manifests), LABEL_DIR (labels + dicts), SAVE_DIR (default ./runs),
#     NPROCS_PER_NODE (default: GPUs on this node), WORLD_SIZE (default: NPROCS_PER_NODE, i.e. one node),
#     MAX_TOKENS, NUM_WORKERS, LABELS (hydra list, default the 8 EnCodec codebooks), LABEL_RATE (75)
#   Anything after the six positional arguments is passed to fairseq-hydra-train as hydra overrides, e.g.
#     DATA_DIR=/data/tsv LABEL_DIR=/data/labels bash scripts/run_training.sh 0 local MERT_RVQ-VAE_CQT_95M \
#       run1 127.0.0.1 39683 optimization.max_update=1000 common.bf16=true common.fp16=false
#   (a key=value where a positional argument belongs is refused). Ranks per platform:
#     local    rank WORKER_RANK * NPROCS_PER_NODE (+ local index); one process per node (NPROCS_PER_NODE=1,
#              e.g. CPU nodes) runs the rank itself, more are spawned by fairseq; CPU uses gloo
#     slurm    MASTER_ADDR = first host of SLURM_JOB_NODELIST (scontrol show hostnames) unless given;
#              one task per node (SLURM_NTASKS_PER_NODE=1): rank SLURM_NODEID * NPROCS_PER_NODE, fairseq spawns
#              NPROCS_PER_NODE; one task per GPU: rank SLURM_PROCID, device SLURM_LOCALID, world SLURM_NTASKS
#     torchrun rank RANK, device LOCAL_RANK, world WORLD_SIZE, rendezvous MASTER_ADDR:MASTER_PORT (env://)
#   DRY_RUN=1 prints the fairseq-hydra-train command instead of running it. -h / --help: this text.
#   TRAIN_MODULE=mert_fairseq.testing.fault_train (tests) trains through the fault-injection entry point
#   (`python -m`; it arms the MERT_FAULT_* hooks, docs/reliability.md) instead of fairseq-hydra-train.
#   Exit code 75: stopped by SIGUSR1/SIGTERM after saving checkpoint_last.pt (rerun to continue; README).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# This repo's .venv when there is one; else the python3 on PATH (an image's own, PYTHONPATH=/extra/site).
if [[ -x "$ROOT/.venv/bin/python" ]]; then
  PY="$ROOT/.venv/bin/python"; TRAIN=("$ROOT/.venv/bin/fairseq-hydra-train")
else
  PY="$(command -v python3)"; TRAIN=("$PY" -m fairseq_cli.hydra_train)
fi
if [[ -n "${TRAIN_MODULE:-}" ]]; then
  TRAIN=("$PY" -m "$TRAIN_MODULE"); export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
CONFIG_DIR="$ROOT/configs/pretrain"
USER_DIR="$ROOT/mert_fairseq"
say() { printf '\n[run_training] %s\n' "$*"; }
say_t() { printf '\n[run_training %ds] %s\n' "$SECONDS" "$*"; }  # demo: seconds since the start

run_demo() {
  local demo="${DEMO_DIR:-$ROOT/data/demo}"
  local corpus="$demo/corpus" probe="$demo/probe" audio="$demo/audio24k" manifest="$demo/manifest"
  local default_feature=mfcc+cqt+chord+onset  # timbre, pitch, chord-quality and percussion codes: docs/probing.md
  local feature="${DEMO_KMEANS_FEATURE:-$default_feature}" save="${SAVE_DIR:-$ROOT/runs/demo}" labels="$demo/labels"
  [[ "$feature" == "$default_feature" ]] || labels+="_$feature"
  SECONDS=0
  say_t "1/5 demo corpus -> $corpus; held-out probe clips (another seed, never trained on) -> $probe"
  "$PY" "$ROOT/scripts/make_demo_corpus.py" --out-dir "$corpus" --num-clips "${DEMO_CLIPS:-200}" --seconds 6
  "$PY" "$ROOT/scripts/make_demo_corpus.py" --out-dir "$probe" --num-clips "${DEMO_PROBE_CLIPS:-200}" --seconds 6 --seed 1
  if [[ -s "$manifest/train.tsv" && -s "$manifest/valid.tsv" ]]; then
    say_t "2/5 manifest: already in $manifest"
  else
    say_t "2/5 manifest -> $manifest"
    "$PY" "$ROOT/scripts/prepare_manifest.py" --root-dir "$corpus" --converted-root-dir "$audio" \
      --out-dir "$manifest" --target-rate 24000 --valid-percent 0.1 --seed 1
  fi
  # one label stream per feature, one call: the first is "kmeans", the others are named by their feature
  # ("mfcc" or "chroma" -> kmeans; "mfcc+cqt" -> kmeans + cqt; "mfcc+cqt+chord+onset" -> kmeans + cqt + chord + onset)
  local names=kmeans rest="${feature#*+}"
  if [[ "$feature" == *+* ]]; then names+=",${rest//+/,}"; fi
  # onset codes: onset density (the flux averaged over 1 s) of the mel bands at 2 kHz and above (hi-hats,
  # snares, clicks; not the bass and melody attacks): percussion codes for every frame
  local onset_args=()
  [[ "+$feature+" != *+onset+* ]] || onset_args=(--onset-smooth-frames 75 --onset-min-hz 2000)
  local stream done=1
  for stream in ${names//,/ }; do
    [[ -s "$labels/train.$stream" && -s "$labels/valid.$stream" && -s "$labels/dict.$stream.txt" ]] || done=0
  done
  if [[ "$done" == 1 ]]; then
    say_t "3/5 K-means labels: already in $labels ($names)"
  else
    say_t "3/5 K-means labels ($feature features, 100 clusters fitted on 20k frames) -> $labels ($names)"
    OMP_NUM_THREADS=1 "$PY" "$ROOT/scripts/prepare_kmeans_labels.py" all --manifest-dir "$manifest" \
      --label-dir "$labels" --kmeans-model "$labels/{name}.npz" --name "$names" --n-clusters 100 \
      --feature "$feature" --max-fit-frames 20000 "${onset_args[@]}"
  fi
  # the recipe (four streams, their heads, masking, loss, updates) is MERT_demo_cpu.yaml; the launcher adds data
  # paths, and the label streams when DEMO_KMEANS_FEATURE chose other features
  local labels_arg=()
  [[ "$feature" == "$default_feature" ]] || labels_arg=("task.labels=[$names]")
  say_t "4/5 training MERT_demo_cpu -> $save (resumes from checkpoint_last.pt when present)"
  local log="$save/train.log" ckpt="$save/checkpoints/checkpoint_last.pt"
  mkdir -p "$save"
  "${TRAIN[@]}" --config-dir "$CONFIG_DIR" --config-name MERT_demo_cpu \
    common.user_dir="$USER_DIR" task.data="$manifest" task.label_dir="$labels" task.probe_csv="$probe/metadata.csv" \
    checkpoint.save_dir="$save/checkpoints" hydra.run.dir="$save" "${labels_arg[@]}" "$@" 2>&1 | tee -a "$log" \
    | grep --line-buffered -E "\]\[(train_inner|train|valid)\]|Loaded checkpoint|done training|online probe \(|Error|error" || true
  [[ "${PIPESTATUS[0]}" == 0 ]] || { echo "training failed; see $log" >&2; exit 1; }
  local acc
  acc=$(grep -E "\]\[valid\]" "$log" | tail -1 | grep -oE "correct_m_0 [0-9.]+" | awk '{print $2}')
  say_t "5/5 probes on the held-out clips: demo model vs the same model at random init vs MFCC statistics"
  # recipes were chosen on probe rows :100; the table reports rows 100: (clips no choice looked at;
  # DEMO_PROBE_ROWS=START:END for others),
  # MERT layers pooled by mean+std (the MFCC baseline's statistics) and by mean (MARBLE's default)
  local pool out clips="${DEMO_PROBE_CLIPS:-200}" rows
  rows="${DEMO_PROBE_ROWS:-$(( clips >= 20 ? clips / 2 : 0 )):}"  # default: the second half (all of a tiny set)
  for pool in mean+std mean; do
    out="$save/probe"; [[ "$pool" == mean ]] && out+="_mean"
    "$PY" "$ROOT/scripts/probe.py" "demo=$ckpt" "random-init=random-init:$ckpt" mfcc --labels "$probe/metadata.csv" \
      --tasks "${DEMO_PROBE_TASKS:-timbre,chord_timbre,key,mode,percussion,tempo_bpm:regression}" --folds 5 \
      --rows "$rows" --out-dir "$out" --no-progress --threads 1 --pool "$pool"
  done
  "$PY" "$ROOT/scripts/plot_training.py" "$log" --out "$save/training.png" --title "MERT_demo_cpu"
  say_t "done."
  echo "  corpus:      $corpus (probe clips: $probe)"
  echo "  manifests:   $manifest"
  echo "  labels:      $labels"
  echo "  checkpoints: $save/checkpoints (checkpoint_last.pt)"
  echo "  log:         $log"
  echo "  probe:       $save/probe/probe.md, probe.json, probe_layers.png (score per layer per task; mean pooling: probe_mean/)"
  echo "  training:    $save/training.png (loss, masked accuracy, CQT loss, lr, audio-s/s, online probes)"
  echo "  final validation masked accuracy (K-means targets, chance ~1%): ${acc:-n/a}"
}

if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 0
fi
if [[ $# -eq 0 || "$1" == *=* ]]; then  # the demo; key=value arguments are hydra overrides for it
  run_demo "$@"
  exit 0
fi

POSITIONAL=(WORKER_RANK PLATFORM CONFIG_NAME SETTING MASTER_ADDR PORT)
for (( i = 1; i <= 6 && i <= $#; i++ )); do
  if [[ "${!i}" == *=* ]]; then
    echo "error: argument $i ('${!i}') is a hydra override, but position $i is ${POSITIONAL[i-1]}; give all six" \
      "positional arguments (WORKER_RANK PLATFORM CONFIG_NAME SETTING MASTER_ADDR PORT) before any override," \
      "e.g. bash scripts/run_training.sh 0 local MERT_RVQ-VAE_CQT_95M run1 127.0.0.1 39683 ${!i} (see --help)" >&2
    exit 2
  fi
done
ENV_MASTER_ADDR=${MASTER_ADDR:-}  # torchrun's (env://)
WORKER_RANK=$1
PLATFORM=${2:-local}
CONFIG_NAME=${3:-MERT_RVQ-VAE_CQT_95M}
SETTING=${4:-$CONFIG_NAME}
MASTER_ADDR=${5:-}
PORT=${6:-39683}
shift $(( $# < 6 ? $# : 6 ))
[[ "$WORKER_RANK" =~ ^[0-9]+$ ]] || { echo "error: WORKER_RANK must be a node index (0, 1, ...), got '$WORKER_RANK' (see --help)" >&2; exit 2; }
[[ "$PORT" =~ ^[0-9]+$ ]] || { echo "error: PORT must be a number, got '$PORT'" >&2; exit 2; }
[[ -f "$CONFIG_DIR/$CONFIG_NAME.yaml" ]] || { echo "error: unknown config $CONFIG_NAME (no $CONFIG_DIR/$CONFIG_NAME.yaml)" >&2; exit 2; }
: "${DATA_DIR:?set DATA_DIR to the directory with train.tsv/valid.tsv}"
: "${LABEL_DIR:?set LABEL_DIR to the directory with the label files and dict.*.txt}"
if [[ "$CONFIG_NAME" == *KMeans* ]]; then DEFAULT_LABELS='[kmeans]'; else
  DEFAULT_LABELS='[encodec_0,encodec_1,encodec_2,encodec_3,encodec_4,encodec_5,encodec_6,encodec_7]'; fi
LABELS=${LABELS:-$DEFAULT_LABELS}
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
NPROCS_PER_NODE=${NPROCS_PER_NODE:-$(( GPUS > 0 ? GPUS : 1 ))}
WORLD_SIZE_GIVEN=${WORLD_SIZE:-}
WORLD_SIZE=${WORLD_SIZE:-$NPROCS_PER_NODE}
SAVE_DIR=${SAVE_DIR:-$ROOT/runs}
CKPT_DIR="$SAVE_DIR/ckpt_$SETTING/$CONFIG_NAME"
mkdir -p "$CKPT_DIR"

args=(--config-dir "$CONFIG_DIR" --config-name "$CONFIG_NAME"
  common.user_dir="$USER_DIR" task.data="$DATA_DIR" task.label_dir="$LABEL_DIR" "task.labels=$LABELS"
  model.label_rate="${LABEL_RATE:-75}" checkpoint.save_dir="$CKPT_DIR" hydra.run.dir="$CKPT_DIR")
[[ -n "${MAX_TOKENS:-}" ]] && args+=(dataset.max_tokens="$MAX_TOKENS")
[[ -n "${NUM_WORKERS:-}" ]] && args+=(dataset.num_workers="$NUM_WORKERS")
one_rank() {  # this process is rank $1 on device $2 (no spawning by fairseq)
  args+=(distributed_training.distributed_rank="$1" distributed_training.device_id="$2"
    distributed_training.distributed_no_spawn=true distributed_training.nprocs_per_node=1)
}
case "$PLATFORM" in
  local)
    MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
    if (( NPROCS_PER_NODE == 1 )); then one_rank "$WORKER_RANK" 0; else
      args+=(distributed_training.nprocs_per_node="$NPROCS_PER_NODE"
        distributed_training.distributed_rank=$(( WORKER_RANK * NPROCS_PER_NODE ))); fi
    ;;
  slurm)
    : "${SLURM_NNODES:?slurm: run under srun (SLURM_NNODES is not set)}"
    if [[ -z "$MASTER_ADDR" ]]; then
      # the whole list, then its first line (`| head -n 1` can end scontrol with SIGPIPE: exit 141 under pipefail)
      MASTER_ADDR=$(scontrol show hostnames "${SLURM_STEP_NODELIST:-${SLURM_JOB_NODELIST:?slurm: no SLURM_JOB_NODELIST}}")
      MASTER_ADDR=${MASTER_ADDR%%$'\n'*}
    fi
    TASKS_PER_NODE=${SLURM_NTASKS_PER_NODE:-$(( ${SLURM_NTASKS:?slurm: no SLURM_NTASKS} / SLURM_NNODES ))}
    TASKS_PER_NODE=${TASKS_PER_NODE%%(*}  # "8(x2)" -> 8
    if (( TASKS_PER_NODE == 1 )); then  # one task per node: fairseq spawns NPROCS_PER_NODE ranks
      SLURM_WORLD=$(( SLURM_NNODES * NPROCS_PER_NODE ))
      if (( NPROCS_PER_NODE == 1 )); then one_rank "${SLURM_NODEID:?slurm: no SLURM_NODEID}" 0; else
        args+=(distributed_training.nprocs_per_node="$NPROCS_PER_NODE"
          distributed_training.distributed_rank=$(( ${SLURM_NODEID:?slurm: no SLURM_NODEID} * NPROCS_PER_NODE ))); fi
    else  # one task per GPU
      SLURM_WORLD=${SLURM_NTASKS:-$(( SLURM_NNODES * TASKS_PER_NODE ))}
      one_rank "${SLURM_PROCID:?slurm: no SLURM_PROCID}" "${SLURM_LOCALID:?slurm: no SLURM_LOCALID}"
    fi
    if [[ -n "${WORLD_SIZE_GIVEN:-}" && "$WORLD_SIZE" != "$SLURM_WORLD" ]]; then
      echo "error: WORLD_SIZE=$WORLD_SIZE but the Slurm allocation gives $SLURM_WORLD ranks" >&2; exit 2
    fi
    WORLD_SIZE=$SLURM_WORLD
    ;;
  torchrun)
    MASTER_ADDR=${MASTER_ADDR:-${ENV_MASTER_ADDR:?torchrun: run under torchrun (MASTER_ADDR is not set)}}
    one_rank "${RANK:?torchrun: no RANK}" "${LOCAL_RANK:?torchrun: no LOCAL_RANK}"
    ;;
  *) echo "error: PLATFORM must be local, slurm or torchrun (got $PLATFORM)" >&2; exit 2 ;;
esac
args+=(distributed_training.distributed_world_size="$WORLD_SIZE")
if [[ "$PLATFORM" == torchrun ]]; then args+=(distributed_training.distributed_init_method=env://)
elif (( WORLD_SIZE > 1 )); then args+=(distributed_training.distributed_init_method="tcp://$MASTER_ADDR:$PORT"); fi
(( GPUS > 0 || WORLD_SIZE == 1 )) || args+=(distributed_training.distributed_backend=gloo)  # CPU nodes
echo "[run_training] $CONFIG_NAME on $PLATFORM: node $WORKER_RANK, $NPROCS_PER_NODE procs/node, world $WORLD_SIZE, master $MASTER_ADDR:$PORT"
echo "[run_training] checkpoints: $CKPT_DIR"
if [[ -n "${DRY_RUN:-}" ]]; then printf '%q ' "${TRAIN[@]}" "${args[@]}" "$@"; echo; exit 0; fi
exec "${TRAIN[@]}" "${args[@]}" "$@"
