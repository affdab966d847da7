"""Train the M3-S MLP over pre-computed features: ``python train.py --dataset Memento10k --use_raw --use_hrnet ...``"""

from config import TrainConfig, main_guard, parse_explicit
from pipeline.training import run_training, summary_lines


def main() -> None:
    cfg, explicit = parse_explicit(TrainConfig, description=__doc__, check=False)
    result = run_training(cfg, explicit)
    print("\n".join(summary_lines(result)))


if __name__ == "__main__":
    main_guard(main)
