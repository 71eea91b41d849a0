"""The offline ESC scorer's metrics (`fd_esc`, `esc_*`): a small classifier trained on real clips the
generator never heard (evaluation.scorer), for when VGGish and CLAP weights are not at hand.

`fd_esc` is the Frechet distance in its penultimate layer; `esc_top1..map10` rank the intended class
among its logits. Not the study's FAD or CLAP numbers, and never printed as them.
"""

from __future__ import annotations

from evaluation.metrics.frechet import embedding_frechet_distance
from evaluation.metrics.metric import SCORER_TABLE, Metric
from evaluation.metrics.ranking import RANK_SCORES

PREFIX = "esc"
HEADERS = {"top1": "ESC Top 1", "top5": "ESC Top 5", "top10": "ESC Top10", "map10": "ESC mAP10"}

METRICS = [
    Metric("fd_esc", "FD (ESC scorer)", True, "esc", SCORER_TABLE, "distance",
           "Frechet distance of the offline scorer's embeddings to the reference's", embedding_frechet_distance),
    Metric("fd_esc_inf", "FD∞ (ESC scorer)", True, "esc", SCORER_TABLE, "extrapolated",
           "fd_esc extrapolated to infinitely many clips"),
    *[Metric(f"{PREFIX}_{name}", HEADERS[name], False, "esc", SCORER_TABLE, "ranking",
             f"offline scorer {name} of the intended class", score)
      for name, score in RANK_SCORES.items()],
]  # fmt: skip
