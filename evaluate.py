"""Score a checkpoint: ``python evaluate.py --checkpoint runs/<name>/best.pt [--dataset D] [--split val|test|all]``.

Writes ``metrics_<dataset>_<split>_<checkpoint>.json`` and ``predictions_<dataset>_<split>_<checkpoint>.csv`` next
to the checkpoint (or in ``--out_dir``). To score your own videos in one command, from the checkpoint alone (its
fitted transforms travel in it; the training dataset is not needed): ``evaluate.py --checkpoint best.pt --videos
DIR_OR_LIST --out scores.csv`` (a failed video is listed with its reason). ``--explain`` says what each module
contributes on ``--split`` (see ``pipeline/scoring/explain.py``). Without a trained model, ``--videos DIR
--pretrained resmem --out scores.csv`` gives zero-shot scores: the mean ResMem image memorability of sampled
frames (an image model; ResMem Non-commercial License, University of Chicago; see ``pipeline/scoring/zeroshot.py``).
"""

from config import EvalConfig, parse
from core.cli import main_guard
from core.io import M3SError
from pipeline.scoring.evaluate import run_evaluation
from pipeline.scoring.explain import explain_lines, run_explain
from pipeline.scoring.videos import score_videos
from pipeline.scoring.zeroshot import score_pretrained, zero_shot_lines


def print_scores(cfg: EvalConfig) -> None:
    result = score_videos(cfg)
    print(f"scored {result['n_scored']} of {result['n']} videos with {result['checkpoint']}")
    for vid, reason in sorted(result["failed"].items())[:20]:
        print(f"  failed {vid}: {reason}")
    print(f"scores: {result['out']}")
    nothing_scored(result)


def nothing_scored(result: dict) -> None:
    """A folder where no file could be scored is a failure (exit 2), whatever scored it."""
    if not result["n_scored"]:
        raise M3SError(f"none of the {result['n']} files could be scored (reasons above and in {result['out']})")


def main() -> None:
    cfg = parse(EvalConfig, description=__doc__)
    if cfg.pretrained:
        result = score_pretrained(cfg)
        print("\n".join(zero_shot_lines(result)))
        nothing_scored(result)
        return
    if cfg.videos:
        print_scores(cfg)
        return
    if cfg.explain:
        print("\n".join(explain_lines(run_explain(cfg))))
        return
    result = run_evaluation(cfg)
    for split in ("train", "val", "test"):
        if split in result:
            r = result[split]
            scores = ", ".join(f"{k} {r[k]:.4f}" for k in ("spearman", "kendall", "mse", "mae") if k in r)
            if not r["n_scored"]:
                scores = "unscored: predictions only, no metrics"
            print(f"{result['dataset']} {split}: {r['n']} videos ({r['n_scored']} scored) {scores}")
    print(f"metrics and predictions: {result['out_dir']}")


if __name__ == "__main__":
    main_guard(main)
