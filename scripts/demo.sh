#!/usr/bin/env bash
# Set up (if needed), draw synthetic vehicle scans, fit on the clean ones and detect on a scan
# with hidden packages. Everything lands in demo/ ; the model in demo/model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate
python scripts/make_demo_data.py --out demo/data --n-clean 16 --n-test-clean 2 --n-anomalous 3 --seed 0
rtg-anomaly fit --clean-dir demo/data/train/good --model demo/model --tile-size 256 --false-alarm-rate 0.05
rtg-anomaly detect --model demo/model --input demo/data/test/anomalous --output demo/overlays \
  --threshold calibrated --heatmap demo/heatmaps --report demo/report.json \
  --triptych demo/triptychs --html demo/triage.html
rtg-anomaly detect --model demo/model --input demo/data/test/good --output demo/overlays_clean \
  --threshold calibrated --report demo/report_clean.json
echo "demo done: overlays of scans with hidden packages in demo/overlays/ (triptychs in demo/triptychs/, triage page"
echo "demo/triage.html), of clean scans in demo/overlays_clean/"
