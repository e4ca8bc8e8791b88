#!/usr/bin/env bash
# The CPU preset on Fashion-MNIST at 16 / 32 / 64 bits, with faiss PQ and exact L2 on raw pixels
# for scale: each HQC cell trains `quantrieve train --preset fashion-mnist-cpu --bits B` (no
# labels), encodes the 60,000 training images and scores the 10,000 test queries once
# (mAP@1000). Results land in benchmarks/results/fashion-mnist-cpu-preset/ (cells/hqc-B.json,
# report.md, runs/hqc-B/). Finished cells are kept; an interrupted run resumes from its last
# epoch. Usage: bash benchmarks/fashion_mnist_cpu.sh [BITS]
# The cells committed there predate solarization in the preset (augment.solarize_p = 0): a
# rerun keeps them. The preset with solarization, 32 bits, three seeds, paired with reruns of
# the earlier preset: benchmarks/results/fashion-mnist-solarize-30/.
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${QUANTRIEVE:-.venv/bin/quantrieve}
BITS=${1:-16,32,64}
$Q benchmark --protocol fashion-mnist --preset fashion-mnist-cpu --methods hqc,pq,exact \
  --bits "$BITS" --out benchmarks/results/fashion-mnist-cpu-preset
