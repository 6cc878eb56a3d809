#!/usr/bin/env bash
# The embedded end-to-end demo (`make demo`): synthetic RSNA-like DICOMs -> ingest -> train a CNN and a
# ViT -> evaluate (AUC with CI, ROC) -> explain (overlays, ViT vs CNN panel, pointing game) -> predict
# -> compare (the decision report: paired tests on the held-out test split, one HTML page).
# No data to download. Everything lands in $DEMO_OUT (default demo-out/).
set -euo pipefail
OUT=${DEMO_OUT:-demo-out}
PATIENTS=${DEMO_PATIENTS:-80}
EPOCHS=${DEMO_EPOCHS:-10}
TEST_SHARE=${DEMO_TEST_SHARE:-0.2}
rm -rf "$OUT/runs"

echo "== 1/7 synth: $PATIENTS patients of RSNA-like mammograms (J2K, JPEG Lossless, uncompressed)"
[ -f "$OUT/rsna/train.csv" ] || medvit synth "$OUT/rsna" --patients "$PATIENTS" --seed 0 --cancer-rate 0.5

echo "== 2/7 ingest: DICOM -> 512x512 cache + manifest; $TEST_SHARE of the patients held out as the test split"
medvit ingest "$OUT/rsna" --out "$OUT/data" --test-share "$TEST_SHARE" --no-progress

echo "== 3/7 train: a CNN and a ViT (patch 16) at 128 px, same trainer, validation fold 0"
medvit train --config demo_cnn --data "$OUT/data" --epochs "$EPOCHS" --out "$OUT/runs/cnn" data.workers=1
medvit train --config demo_vit --data "$OUT/data" --epochs "$EPOCHS" --out "$OUT/runs/vit" data.workers=1

echo "== 4/7 evaluate on the held-out test split: AUC with bootstrap CI, sens@spec, pF1, per breast; ROC/PR plots"
medvit evaluate "$OUT/runs/cnn"
medvit evaluate "$OUT/runs/vit"

echo "== 5/7 explain: Grad-CAM (CNN), attention rollout (ViT), side-by-side panel, pointing game"
POS=$(python -c "import pandas as pd; m = pd.read_csv('$OUT/data/manifest.csv', dtype=str); print(' '.join(m[(m.label == '1') & (m.fold == '0')].image_id.head(3)))")
medvit explain "$OUT/runs/vit" $POS --compare "$OUT/runs/cnn" --out "$OUT/explain"
medvit explain "$OUT/runs/cnn" --pointing "$OUT/rsna" --fold 0 --out "$OUT/explain"
medvit explain "$OUT/runs/vit" --pointing "$OUT/rsna" --fold 0 --out "$OUT/explain"
medvit explain "$OUT/runs/vit" --class-mean --fold 0 --out "$OUT/explain"

echo "== 6/7 predict: a folder of DICOMs -> CSV (+ per-breast CSV, overlays), same preprocessing as ingest"
medvit predict "$OUT/rsna/train_images" --checkpoint "$OUT/runs/cnn" --out "$OUT/predictions.csv" \
  --overlays "$OUT/overlays" --workers 2

echo "== 7/7 compare: CNN vs ViT on the held-out test split - DeLong, bootstrap, McNemar, calibration, maps"
medvit compare "$OUT/runs/cnn" "$OUT/runs/vit" --out "$OUT/report"

python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
for name in ("cnn", "vit"):
    m = json.load(open(f"{out}/runs/{name}/eval/metrics.json"))
    print(f"{name}: {m['split']} AUC {m['auc']:.3f} [{m['auc_ci'][0]:.3f}, {m['auc_ci'][1]:.3f}]  pF1 {m['pf1']:.3f}")
cnn = json.load(open(f"{out}/runs/cnn/eval/metrics.json"))["auc"]
assert cnn >= 0.8, f"the CNN should find the synthetic lesions (test AUC {cnn:.3f} < 0.8)"
print(f"demo ok: outputs under {out}/ (ROC: {out}/runs/cnn/eval/roc.png, panels: {out}/explain/)")
print(f"decision report: {out}/report/index.html")
PY
