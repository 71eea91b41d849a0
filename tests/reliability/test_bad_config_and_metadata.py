"""Bad configs and bad metadata: exit 2 (or UserError) naming the key or file, before any work starts."""

from __future__ import annotations

import string

import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from core.config import Config, flatten, load_config
from core.errors import UserError
from core.esc50 import read_clips, unlisted_audio_files
from tests.conftest import TINY_CONFIG
from tests.reliability.conftest import copy_esc50, error_lines

BAD_CONFIGS = [
    ("train.max_stepz=10", "train.max_stepz"),  # unknown key (a typo)
    ("model.attention=maybe", "model.attention"),  # wrong type
    ("train.batch_size=sixteen", "train.batch_size"),
    ("data.resolution=48", "data.resolution"),  # not a power of two
    ("data.resolution=4", "data.resolution"),  # too small for the UNet's levels
    ("train.max_steps=-5", "train.max_steps"),  # negative steps
    ("sample.steps=0", "sample.steps"),
    ("train.loss=huber", "train.loss"),  # a loss that does not exist
    ("model.norm_groups=5", "model.norm_groups"),  # does not divide the channels
    # Found by hypothesis (a TypeError, a ZeroDivisionError, a NaN passing every check):
    ("model.block_channels={}", "model.block_channels"),  # a mapping where a list belongs
    ("model.norm_groups=0", "model.norm_groups"),
    ("train.learning_rate=nan", "train.learning_rate"),
]


@pytest.mark.parametrize(("override", "key"), BAD_CONFIGS)
def test_bad_config_exits_2_naming_the_key_before_any_work(override, key, tmp_path, capsys):
    from training.train import main

    output_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(TINY_CONFIG), f"output_dir={output_dir}", override])
    assert exit_info.value.code == 2
    (error,) = error_lines(capsys.readouterr().err)
    assert f"'{key}'" in error
    assert not output_dir.exists(), "work started before the config was checked"


VALID = flatten(load_config(TINY_CONFIG, ["output_dir=x"]))
keys = st.sampled_from(sorted(VALID)) | st.text(string.ascii_lowercase + "._", min_size=1, max_size=20)
values = st.one_of(
    st.integers(-(2**40), 2**40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["true", "false", "null", "[]", "[1,2]", "[0,64]", "{}", "[{}]", "[[1]]", "l1", "ddpm", "", "'x'"]),
    st.just("${oops}"),
    st.text(max_size=10),
)


@settings(max_examples=150, deadline=None)
@given(overrides=st.lists(st.tuples(keys, values), max_size=4))
@example(overrides=[("model.block_channels", "{}")])  # OmegaConf raised a bare TypeError here
@example(overrides=[("model.norm_groups", "0")])  # validate() divided by it
@example(overrides=[("data.folds", "[{}]")])  # to_object let a mapping into a list of ints
def test_any_overrides_give_a_valid_config_or_a_user_error(overrides):
    """Random dotted keys and values: a Config that validates, or a UserError, never another exception."""
    dotted = ["output_dir=x"] + [f"{key}={value}" for key, value in overrides]
    try:
        config = load_config(TINY_CONFIG, dotted)
    except UserError as error:
        assert str(error) and "\n" not in str(error)  # one line
        return
    assert isinstance(config, Config)
    assert config.data.resolution & (config.data.resolution - 1) == 0 and config.train.max_steps >= 1


SWEEP_KEYS = st.sampled_from(
    ["sweep.name", "sweep.seeds", "sweep.search", "sweep.num_samples", "sweep.mode", "sweep.cpus_per_trial",
     "sweep.generate.classes", "sweep.evaluate.metrics", "sweep.asha", "sweep.asha.stages", "sweep.grid",
     "sweep.space", "sweep.grid.train.loss", "sweep.space.train.learning_rate", "sweep", "train.max_steps"]
)  # fmt: skip
SWEEP_VALUES = values | st.sampled_from(
    ["{a: 1}", "{loguniform: [1, 0]}", "{loguniform: [0.001, 0.1]}", "{choice: []}", "{uniform: [a, b]}",
     "{stages: [1]}", "[[1]]", "[{}]", "asha", "random"]
)  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(overrides=st.lists(st.tuples(SWEEP_KEYS, SWEEP_VALUES), max_size=3))
@example(overrides=[("sweep.seeds", "{}")])  # OmegaConf raised a bare TypeError here
@example(overrides=[("sweep.name", "\x1f")])  # and yaml a ReaderError here
@example(overrides=[("sweep.seeds", "[{}]")])  # and to_object let a mapping into a list of ints
def test_any_sweep_overrides_give_a_sweep_or_a_user_error(overrides):
    """The same over sweep files: a checked SweepSpec, or a one-line UserError."""
    from tests.test_sweep_helpers import ABLATION_TINY
    from tuning.spec import SweepSpec, load_sweep

    try:
        spec = load_sweep(ABLATION_TINY, [f"{key}={value}" for key, value in overrides])
    except UserError as error:
        assert str(error) and "\n" not in str(error)  # one line
        return
    assert isinstance(spec, SweepSpec) and spec.trial_count() >= 1


@pytest.fixture
def esc50_copy(esc50_mini, tmp_path):
    """A small writable ESC-50 folder: 6 real clips and their CSV rows."""
    source = tmp_path / "esc50"
    return source, copy_esc50(esc50_mini, source, clips=6)


def _write(source, table):
    table.to_csv(source / "meta" / "esc50.csv", index=False)


BAD_TABLES = {
    "missing column": (lambda t: t.drop(columns=["target"]), "lacks required column(s) target"),
    "unknown class": (lambda t: t.assign(category=["dog", "unicorn", *t["category"][2:]]), "unknown class 'unicorn'"),
    "out-of-range class": (lambda t: t.assign(target=[50, *t["target"][1:]]), "class target 50"),
    "non-integer class": (lambda t: t.assign(target=["x", *t["target"][1:]]), "column 'target' is not an integer"),
    "duplicate row": (lambda t: pd.concat([t, t.head(1)]), "is listed more than once"),
    "listed but absent": (
        lambda t: pd.concat([t, t.head(1).assign(filename="1-999-A-0.wav")]),
        "missing from",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_bad_metadata_is_a_user_error_naming_the_csv(case, esc50_copy):
    source, table = esc50_copy
    change, reason = BAD_TABLES[case]
    _write(source, change(table.copy()))
    with pytest.raises(UserError) as error:
        read_clips(str(source))
    assert reason in str(error.value) and "esc50.csv" in str(error.value)


def test_present_but_unlisted_files_are_ignored_and_reported(esc50_copy):
    source, table = esc50_copy
    _write(source, table.head(4))  # the last two files are now on disk but not in the CSV
    clips = read_clips(str(source))
    assert list(clips["filename"]) == sorted(table["filename"].head(4))
    assert unlisted_audio_files(str(source)) == sorted(table["filename"].tail(2))
