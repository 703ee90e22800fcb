#!/usr/bin/env bash
# Submit the whole job as four chained SLURM jobs (each starts when the previous one succeeded):
#   1. ingest_array.sbatch  (array: one shard of the scene list per task)
#   2. landcover ingest --finalize  (merge the shards' catalogs; band statistics, splits, dataset.json)
#   3. train_ddp.sbatch     (Lightning DDP, NODES x GPUS_PER_NODE tasks)
#   4. predict_array.sbatch (array: maps of every scene of PREDICT_LIST with the best checkpoint)
#
#   scripts/slurm/submit_pipeline.sh SCENES_LIST LABELS WORKDIR [CONFIG]
#
# Environment (defaults): INGEST_TASKS (4), PREDICT_TASKS (4), NODES (1), GPUS_PER_NODE (1; 0 =
# train on CPU processes: TASKS_PER_NODE of them, default 2), PREDICT_LIST (SCENES_LIST),
# INGEST_ARGS (e.g. "--config configs/ingest.yaml"), TRAIN_ARGS (e.g. "--max-epochs 50"),
# PREDICT_ARGS (e.g. "--batch-size 32"), SBATCH_ARGS (added to every sbatch, e.g. "--account=x
# --partition=gpu"), LANDCOVER (the command). Outputs: WORKDIR/dataset, WORKDIR/train,
# WORKDIR/maps, logs in WORKDIR/logs. Prints the four job ids, the last one last.
set -euo pipefail
if [ $# -lt 3 ]; then echo "usage: $0 SCENES_LIST LABELS WORKDIR [CONFIG]" >&2; exit 2; fi
SCENES=$(realpath "$1") LABELS=$(realpath "$2") WORK=$(realpath -m "$3")
CONFIG=$(realpath "${4:-configs/unet_resnet18.yaml}")
HERE=$(cd "$(dirname "$0")" && pwd)
INGEST_TASKS=${INGEST_TASKS:-4} PREDICT_TASKS=${PREDICT_TASKS:-4}
NODES=${NODES:-1} GPUS_PER_NODE=${GPUS_PER_NODE:-1}
PREDICT_LIST=$(realpath "${PREDICT_LIST:-$SCENES}")
LANDCOVER=${LANDCOVER:-landcover}
export LANDCOVER
mkdir -p "$WORK/logs"
# shellcheck disable=SC2206
common=(--parsable --output="$WORK/logs/%x-%A_%a.out" ${SBATCH_ARGS:-})

# shellcheck disable=SC2086
ingest=$(sbatch "${common[@]}" --array=0-$((INGEST_TASKS - 1)) "$HERE/ingest_array.sbatch" \
    "$SCENES" "$WORK/dataset" --labels "$LABELS" ${INGEST_ARGS:-})
finalize=$(sbatch "${common[@]}" --job-name=lc-finalize --dependency=afterok:"$ingest" \
    --wrap="$LANDCOVER ingest --finalize --out '$WORK/dataset'")
if [ "$GPUS_PER_NODE" -gt 0 ]; then
    shape=(--nodes="$NODES" --ntasks-per-node="$GPUS_PER_NODE" --gpus-per-node="$GPUS_PER_NODE")
    accelerator=gpu
else
    shape=(--nodes="$NODES" --ntasks-per-node="${TASKS_PER_NODE:-2}" --cpus-per-task=1)
    accelerator=cpu
fi
# shellcheck disable=SC2086
train=$(ACCELERATOR=$accelerator sbatch "${common[@]}" "${shape[@]}" --dependency=afterok:"$finalize" \
    "$HERE/train_ddp.sbatch" "$CONFIG" "$WORK/dataset" "$WORK/train" ${TRAIN_ARGS:-})
predict_shape=()
[ "$GPUS_PER_NODE" -gt 0 ] && predict_shape=(--gpus-per-task=1)
# shellcheck disable=SC2086
predict=$(sbatch "${common[@]}" "${predict_shape[@]}" --array=0-$((PREDICT_TASKS - 1)) \
    --dependency=afterok:"$train" "$HERE/predict_array.sbatch" "$WORK/train/checkpoints/best.ckpt" \
    "$PREDICT_LIST" "$WORK/maps" ${PREDICT_ARGS:-})
echo "ingest $ingest"
echo "finalize $finalize"
echo "train $train"
echo "predict $predict"
