#!/usr/bin/env bash
# Mutation testing of the core modules with mutmut (outside CI: it runs the relevant tests once per mutant).
#
#   bash bench/mutation.sh                       # every core module, each judged by its own tests (CORE below)
#   bash bench/mutation.sh features/raw.py       # one core module, with its tests from CORE
#   bash bench/mutation.sh model/losses.py -- tests/test_model.py     # any module(s), judged by the tests named
#
# Works on a scratch copy of the committed tree (HEAD) ($M3S_MUTATION_DIR, default /tmp/m3s-mutation, one folder
# per run), so the checkout never holds a mutant. Prints each run's score (killed / counted; timeouts count as
# killed; "survived", "no tests" and "suspicious" as survivors) and its surviving mutants, then one line per run.
# Mutants left out of the score (equivalent: no test can tell them apart from the original) are listed in
# bench/mutation_equivalent.txt, one per line with its reason. Re-running a run resumes it: mutmut remembers
# finished mutants while the sources are unchanged (delete the folder after changing tests). MUTATION_JOBS sets
# the parallel test runners (2).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
py="$repo/.venv/bin/python"
[ -x "$py" ] || bash envs/setup.sh  # a fresh clone: the environment first
"$py" -c "import mutmut" 2>/dev/null || "$py" -m pip install -q mutmut==3.8.1

# module(s) | the test files that judge them (those that exercise them; their slow-marked tests run too)
CORE=(
  "model/losses.py model/metrics.py | tests/test_model.py tests/test_mutants.py"
  "pipeline/run/training.py | tests/test_training_loop.py tests/test_train.py tests/test_run_records.py tests/test_faults.py tests/test_newcomer_errors.py"
  "pipeline/run/checkpoint.py | tests/test_checkpoint.py tests/test_faults.py tests/test_train.py"
  "features/store.py | tests/test_store.py tests/test_mutants.py tests/test_faults.py"
  "features/raw.py | tests/test_raw.py tests/test_extract.py tests/test_mutants.py tests/test_e2e.py"
  "features/similarity.py | tests/test_similarity_methods.py tests/test_similarity.py tests/test_dbscan_method.py tests/test_mutants.py tests/test_faults.py"
  "pipeline/run/table.py | tests/test_table.py tests/test_train.py tests/test_mutants.py tests/test_newcomer_errors.py"
  "config.py | tests/test_config_checks.py tests/test_config.py tests/test_newcomer_errors.py tests/test_mutants.py tests/test_tiers.py tests/test_faults.py"
  "features/importer.py | tests/test_importer.py tests/test_faults.py tests/test_mutants.py tests/test_train.py"
)
# tests that cannot run under mutmut: it forks the test process, and this one counts the processes it leaves
DESELECT="not killing_the_extraction"

modules=() tests=() after=0
for arg in "$@"; do
  if [ "$arg" = "--" ]; then after=1; elif [ $after = 1 ]; then tests+=("$arg"); else modules+=("$arg"); fi
done
runs=()
if [ ${#modules[@]} -eq 0 ]; then
  runs=("${CORE[@]}")
elif [ ${#tests[@]} -gt 0 ]; then
  runs=("${modules[*]} | ${tests[*]}")
else
  for entry in "${CORE[@]}"; do
    [ " ${entry%%|*}" = " ${modules[*]} " ] && runs=("$entry")
  done
  [ ${#runs[@]} -gt 0 ] || { echo "no tests listed for ${modules[*]} in CORE: name them after --" >&2; exit 2; }
fi

toml_list() { local out=""; for x in "$@"; do out+="\"$x\", "; done; printf '[%s]' "${out%, }"; }
root=${M3S_MUTATION_DIR:-/tmp/m3s-mutation}
summary=()
for entry in "${runs[@]}"; do
  read -r -a mods <<< "${entry%%|*}"
  read -r -a judged <<< "${entry#*|}"
  work="$root/$(echo "${mods[0]}" | tr '/.' '__')"
  echo "== ${mods[*]} (judged by ${judged[*]}) in $work"
  mkdir -p "$work"
  git archive HEAD | tar -xf - -C "$work"  # the committed tree, not work in progress
  cat >> "$work/pyproject.toml" <<CFG

[tool.mutmut]
source_paths = $(toml_list "${mods[@]}")
pytest_add_cli_args_test_selection = $(toml_list "${judged[@]}")
also_copy = ["core", "tiers", "pipeline", "features", "model", "dataset.py", "config.py", "train.py", "evaluate.py",
             "gen_features.py", "configs", "tests", "envs", "weights"]
pytest_add_cli_args = ["-q", "-p", "no:cacheprovider", "-x", "-k", "$DESELECT"]
CFG
  # mutmut forks a process per mutant from one that has run the tests: GNU OpenMP (numba's default threading layer,
  # and scikit-learn's) refuses to run in such a fork (it terminates it: "fork() called from a process already using
  # GNU OpenMP"), so the runs use numba's workqueue layer and one thread of each
  (cd "$work" && OMP_NUM_THREADS=1 NUMBA_THREADING_LAYER=workqueue NUMBA_NUM_THREADS=1 M3S_DATA_DIR="$work/data" \
     "$py" -m mutmut run --max-children "${MUTATION_JOBS:-2}" > run.log 2>&1) || tail -20 "$work/run.log"
  (cd "$work" && { "$py" -m mutmut results --all true > results.txt 2>&1 || "$py" -m mutmut results > results.txt 2>&1; })
  line=$("$py" "$repo/bench/mutation_score.py" "$repo/bench/mutation_equivalent.txt" "$work/results.txt")
  echo "$line"
  summary+=("${mods[*]}: $line")
done
echo "== summary"
printf '%s\n' "${summary[@]}"
