"""Train the M3-S MLP over pre-computed features: ``python train.py --dataset Memento10k --use_raw --use_hrnet ...``

``--no-fixed_features`` trains end to end (clips decoded, HRNet / CSN run and fine-tuned inside the step; under
``torchrun`` one process per GPU); see README "End-to-end training".

``--seeds``, ``--folds``, ``--ablate``, ``--baselines`` or ``--search`` train a grid of runs at once and print its
summary (mean +- std, every run, the seed ensemble); see README "Experiments".
"""

from config import TrainConfig, parse_explicit
from core.cli import main_guard
from pipeline.launch import plan


def main() -> None:
    cfg, explicit = parse_explicit(TrainConfig, description=__doc__, check=False)
    work = plan(cfg, explicit)
    print(work.text, flush=True)
    print("\n".join(work.run()))


if __name__ == "__main__":
    main_guard(main)
