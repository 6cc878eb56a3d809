#!/usr/bin/env bash
# `make demo-pretrain`: self-supervised pretraining on the demo's images, then the honest question -
# did it help? MAE pretrains the demo's ViT (seed 002, patch 16, 128 px) on every non-test image of the
# demo's ingest (labels unused), `train --init` fine-tunes it exactly as `make demo` trains the scratch
# ViT, and `medvit compare` puts the two side by side on the held-out test split (paired DeLong test,
# provenance on the page). Reuses demo-out/ from `make demo` when it is there; builds what is missing.
set -euo pipefail
OUT=${DEMO_OUT:-demo-out}
PATIENTS=${DEMO_PATIENTS:-80}
EPOCHS=${DEMO_EPOCHS:-10}
PRE_EPOCHS=${DEMO_PRETRAIN_EPOCHS:-30}

echo "== 1/4 the demo's data (synth + ingest with a held-out test split), if not there yet"
[ -f "$OUT/rsna/train.csv" ] || medvit synth "$OUT/rsna" --patients "$PATIENTS" --seed 0 --cancer-rate 0.5
[ -f "$OUT/data/manifest.csv" ] || medvit ingest "$OUT/rsna" --out "$OUT/data" --test-share 0.2 --no-progress
[ -f "$OUT/runs/vit/checkpoints/best.pt" ] || \
  medvit train --config demo_vit --data "$OUT/data" --epochs "$EPOCHS" --out "$OUT/runs/vit" data.workers=1

echo "== 2/4 pretrain: MAE on the demo's ViT, $PRE_EPOCHS epochs, labels unused, the test split left out"
rm -rf "$OUT/runs/mae"
medvit pretrain --config pretrain_mae --data "$OUT/data" --backbone vit --patch 16 --image-size 128 \
  --epochs "$PRE_EPOCHS" --batch-size 32 --out "$OUT/runs/mae" data.workers=1 schedule.warmup_epochs=2 train.log_every=5

echo "== 3/4 fine-tune from the pretrained encoder, as the scratch ViT was trained (layer-wise lr decay 0.75)"
rm -rf "$OUT/runs/vit-mae"
medvit train --config demo_vit --init "$OUT/runs/mae" --data "$OUT/data" --epochs "$EPOCHS" \
  --out "$OUT/runs/vit-mae" data.workers=1 optim.layer_decay=0.75
medvit evaluate "$OUT/runs/vit-mae"

echo "== 4/4 compare: pretrained vs scratch on the held-out test split"
medvit compare "$OUT/runs/vit-mae" "$OUT/runs/vit" --out "$OUT/report-pretrain" --gallery 4
echo "pretraining figures: $OUT/runs/mae/loss_curve.png, $OUT/runs/mae/mae_reconstruction.png"
echo "decision report: $OUT/report-pretrain/index.html"
