"""Train the M3-S MLP over pre-computed features: ``python train.py --dataset Memento10k --use_raw --use_hrnet ...``

``--no-fixed_features`` trains end to end (clips decoded, HRNet / CSN run and fine-tuned inside the step; under
``torchrun`` one process per GPU); see README "End-to-end training".

``--seeds``, ``--folds``, ``--ablate``, ``--baselines`` or ``--search`` train a grid of runs at once and print its
summary (mean +- std, every run, the seed ensemble); see README "Experiments".
"""

from config import TrainConfig, parse_explicit
from core.cli import main_guard
from pipeline.e2e import resumes_end_to_end, run_end_to_end
from pipeline.training import run_training, summary_lines


def main() -> None:
    cfg, explicit = parse_explicit(TrainConfig, description=__doc__, check=False)
    if cfg.search:
        from pipeline.search import run_search, search_lines

        print("\n".join(search_lines(run_search(cfg))))
        return
    if cfg.grid():
        from pipeline.experiments import run_experiment
        from pipeline.summary import summary_lines as grid_lines

        print("\n".join(grid_lines(run_experiment(cfg))))
        return
    if cfg.head != "mlp":  # a head fitted once (ridge, svr, stack): pipeline/heads.py
        from pipeline.heads import fitted_lines, run_fitted

        print("\n".join(fitted_lines(run_fitted(cfg))))
        return
    end_to_end = not cfg.fixed_features or resumes_end_to_end(cfg)
    result = run_end_to_end(cfg, explicit) if end_to_end else run_training(cfg, explicit)
    print("\n".join(summary_lines(result)))


if __name__ == "__main__":
    main_guard(main)
