"""Compute feature stores from videos: ``python gen_features.py --dataset demo --features raw [hrnet csn]``.

Resumable (a killed run picks up where it stopped), shardable (``torchrun --nproc_per_node N gen_features.py ...``),
and ``--import FILE --name NAME`` brings in your own features instead. See ``features/extract.py``.
"""

from config import GenConfig, main_guard, parse


def main() -> None:
    cfg = parse(GenConfig, description=__doc__)
    if cfg.import_path:
        from features.importer import import_features

        import_features(cfg)
        return
    from features.extract import run

    run(cfg)


if __name__ == "__main__":
    main_guard(main)
