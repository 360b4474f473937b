#!/usr/bin/env bash
# Prepare the kit scripts/gpu_check.sh needs on a lent GPU machine (../shared/DESIGN.md, "GPU
# machines": torch is there; hydra-core, omegaconf, antlr4 and MNIST are not). Run here, from the
# repo root, with the package registry reachable; then pass carry [".gpu"] to the device call.
#   .gpu/whl/    wheels: hydra-core, omegaconf, antlr4 (built: the registry has no wheel), the SLURM
#                launcher's three and this project
#   .gpu/mnist/  MNIST's four .gz files, from $MLPRUN_DATA (default ../shared/data)
# The folder must be ignored by git (.git/info/exclude), so that it travels only when carried.
set -euo pipefail
KIT=${KIT:-.gpu}
PY=${PY:-.venv/bin/python}
DATA=${MLPRUN_DATA:-../shared/data}
git check-ignore -q "$KIT/" || { echo "gpu_kit: $KIT/ is not ignored by git; add it to .git/info/exclude" >&2; exit 2; }
mkdir -p "$KIT/whl" "$KIT/mnist"
rm -rf "$KIT/site" "$KIT/data" "$KIT"/whl/mlprunner-*.whl  # what a run there unpacked; a stale project wheel
# hydra-submitit-launcher, submitit and cloudpickle: the project's SLURM launcher plugin is then the
# real one, as after pip install 'mlprunner[sweep]' (without them it stands in, and Hydra is quiet)
if ! ls "$KIT"/whl/hydra_core-*.whl "$KIT"/whl/omegaconf-*.whl "$KIT"/whl/hydra_submitit_launcher-*.whl \
    "$KIT"/whl/submitit-*.whl "$KIT"/whl/cloudpickle-*.whl >/dev/null 2>&1; then
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 -d "$KIT/whl" hydra-core==1.3.2 omegaconf==2.3.0 \
        hydra-submitit-launcher==1.2.0 submitit==1.5.4 cloudpickle==3.1.3
fi
ls "$KIT"/whl/antlr4_python3_runtime-*.whl >/dev/null 2>&1 ||
    $PY -m pip wheel -q --no-deps -w "$KIT/whl" antlr4-python3-runtime==4.9.3
$PY -m pip wheel -q --no-deps -w "$KIT/whl" .
cp "$DATA"/MNIST/raw/*.gz "$KIT/mnist/"
du -sh "$KIT"
ls "$KIT"/whl "$KIT"/mnist
