"""CLAP zero-shot classification accuracy (`ca_*`): does CLAP hear the intended class in a generated clip?

Each clip's audio embedding is compared with the text embeddings of one prompt per class
("This is a sound of {category}."); the rank of the intended class gives top-1/5/10 and mAP@10.
"""

from __future__ import annotations

from evaluation.metrics.metric import STUDY_TABLE, Metric
from evaluation.metrics.ranking import RANK_SCORES

PREFIX = "ca"
HEADERS = {"top1": "CA Top 1", "top5": "CA Top 5", "top10": "CA Top10", "map10": "CA mAP10"}

METRICS = [
    Metric(f"{PREFIX}_{name}", HEADERS[name], False, "clap", STUDY_TABLE, "ranking",
           f"CLAP zero-shot {name} of the intended class", score)
    for name, score in RANK_SCORES.items()
]  # fmt: skip
