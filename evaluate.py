"""Score a checkpoint: ``python evaluate.py --checkpoint runs/<name>/best.pt [--dataset D] [--split val|test|all]``.

Writes ``metrics_<dataset>_<split>.json`` and ``predictions_<dataset>_<split>.csv`` next to the checkpoint (or in
``--out_dir``). To score your own videos: extract features with ``gen_features.py --dataset folder --data_dir DIR``,
then ``evaluate.py --checkpoint ... --dataset folder --data_dir DIR --split test``.
"""

from config import EvalConfig, main_guard, parse
from pipeline.evaluation import run_evaluation


def main() -> None:
    cfg = parse(EvalConfig, description=__doc__)
    result = run_evaluation(cfg)
    for split in ("train", "val", "test"):
        if split in result:
            r = result[split]
            scores = ", ".join(f"{k} {r[k]:.4f}" for k in ("spearman", "kendall", "mse", "mae") if k in r)
            print(f"{result['dataset']} {split}: {r['n']} videos ({r['n_scored']} scored) {scores}")
    print(f"metrics and predictions: {result['out_dir']}")


if __name__ == "__main__":
    main_guard(main)
