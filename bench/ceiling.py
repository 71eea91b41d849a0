"""The offline scorer's real held-out ceiling on a data set, under the evaluation protocol, for several scorer seeds.

    python -m bench.ceiling [--data DIR] [--seeds 0,1,2] [--holdout-recordings 3]

Two rows per seed: for a generator that heard none of the data, and for one trained like configs/tiny.yaml
(`data.holdout_recordings`): the clips such a model trains on are kept out of reference and ceiling.
"""

from __future__ import annotations

import argparse
import json

from core.config import DEFAULT_SOURCE, DataConfig
from core.spectrograms import training_clips
from evaluation.evaluate import score_with_protocol

SHOWN = ("esc_top1", "esc_top5", "esc_top10", "esc_map10", "fd_esc")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_SOURCE)
    parser.add_argument("--seeds", default="0,1,2", help="offline scorer seeds")
    parser.add_argument("--holdout-recordings", type=int, default=3)
    parser.add_argument("--cache-dir", default=".cache/evaluation")
    args = parser.parse_args(argv)
    trained = training_clips(DataConfig(source=args.data, holdout_recordings=args.holdout_recordings))
    generators = {
        "heard none of it": {"trained_on": []},
        f"holdout_recordings={args.holdout_recordings}": {
            "trained_on": list(trained["filename"]), "training_source": args.data,
        },
    }  # fmt: skip
    print("| generator | scorer seed | classes | ceiling clips | " + " | ".join(SHOWN) + " | fd_esc_inf |")
    print("|---|---:|---:|---:|" + "---:|" * (len(SHOWN) + 1))
    for label, options in generators.items():
        for seed in [int(s) for s in args.seeds.split(",")]:
            metrics, tags = score_with_protocol(
                None, args.data, ["esc"], cache_dir=args.cache_dir, show_progress=False, scorer_seed=seed, **options
            )
            cells = [f"{metrics[m]:.3f} [{metrics[m + '_ci_low']:.3f}, {metrics[m + '_ci_high']:.3f}]" for m in SHOWN]
            print(f"| {label} | {seed} | {tags['evaluation.classes']} | {tags['evaluation.held_out_clips']} | "
                  + " | ".join(cells) + f" | {metrics['fd_esc_inf']:.1f} |", flush=True)  # fmt: skip
    print(json.dumps({"data": args.data, "protocol": tags}, indent=2))


if __name__ == "__main__":
    main()
