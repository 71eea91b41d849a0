"""The evaluation protocol: which real clips a generated set is compared with, and how every clip is prepared.

Three sets of real clips, disjoint by recording (`core.splits`: every take of a recording in one set):
- the generator's **training clips** (recorded with the model): never the reference, never the scorer's
  training data, unless `allow_training_overlap` asks for it (then the protocol says so, and the table);
- the **reference**: what every row is compared with (FAD, `fd_esc`) and what the offline scorer trains on;
- the **ceiling**: real clips outside the reference, scored like generated ones (the "real data" row).
Only classes with clips in both the reference and the ceiling are evaluated; generated clips of other
classes are left out, and the protocol counts them.

Before any embedding, real and generated audio go through one `Preprocessing`: decoded at the
generator's sample rate (so both carry the same bandwidth), peak-normalized to the level generated
clips are written at (so level says nothing either way), then resampled to the metric's own rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from core.errors import UserError
from core.esc50 import ESC50_CATEGORIES, SKIPPED_ATTR, class_names, read_clips
from core.splits import last_recordings, recordings, sharing_a_recording

PEAK_LEVEL = 0.9  # generated clips are written at this peak (core.audio.MelTransform.audio): -0.9 dBFS
MIN_INTERVAL_CLIPS = 10  # fewer reference or ceiling clips than this: no bootstrap interval means anything


@dataclass(frozen=True)
class Preprocessing:
    """One treatment for real and generated clips before any embedding (recorded as tags)."""

    sample_rate: int = 22050  # the generator's rate: the bandwidth both sides are limited to
    peak: float = PEAK_LEVEL  # every clip scaled to this peak amplitude; 0 = left as decoded

    def describe(self) -> str:
        level = f"peak-normalized to {self.peak:g} ({_dbfs(self.peak)} dBFS)" if self.peak else "level as decoded"
        return f"decoded at {self.sample_rate} Hz (bandwidth {self.sample_rate // 2} Hz), {level}"


def _dbfs(amplitude: float) -> str:
    import math

    return f"{20 * math.log10(amplitude):.1f}"


@dataclass
class ReferenceSplit:
    """The real clips of one evaluation (see the module docstring); `held_out` is the ceiling."""

    source: str
    reference: pd.DataFrame
    held_out: pd.DataFrame
    how: str  # how the ceiling was chosen
    classes: list[int] = field(default_factory=list)  # the classes evaluated
    training: pd.DataFrame | None = None  # the generator's training clips, when known (memorization check)
    training_rule: str = "unknown"  # how the generator's training clips were kept out of the reference
    overlaps_training: bool = False  # the reference may hold the generator's training clips (asked for)
    excluded_for_training: int = 0  # real clips left out because the generator trained on their recording
    categories: list[str] = field(default_factory=lambda: list(ESC50_CATEGORIES))  # the reference's class set
    skipped_rows: int = 0  # rows of the reference's source left out by skip_bad

    def restrict(self, clips: pd.DataFrame) -> pd.DataFrame:
        """The clips of the evaluated classes (the rest have no reference or ceiling to compare with)."""
        return clips[clips["target"].isin(self.classes)].reset_index(drop=True)

    def describe(self) -> dict[str, str]:
        tags = {
            "evaluation.reference": self.source,
            "evaluation.reference_clips": str(len(self.reference)),
            "evaluation.reference_recordings": str(recordings(self.reference).nunique()),
            "evaluation.held_out_clips": str(len(self.held_out)),
            "evaluation.held_out_rule": self.how,
            "evaluation.classes": str(len(self.classes)),
            "evaluation.class_set": "esc50"
            if self.categories == list(ESC50_CATEGORIES)
            else f"{len(self.categories)} classes of the reference's own",  # fmt: skip
            "evaluation.training_clips": "unknown" if self.training is None else str(len(self.training)),
            "evaluation.training_rule": self.training_rule,
            "evaluation.excluded_for_training": str(self.excluded_for_training),
            "evaluation.reference_overlaps_training": str(self.overlaps_training).lower(),
        }
        return tags


def split_reference(
    source: str,
    folds: list[int] | tuple[int, ...] = (),
    hub_split: str = "train",
    trained_on: list[str] | None = None,
    allow_training_overlap: bool = False,
    training_source: str = "",
    skip_bad: bool = False,
) -> ReferenceSplit:
    """Reference and ceiling from the real clips of `source`, none sharing a recording with `trained_on`.

    The class set is the source's own (`core.esc50.class_names`); `skip_bad` leaves out the rows its scan
    finds bad (as training's data.skip_bad does) instead of refusing the source.

    `trained_on`: the file names of the generator's training clips (the model's training record); `[]` for
    a generator that heard none of `source`; None when unknown, which is refused unless
    `allow_training_overlap`. Names match without their extension (esc50-mini's `.flac` are ESC-50's `.wav`).
    Reference = the clips of `folds` (all when empty); ceiling = the other folds when they hold a clip of
    every reference class, else the last recording (every take) of each class with two or more.
    """
    read = read_clips(source, hub_split=hub_split, skip_bad=skip_bad)
    categories = class_names(read)
    if skip_bad:  # unreadable clips too, as training's scan leaves them out
        sources = read["path"] if "path" in read.columns else read["audio_bytes"]
        readable = [_readable(item) for item in sources]
        skipped = read.attrs.get(SKIPPED_ATTR, []) + [name for name, ok in zip(read["filename"], readable) if not ok]
        read = read[readable].reset_index(drop=True)
        read.attrs[SKIPPED_ATTR] = skipped
    clips = _as_clip_table(read)
    training, rule, excluded = None, "unknown (allowed by request)", 0
    if trained_on is None and not allow_training_overlap:
        raise UserError(
            "which real clips the generator trained on is unknown (no training record): give a model saved by "
            "this version, or --allow-training-overlap to score against a reference that may hold them"
        )
    if trained_on is not None:
        stems = {Path(str(name)).stem for name in trained_on}
        in_source = clips[[Path(str(name)).stem in stems for name in clips["filename"]]]
        training = _training_table(training_source, source, trained_on, in_source, hub_split, skip_bad)
        if allow_training_overlap:
            rule = "none: the reference may hold training clips (asked for)"
        else:
            shared = sharing_a_recording(clips, in_source) if len(in_source) else pd.Series(False, index=clips.index)
            _refuse_folds_holding_training(clips[shared], folds, source)
            excluded = int(shared.sum())
            clips = clips[~shared]
            rule = f"every recording the generator trained on left out ({excluded} clips)"
    folds = sorted({int(f) for f in folds})
    reference = clips[clips["fold"].isin(folds)] if folds else clips
    if reference.empty:
        raise UserError(
            f"no clips of {source} are in folds {folds or 'any'} outside the generator's training recordings"
            " (--reference-folds; the model's data.holdout_recordings or data.folds leave none out)"
        )
    others = clips[~clips.index.isin(reference.index)] if folds else clips.iloc[0:0]
    others = others[~sharing_a_recording(others, reference)]
    if not others.empty and set(reference["target"]) <= set(others["target"]):
        held, how = others, "other folds"
    else:
        last = last_recordings(reference, per_class=1, keep=1)
        held, reference = reference[last], reference[~last]
        how = "last recording (every take) of each class with two or more"
    classes = sorted(set(reference["target"]) & set(held["target"]))
    if not classes:
        raise UserError(
            f"{source}: no class has real clips of two recordings outside the generator's training data, so "
            "there is neither a reference nor a ceiling (train with data.holdout_recordings, or other folds)"
        )
    split = ReferenceSplit(
        source, _only(reference, classes), _only(held, classes), how, classes, training, rule,
        overlaps_training=allow_training_overlap and (training is None or len(training) > 0),
        excluded_for_training=excluded, categories=categories, skipped_rows=len(read.attrs.get(SKIPPED_ATTR, [])),
    )  # fmt: skip
    return split


def _refuse_folds_holding_training(shared: pd.DataFrame, folds, source: str) -> None:
    """Folds asked for by name that hold the generator's training recordings: a request that contradicts itself."""
    asked = shared[shared["fold"].isin([int(f) for f in folds])]
    if len(asked):
        named = ", ".join(str(f) for f in sorted(set(asked["fold"])))
        raise UserError(
            f"--reference-folds: fold(s) {named} of {source} hold {len(asked)} clips of recordings the generator "
            "trained on; leave them out (the default reference is what it never heard) or pass --allow-training-overlap"
        )


