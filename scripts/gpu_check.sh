#!/usr/bin/env bash
# Every CUDA check in one go, for a lent GPU machine that has torch but not hydra-core,
# omegaconf or antlr4, and no MNIST (../shared/DESIGN.md, "GPU machines"). Run from the repo
# root with a kit folder prepared on a machine with the package registry:
#   .gpu/whl/    hydra-core, omegaconf, antlr4 wheels and this project's wheel
#   .gpu/mnist/  MNIST's four .gz files
# Results go to $OUT: pytest.txt, bench.json/bench.txt, first_epochs.json, cuda_graph.json.
set -u
OUT=${OUT:-/tmp/gpu-out}
KIT=${KIT:-$PWD/.gpu}
PY=${PY:-python3}
mkdir -p "$OUT"
step() { echo "== $(date +%T) $*" | tee -a "$OUT/steps.txt"; }

step install
$PY -m pip install -q --no-index --no-deps --target "$KIT/site" "$KIT"/whl/*.whl >"$OUT/pip.txt" 2>&1
export PYTHONPATH="$KIT/site${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$KIT/data/MNIST/raw"
cp "$KIT"/mnist/*.gz "$KIT/data/MNIST/raw/" && gunzip -kf "$KIT"/data/MNIST/raw/*.gz
export MLPRUN_DATA="$KIT/data" OMP_WAIT_POLICY=PASSIVE
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
$PY -c "import torch, hydra, mlprunner; print(torch.__version__, torch.cuda.get_device_name(), hydra.__version__, mlprunner.__file__)" >"$OUT/versions.txt" 2>&1

step pytest
MLPRUN_TEST_REPORT_DIR="$OUT" timeout "${PYTEST_TIMEOUT:-240}" $PY -m pytest -q -rs -p no:cacheprovider \
    tests/test_cudagraph.py tests/test_bench.py -k "cuda or graph" >"$OUT/pytest.txt" 2>&1
step "pytest rc=$?"

step bench
timeout "${BENCH_TIMEOUT:-200}" $PY scripts/bench.py --device cuda --epochs 3 --reps 2 --out "$OUT/bench.json" \
    >"$OUT/bench.txt" 2>&1
step "bench rc=$?"

step first-epochs
# the default MNIST job, 3 epochs, graph on (auto): per-epoch seconds and start-up, from results.json
for variant in "auto" "false" "auto trainer.tensorboard.enabled=false"; do
    set -- $variant
    name="run-$(echo "$variant" | tr ' =.' '___')"
    timeout 120 $PY -m mlprunner trainer.epochs=3 trainer.progress=plain "trainer.cuda_graph=$1" "${@:2}" \
        "hydra.run.dir=$OUT/$name" >"$OUT/$name.txt" 2>&1
    step "$name rc=$?"
    cp "$OUT/$name/results.json" "$OUT/$name.json" 2>/dev/null
    rm -rf "${OUT:?}/$name"
done
step done
