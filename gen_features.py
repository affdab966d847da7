"""Compute feature stores from videos: ``python gen_features.py --dataset demo --features raw [hrnet csn]``.

Resumable (a killed run picks up where it stopped), shardable (``torchrun --nproc_per_node N gen_features.py ...``),
and ``--import FILE --name NAME`` brings in your own features instead. See ``pipeline/generate.py``.
"""

from config import GenConfig, parse
from core.cli import main_guard
from pipeline.generate import run, run_import


def main() -> None:
    cfg = parse(GenConfig, description=__doc__)
    if cfg.import_path:
        run_import(cfg)
    else:
        run(cfg)


if __name__ == "__main__":
    main_guard(main)
