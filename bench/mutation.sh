#!/usr/bin/env bash
# Mutation testing of the core modules with mutmut (outside CI: it runs the relevant tests once per mutant).
#
#   bash bench/mutation.sh                                  # the core modules, judged by the whole suite
#   bash bench/mutation.sh model/losses.py model/metrics.py -- tests/test_model.py tests/test_mutants.py
#
# Works on a scratch copy of the committed tree (HEAD) ($M3S_MUTATION_DIR, default /tmp/m3s-mutation), so the checkout never
# holds a mutant. Prints the score (killed / counted; timeouts count as killed, "no tests" and "survived" as
# survivors) and the surviving mutants. Equivalent mutants (no test can tell them apart) are listed in
# bench/mutation_equivalent.txt, one per line with its reason, and left out of the score. Re-running resumes:
# mutmut remembers finished mutants while the sources are unchanged. MUTATION_JOBS sets the parallel runners (2).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
py="$repo/.venv/bin/python"
"$py" -c "import mutmut" 2>/dev/null || "$py" -m pip install -q mutmut==3.8.1
core=(model/losses.py model/metrics.py pipeline/training.py pipeline/checkpoint.py features/store.py features/raw.py
      features/similarity.py pipeline/table.py config.py features/importer.py)
modules=() tests=() after=0
for arg in "$@"; do
  if [ "$arg" = "--" ]; then after=1; elif [ $after = 1 ]; then tests+=("$arg"); else modules+=("$arg"); fi
done
[ ${#modules[@]} -gt 0 ] || modules=("${core[@]}")
[ ${#tests[@]} -gt 0 ] || tests=(tests)
work=${M3S_MUTATION_DIR:-/tmp/m3s-mutation}
mkdir -p "$work"
git archive HEAD | tar -xf - -C "$work"  # the committed tree, not work in progress
cd "$work"
toml_list() { local out=""; for x in "$@"; do out+="\"$x\", "; done; printf '[%s]' "${out%, }"; }
cat >> pyproject.toml <<CFG

[tool.mutmut]
source_paths = $(toml_list "${modules[@]}")
pytest_add_cli_args_test_selection = $(toml_list "${tests[@]}")
also_copy = ["core", "tiers", "pipeline", "features", "model", "dataset.py", "config.py", "train.py", "evaluate.py",
             "gen_features.py", "configs", "tests", "envs", "weights"]
pytest_add_cli_args = ["-q", "-p", "no:cacheprovider", "-x"]
CFG
export OMP_NUM_THREADS=1 M3S_DATA_DIR="$work/data"
"$py" -m mutmut run --max-children "${MUTATION_JOBS:-2}" > run.log 2>&1 || { tail -20 run.log; }
"$py" -m mutmut results --all true > results.txt 2>&1 || "$py" -m mutmut results > results.txt 2>&1
"$py" - "$repo/bench/mutation_equivalent.txt" <<'PY'
import re
import sys
from pathlib import Path

equivalent = {}
listed = Path(sys.argv[1])
if listed.is_file():
    for line in listed.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, why = line.partition(" ")
            equivalent[name] = why.strip()
status = {}
for line in Path("results.txt").read_text().splitlines():
    m = re.match(r"\s*([\w.\[\]<>-]+__mutmut_\d+): (.+)", line)
    if m:
        status[m.group(1)] = m.group(2).strip()
counted = {k: v for k, v in status.items() if k not in equivalent}
killed = sum(v in ("killed", "timeout") for v in counted.values())
total = len(counted)
print(f"mutants {len(status)}, equivalent (left out) {len(status) - total}, killed {killed}/{total} = "
      f"{100 * killed / max(total, 1):.1f} %")
for name in sorted(k for k, v in counted.items() if v not in ("killed", "timeout")):
    print(f"  {counted[name]}: {name}")
PY
