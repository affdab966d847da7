"""Score a checkpoint: ``python evaluate.py --checkpoint runs/<name>/best.pt [--dataset D] [--split val|test|all]``.

Writes ``metrics_<dataset>_<split>.json`` and ``predictions_<dataset>_<split>.csv`` next to the checkpoint (or in
``--out_dir``). To score your own videos: extract features with ``gen_features.py --dataset folder --data_dir DIR``,
then ``evaluate.py --checkpoint ... --dataset folder --data_dir DIR --split test``.
"""

import json

from config import EvalConfig, main_guard, parse


def main() -> None:
    cfg = parse(EvalConfig, description=__doc__)
    from model.training import run_evaluation

    result = run_evaluation(cfg)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main_guard(main)
