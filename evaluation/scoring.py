"""Scoring one set of clips against the reference with the chosen metric groups (fad, clap, esc).

An `Evaluator` holds what is expensive to build (the FAD model with the reference embeddings, the
CLAP classifier, the offline scorer) and scores any number of clip tables with it: the generated
clips and the real held-out clips (the "real data" row) go through exactly the same code.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import UserError
from core.esc50 import ESC50_CATEGORIES
from evaluation.clap import DEFAULT_TEMPLATE, ZeroShotClassifier, load_clap_model
from evaluation.clips import CLIP_SECONDS
from evaluation.intervals import MIN_INFINITY_CLIPS, bootstrap_frechet, bootstrap_ranking, frechet_infinity
from evaluation.metrics import RANKING_PREFIX, embedding_frechet_distance, ranking_metrics, target_ranks
from evaluation.metrics.memorization import FLAG_SHARE, clip_embeddings, memorization_share
from evaluation.protocol import PEAK_LEVEL, Preprocessing, ReferenceSplit
from evaluation.scorer import SCORER_VERSION, ScorerSettings, cached_predictions, load_or_train_scorer

log = logging.getLogger(__name__)
METRIC_GROUPS = ("fad", "clap", "esc")


@dataclass
class EvalOptions:
    """Everything `score_generated(**options)` and the CLI flags can set besides the reference and metrics."""

    fad_model: str = "vggish"
    fad_sample_rate: int = 0  # 0 = the model's default rate
    ckpt_dir: str = ""  # "" = $ESC50_EVAL_CKPT_DIR, else torch.hub's directory
    allow_download: bool = False
    clap_checkpoint: str = "630k-audioset"  # a name (file looked up in ckpt_dir) or a checkpoint path
    clap_template: str = DEFAULT_TEMPLATE
    clap_batch_size: int = 16
    clip_seconds: float = CLIP_SECONDS
    hub_split: str = "train"
    device: str = ""  # "" = CUDA when present
    min_class_clips: int = 10  # per-class Frechet distances only for classes with this many clips on both sides
    scorer_epochs: int = ScorerSettings.epochs
    scorer_seed: int = ScorerSettings.seed
    optional_metrics: bool = False  # skip fad/clap (with a warning) when their weights are missing
    clap_model: object = field(default=None, repr=False)  # an already built CLAP model (tests, notebooks)
    # The protocol (evaluation.protocol): the generator's training clips, by file name (None: read from the
    # generated folder's generation.json), and whether the reference may hold them (marked when it does).
    trained_on: list[str] | None = None
    training_source: str = ""  # where those clips are (the memorization check embeds them)
    allow_training_overlap: bool = False
    skip_bad: bool = False  # leave out the reference's bad rows (its scan's problems) instead of refusing it
    # Every clip, real or generated, peak-normalized to this before embedding; 0 = off; -1 = as the generator
    # writes its clips (0.9 for data.level=peak models, level kept for data.level=fixed ones).
    peak: float = -1.0
    bootstrap: int = 1000  # bootstrap draws for the 95% intervals; 0 = no intervals
    interval_seed: int = 0

    def __post_init__(self) -> None:
        if not (0.0 <= self.peak <= 1.0 or self.peak == -1.0):
            raise UserError(
                f"evaluation option peak={self.peak} (--peak): give a peak amplitude in [0, 1], 0 = off, -1 = automatic"
            )
        if self.bootstrap < 0:
            raise UserError(f"evaluation option bootstrap={self.bootstrap} (--bootstrap): must be >= 0")

    @classmethod
    def from_options(cls, options: dict) -> EvalOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise UserError(f"unknown evaluation option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**options)


def parse_metric_groups(metrics: list[str] | str) -> list[str]:
    items = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    groups = [m.strip().lower() for m in items if m.strip()]
    bad = [m for m in groups if m not in METRIC_GROUPS]
    if bad or not groups:
        raise UserError(f"--metrics '{','.join(items)}': choose from {', '.join(METRIC_GROUPS)}")
    return list(dict.fromkeys(groups))


@dataclass
class ScoredSet:
    metrics: dict[str, float]
    targets: np.ndarray
    class_scores: dict[str, np.ndarray] = field(default_factory=dict)  # "clap"/"esc" -> (N, classes) scores
    per_class_distance: dict[str, dict[int, float]] = field(default_factory=dict)  # metric -> class -> value
    categories: list[str] = field(default_factory=lambda: list(ESC50_CATEGORIES))  # the class set's names

    def per_class(self) -> pd.DataFrame:
        """One row per class present: clip count, top-1 accuracy per classifier, distances where computed."""
        present = sorted(set(self.targets.tolist()))
        table = pd.DataFrame({"target": present, "category": [self.categories[t] for t in present]})
        table["clips"] = [int(np.sum(self.targets == t)) for t in present]
        for name, scores in self.class_scores.items():
            correct = target_ranks(scores, self.targets) == 0  # the same tie rule as the overall top-1
            table[f"{RANKING_PREFIX[name]}_top1"] = [float(correct[self.targets == t].mean()) for t in present]
        for metric, values in self.per_class_distance.items():
            table[metric] = [values.get(t, np.nan) for t in present]
        return table


class Evaluator:
    def __init__(
        self,
        split: ReferenceSplit,
        metrics: list[str],
        options: EvalOptions | None = None,
        cache_dir: str | os.PathLike = ".cache/evaluation",
        sample_rate: int = 22050,
        show_progress: bool = True,
    ):
        self.split = split
        self.groups = parse_metric_groups(metrics)
        self.options = options or EvalOptions()
        self.cache_dir = Path(cache_dir)
        self.sample_rate = sample_rate
        self.show_progress = show_progress
        self.fad_model = self.fad_reference = self.clap = self.scorer = None
        self.skipped: dict[str, str] = {}  # metric group -> why (optional_metrics)
        self.preprocessing = Preprocessing(sample_rate, PEAK_LEVEL if self.options.peak < 0 else self.options.peak)
        self.left_out = 0  # generated clips of classes the protocol cannot evaluate
        self._neighbours: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # metric -> (held-out, training) per clip

    @property
    def device(self) -> str:
        import torch

        return self.options.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def prepare(self) -> Evaluator:
        """Load (or train) every model and the reference embeddings now: missing weights fail before any work.

        With `optional_metrics`, a group whose weights are missing is dropped with a warning instead.
        """
        for group, load in (("fad", self._prepare_fad), ("clap", self._prepare_clap), ("esc", self._prepare_esc)):
            if group not in self.groups:
                continue
            try:
                load()
            except UserError as error:
                if not self.options.optional_metrics or group == "esc":
                    raise
                log.warning("skipping %s: %s", group, error)
                self.skipped[group] = str(error)
                self.groups.remove(group)
        return self

    def _prepare_fad(self) -> None:
        o = self.options
        if self.fad_model is None:
            from evaluation.fad import load_fad_model, reference_embeddings

            self.fad_model = load_fad_model(
                o.fad_model, o.fad_sample_rate, o.ckpt_dir, o.clap_checkpoint, o.allow_download
            )
            self.fad_reference = reference_embeddings(
                self.fad_model, self.split.reference, self.cache_dir, o.clip_seconds, self.show_progress,
                self.preprocessing,
            )  # fmt: skip

    def _prepare_clap(self) -> None:
        o = self.options
        if self.clap is None:
            from evaluation.fad import default_ckpt_dir

            model = o.clap_model or load_clap_model(o.clap_checkpoint, o.ckpt_dir or default_ckpt_dir(), o.device)
            self.clap = ZeroShotClassifier(model, o.clap_template, o.clap_batch_size, self.split.categories)

    def _prepare_esc(self) -> None:
        o = self.options
        if self.scorer is None:
            settings = ScorerSettings(
                sample_rate=self.sample_rate,
                clip_seconds=o.clip_seconds,
                epochs=o.scorer_epochs,
                seed=o.scorer_seed,
                num_classes=len(self.split.categories),
            )
            self.scorer = load_or_train_scorer(
                self.split, settings, self.cache_dir, self.device, self.show_progress, self.preprocessing
            )

    def score(self, clips: pd.DataFrame, desc: str = "generated", generated: bool = False) -> ScoredSet:
        """Every metric of the chosen groups for `clips` (of the evaluated classes only), with 95% intervals
        (`<metric>_ci_low/_high`) and FD-infinity (`<fd>_inf`). For `generated` clips also the share that
        sits nearer a training clip than real unseen clips do (`memorization_<group>`); real clips' offline
        scorer predictions are cached instead (the same ceiling is scored by every trial of a sweep)."""
        self.prepare()
        evaluated = self.split.restrict(clips)
        if generated:
            self.left_out = len(clips) - len(evaluated)
        if evaluated.empty:
            raise UserError(f"none of the {len(clips)} {desc} clips is of a class the reference and ceiling hold")
        result = ScoredSet({}, evaluated["target"].to_numpy(), categories=list(self.split.categories))
        for group, score_group in (("fad", self._score_fad), ("clap", self._score_clap), ("esc", self._score_esc)):
            if group in self.groups:
                score_group(evaluated, desc, generated, result)
        return result

    def _score_fad(self, clips: pd.DataFrame, desc: str, generated: bool, result: ScoredSet) -> None:
        from evaluation.fad import per_class_distances

        o, targets = self.options, result.targets
        embeddings, owners = self.fad_model.embed(clips, o.clip_seconds, self.show_progress, desc, self.preprocessing)
        metric, reference = self.fad_model.metric, self.fad_reference
        result.metrics[metric] = self.fad_model.distance(reference.embeddings, embeddings)
        self._distance_uncertainty(result, metric, reference.embeddings, embeddings, reference.owners, owners)
        result.per_class_distance[metric] = per_class_distances(
            self.fad_model, reference, embeddings, owners, targets, o.min_class_clips
        )
        if generated:
            self._memorization(result, "fad", clip_embeddings(embeddings, owners))

    def _score_clap(self, clips: pd.DataFrame, desc: str, generated: bool, result: ScoredSet) -> None:
        o = self.options
        scores = self.clap.scores(clips, o.clip_seconds, self.show_progress, f"CLAP {desc}", self.preprocessing)
        result.class_scores["clap"] = scores
        result.metrics.update(ranking_metrics(scores, result.targets, RANKING_PREFIX["clap"]))
        self._ranking_uncertainty(result, scores, result.targets, RANKING_PREFIX["clap"])

    def _score_esc(self, clips: pd.DataFrame, desc: str, generated: bool, result: ScoredSet) -> None:
        predict = self.scorer.predict if generated else partial(cached_predictions, self.scorer)
        logits, embeddings = predict(clips, self.show_progress, desc=f"ESC scorer {desc}")
        result.class_scores["esc"] = logits
        result.metrics.update(ranking_metrics(logits, result.targets, RANKING_PREFIX["esc"]))
        self._ranking_uncertainty(result, logits, result.targets, RANKING_PREFIX["esc"])
        result.metrics["fd_esc"] = self._fd_esc(embeddings)
        self._distance_uncertainty(result, "fd_esc", self.scorer.reference_embeddings, embeddings)
        result.per_class_distance["fd_esc"] = self._fd_esc_per_class(embeddings, result.targets)
        if generated:
            self._memorization(result, "esc", embeddings)

    def _distance_uncertainty(self, result, metric, reference, embeddings, reference_owners=None, owners=None) -> None:
        """`<metric>_ci_low/_high` (with bootstrap draws asked for) and `<metric>_inf` (from 8 clips on)."""
        o = self.options
        clips = int(owners.max()) + 1 if owners is not None else len(embeddings)
        if o.bootstrap > 0 and clips >= 2:
            low, high = bootstrap_frechet(reference, embeddings, o.bootstrap, o.interval_seed, reference_owners, owners)
            result.metrics.update({f"{metric}_ci_low": low, f"{metric}_ci_high": high})
        if clips >= MIN_INFINITY_CLIPS:
            result.metrics[f"{metric}_inf"] = frechet_infinity(reference, embeddings, o.interval_seed, owners)

    def _ranking_uncertainty(self, result: ScoredSet, scores: np.ndarray, targets: np.ndarray, prefix: str) -> None:
        if self.options.bootstrap <= 0:
            return
        ranks = target_ranks(scores, targets)
        for metric, (low, high) in bootstrap_ranking(
            ranks, prefix, self.options.bootstrap, self.options.interval_seed
        ).items():
            result.metrics.update({f"{metric}_ci_low": low, f"{metric}_ci_high": high})

    def _memorization(self, result: ScoredSet, group: str, generated: np.ndarray) -> None:
        """`memorization_<group>`: see evaluation.memorization. Skipped when the training clips are unknown, and
        when the reference may hold them (then so may the held-out clips, whose distances set the threshold)."""
        training = self.split.training
        if training is None or training.empty or self.split.overlaps_training:
            return
        if group not in self._neighbours:
            self._neighbours[group] = (self._clip_embeddings(group, self.split.held_out, "held-out"),
                                       self._clip_embeddings(group, training, "training"))  # fmt: skip
        held_out, train = self._neighbours[group]
        share = memorization_share(generated, held_out, train)
        result.metrics[f"memorization_{group}"] = share
        if share > FLAG_SHARE:
            log.warning(
                "%.0f%% of the generated clips sit nearer a training clip than real unseen clips do (%s embedding): "
                "the generator may be copying its training data", 100 * share, group,
            )  # fmt: skip

    def _clip_embeddings(self, group: str, clips: pd.DataFrame, desc: str) -> np.ndarray:
        if group == "esc":
            return cached_predictions(self.scorer, clips, self.show_progress, desc=f"ESC scorer {desc}")[1]
        from evaluation.fad import reference_embeddings

        found = reference_embeddings(
            self.fad_model, clips, self.cache_dir, self.options.clip_seconds, self.show_progress, self.preprocessing,
            desc=f"FAD {desc}",
        )  # fmt: skip
        return clip_embeddings(found.embeddings, found.owners)

    def _fd_esc(self, embeddings: np.ndarray) -> float:
        if len(embeddings) < 2:
            raise UserError("fd_esc needs at least 2 clips")
        return embedding_frechet_distance(self.scorer.reference_embeddings, embeddings)

    def _fd_esc_per_class(self, embeddings: np.ndarray, targets: np.ndarray) -> dict[int, float]:
        reference, reference_targets = self.scorer.reference_embeddings, self.scorer.reference_targets
        values = {}
        for target in range(len(self.split.categories)):
            ours, theirs = embeddings[targets == target], reference[reference_targets == target]
            if min(len(ours), len(theirs)) >= max(self.options.min_class_clips, 2):
                values[target] = embedding_frechet_distance(theirs, ours)
        return values

    def describe(self) -> dict[str, str]:
        """The protocol and settings worth recording beside the numbers (MLflow tags, the tables' header)."""
        o = self.options
        tags = {
            **self.split.describe(),
            "evaluation.metrics": ",".join(self.groups),
            "evaluation.clip_seconds": str(o.clip_seconds),
            "evaluation.preprocessing": self.preprocessing.describe(),
            "evaluation.intervals": (
                f"95% bootstrap over clips ({o.bootstrap} draws), FD also extrapolated to infinitely many clips (_inf)"
                if o.bootstrap > 0
                else "none (bootstrap 0)"
            ),
            "evaluation.generated_left_out": str(self.left_out),
        }
        versions = [f"esc scorer v{SCORER_VERSION}"] if "esc" in self.groups else []
        if self.fad_model is not None:
            tags["evaluation.fad_model"] = f"{self.fad_model.name}@{self.fad_model.sample_rate}"
            versions.append(f"FAD {self.fad_model.identity}")
        if self.clap is not None:
            tags["evaluation.clap_checkpoint"] = "injected" if o.clap_model is not None else o.clap_checkpoint
            tags["evaluation.clap_template"] = o.clap_template
        for group, reason in self.skipped.items():
            tags[f"evaluation.skipped_{group}"] = reason
        if self.clap is not None:
            versions.append(f"CLAP {tags['evaluation.clap_checkpoint']}")
        if self.scorer is not None:
            tags["evaluation.esc_scorer_held_out_top1"] = f"{self.scorer.held_out['esc_top1']:.4f}"
        tags["evaluation.metric_versions"] = "; ".join(versions)
        return tags
