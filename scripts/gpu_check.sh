#!/usr/bin/env bash
# Every CUDA check in one go, for a lent GPU machine that has torch but not hydra-core,
# omegaconf or antlr4, and no MNIST (../shared/DESIGN.md, "GPU machines"). Run from the repo
# root with the kit folder scripts/gpu_kit.sh prepares here (carry [".gpu"]):
#   .gpu/whl/    hydra-core, omegaconf, antlr4 wheels and this project's wheel
#   .gpu/mnist/  MNIST's four .gz files
# e.g. the device tool's command: OUT=$OUT bash scripts/gpu_check.sh
# Results: every file is written under $WORK and packed into $OUT/gpu_check.tgz at the end (the
# device tool returns only a few files); steps.txt, bench.json, pytest.txt and cuda_graph.json are
# also copied to $OUT. STACKED=1 adds the stacked tests and the 64-job stacked benchmark.
# The default timeouts add up to ~7.5 minutes; the stacked checks add ~4.
set -u
OUT=${OUT:-/tmp/gpu-out}
KIT=${KIT:-$PWD/.gpu}
PY=${PY:-python3}
WORK=${WORK:-/tmp/gpu-check}
FINAL_OUT=$OUT
OUT=$WORK
mkdir -p "$OUT" "$FINAL_OUT"
finish() {
    tar czf "$FINAL_OUT/gpu_check.tgz" -C "$(dirname "$WORK")" "$(basename "$WORK")" 2>/dev/null
    for f in steps.txt bench.json pytest.txt cuda_graph.json; do cp "$WORK/$f" "$FINAL_OUT/" 2>/dev/null; done
}
trap finish EXIT
step() { echo "== $(date +%T) $*" | tee -a "$OUT/steps.txt"; }

step install
$PY -m pip install -q --no-index --no-deps --target "$KIT/site" "$KIT"/whl/*.whl >"$OUT/pip.txt" 2>&1
export PYTHONPATH="$KIT/site${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$KIT/data/MNIST/raw"
cp "$KIT"/mnist/*.gz "$KIT/data/MNIST/raw/" && gunzip -kf "$KIT"/data/MNIST/raw/*.gz
export MLPRUN_DATA="$KIT/data" OMP_WAIT_POLICY=PASSIVE
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
$PY -c "import torch, hydra, mlprunner; print(torch.__version__, torch.cuda.get_device_name(), hydra.__version__, mlprunner.__file__)" >"$OUT/versions.txt" 2>&1

step bench
timeout "${BENCH_TIMEOUT:-150}" $PY scripts/bench.py --device cuda --epochs 3 --reps 2 --out "$OUT/bench.json" \
    >"$OUT/bench.txt" 2>&1
step "bench rc=$?"

step profile-graph
timeout 60 $PY scripts/profile_graph.py --epochs 2 --out "$OUT/profile_graph.json" >"$OUT/profile_graph.txt" 2>&1
step "profile-graph rc=$?"

step pytest
MLPRUN_TEST_REPORT_DIR="$OUT" timeout "${PYTEST_TIMEOUT:-160}" $PY -m pytest -q -rs -p no:cacheprovider \
    tests/test_cudagraph.py tests/test_bench.py -k "cuda or graph" >"$OUT/pytest.txt" 2>&1
step "pytest rc=$?"

if [ "${STACKED:-0}" = 1 ]; then
    step stacked-tests
    # issue 16 on CUDA: the stacked tests (they run on the default device, here the GPU)
    timeout "${STACKED_TEST_TIMEOUT:-150}" $PY -m pytest -q -rs -p no:cacheprovider tests/test_stacked.py \
        -k "matches_solo or sigkill or divergence" >"$OUT/pytest_stacked.txt" 2>&1
    step "stacked-tests rc=$?"
    step stacked-bench
    # 64 jobs stacked against the basic launcher's rate on 16 of them (it trains one job at a time)
    timeout "${STACKED_BENCH_TIMEOUT:-150}" $PY scripts/bench_stacked.py --jobs 64 --basic-jobs 16 --epochs 2 \
        --rounds 1 --device cuda >"$OUT/bench_stacked.txt" 2>&1
    step "stacked-bench rc=$?"
fi
step first-step-costs
# what a process pays once before its steps are fast: CUDA context, cuBLAS handle, the first fused
# Adam step (kernel loading), a second step, and one graph capture of a step
$PY - >"$OUT/first_costs.json" 2>&1 <<'PYEOF'
import json, time
t = [time.perf_counter()]
import torch
t.append(time.perf_counter())
dev = torch.device("cuda")
torch.zeros(1, device=dev); torch.cuda.synchronize(); t.append(time.perf_counter())
x = torch.randn(100, 784, device=dev); w = torch.randn(500, 784, device=dev)
(x @ w.t()).sum().item(); t.append(time.perf_counter())
m = torch.nn.Sequential(torch.nn.Linear(784, 500), torch.nn.ReLU(), torch.nn.Linear(500, 10)).to(dev)
opt = torch.optim.Adam(m.parameters(), fused=True)
def step():
    torch.nn.functional.cross_entropy(m(x), torch.zeros(100, dtype=torch.long, device=dev)).backward()
    opt.step()
step(); torch.cuda.synchronize(); t.append(time.perf_counter())
step(); torch.cuda.synchronize(); t.append(time.perf_counter())
for g in opt.param_groups: g["capturable"] = True
opt.zero_grad(set_to_none=True); g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g): step()
g.replay(); torch.cuda.synchronize(); t.append(time.perf_counter())
names = ["import_torch", "cuda_context", "cublas_first_matmul", "first_fused_adam_step", "second_step", "capture_and_replay"]
print(json.dumps({n: round(b - a, 4) for n, a, b in zip(names, t, t[1:])}))
PYEOF

step first-epochs
# the default MNIST job, 3 epochs, graph on (auto): per-epoch seconds and start-up, from results.json
for variant in ${FIRST_EPOCH_VARIANTS:-auto}; do
    set -- $variant
    name="run-$(echo "$variant" | tr ' =.' '___')"
    timeout 60 $PY -m mlprunner trainer.epochs=3 trainer.progress=plain "trainer.cuda_graph=$1" "${@:2}" \
        "hydra.run.dir=$OUT/$name" >"$OUT/$name.txt" 2>&1
    step "$name rc=$?"
    cp "$OUT/$name/results.json" "$OUT/$name.json" 2>/dev/null
    rm -rf "${OUT:?}/$name"
done

step done
