"""Frechet Audio Distance (Kilgour et al. 2019) with each embedding model the `frechet_audio_distance` package has.

`fad_<model>`: the Frechet distance between Gaussians fitted to the reference's and the generated clips'
embeddings (`frechet.embedding_frechet_distance`); `fad_<model>_inf`: the same extrapolated to infinitely
many clips (Chong & Forsyth 2020), which removes the bias of a small clip count.
"""

from __future__ import annotations

from evaluation.metrics.frechet import embedding_frechet_distance
from evaluation.metrics.metric import STUDY_TABLE, Metric

# model -> sample rates the package accepts (first = the default); evaluation.fad loads them.
FAD_MODELS: dict[str, tuple[int, ...]] = {
    "vggish": (16000,),
    "pann": (16000, 8000, 32000),
    "clap": (48000,),
    "encodec": (24000, 48000),
}


def fad_metric(model: str) -> str:
    return f"fad_{model}"


METRICS = [
    metric
    for model in FAD_MODELS
    for metric in (
        Metric(fad_metric(model), "Fad score", True, "fad", STUDY_TABLE, "distance",
               f"Frechet distance of {model} embeddings to the reference's", embedding_frechet_distance),
        Metric(f"{fad_metric(model)}_inf", "FAD∞", True, "fad", STUDY_TABLE, "extrapolated",
               f"fad_{model} extrapolated to infinitely many clips"),
    )
]  # fmt: skip