def _only(clips: pd.DataFrame, classes: list[int]) -> pd.DataFrame:
    return clips[clips["target"].isin(classes)].reset_index(drop=True)


def _readable(source) -> bool:
    """Whether a clip decodes as training's scan decodes it (empty, silent, NaN or broken files do not)."""
    from core.audio import BadAudioError, decode_audio

    try:
        decode_audio(source, 16000, 5.0)
        return True
    except BadAudioError:
        return False


def _training_table(
    training_source: str, source: str, names: list[str], in_source: pd.DataFrame, hub_split: str, skip_bad: bool
) -> pd.DataFrame:
    """The generator's training clips as a clip table: from its own source when that is another readable one,
    else those found in the reference's source."""
    from core.spectrograms import source_identity

    if training_source and source_identity(training_source) != source_identity(source):
        try:
            own = _as_clip_table(read_clips(training_source, hub_split=hub_split, skip_bad=skip_bad))
            return own[own["filename"].isin(set(map(str, names)))].reset_index(drop=True)
        except UserError:
            pass
    return in_source.reset_index(drop=True)


def _as_clip_table(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    table["source"] = table["path"] if "path" in table.columns else table["audio_bytes"]
    columns = ["filename", "fold", "target", "category", "source"]
    if "src_file" in table.columns:
        columns.append("src_file")
    return table[columns]


def check_interval_sizes(split: ReferenceSplit, bootstrap: int) -> None:
    """Bootstrap intervals over a handful of clips mean nothing: refuse before any embedding work."""
    if bootstrap <= 0:
        return
    for name, clips in (("reference", split.reference), ("ceiling (held-out)", split.held_out)):
        if len(clips) < MIN_INTERVAL_CLIPS:
            raise UserError(
                f"the {name} set of {split.source} has {len(clips)} clips: a bootstrap interval needs at least "
                f"{MIN_INTERVAL_CLIPS} (give a larger reference, or --bootstrap 0 for no intervals)"
            )


def protocol_lines(tags: dict[str, str]) -> list[str]:
    """The protocol as the lines printed above every table (from `Evaluator.describe()`'s tags)."""

    def tag(key: str, default: str = "?") -> str:
        return tags.get(f"evaluation.{key}", default)

    lines = [
        f"Protocol: reference {tag('reference_clips')} real clips ({tag('reference_recordings')} recordings) of "
        f"{tag('reference')}, {tag('classes')} classes; ceiling {tag('held_out_clips')} real clips "
        f"({tag('held_out_rule')}), no recording shared with the reference.",
        f"Generator's training clips: {tag('training_clips')}; {tag('training_rule')}.",
        f"Preprocessing (real and generated alike): {tag('preprocessing')}.",
        f"Intervals: {tag('intervals', 'none')}. Metrics: {tag('metric_versions', tag('metrics'))}.",
    ]
    if tag("reference_overlaps_training") == "true":
        lines.insert(0, "WARNING: the reference may hold clips the generator trained on (--allow-training-overlap).")
    if "evaluation.representation_ceiling" in tags:
        lines.append(f"Representation ceiling: {tag('representation_ceiling')}.")
    if tag("generated_left_out", "0") != "0":
        lines.append(
            f"Generated clips of classes without reference or ceiling clips, not scored: {tag('generated_left_out')}."
        )
    return lines
