"""Sweep files: the grid from YAML, overrides, and a one-line exit-2 error for every bad key or value."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import UserError
from tuning.cluster import trial_slots
from tuning.spec import load_sweep, trial_key
from tuning.tracking_server import absolute_store_uri

REPO = Path(__file__).resolve().parents[1]
ABLATION = REPO / "configs" / "ablation.yaml"
ABLATION_TINY = REPO / "configs" / "ablation_tiny.yaml"


@pytest.fixture(autouse=True)
def _nothing_lands_in_the_repo(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_the_study_grid_and_the_tiny_grid():
    study = load_sweep(ABLATION)
    assert study.grid == {"train.loss": ["l1", "l2"], "model.attention": [True, False], "data.normalize": [True, False]}
    assert study.settings.seeds == [0, 1, 2] and study.trial_count() == 24
    assert study.base["data"]["resolution"] == 64 and study.settings.gpus_per_trial >= 1
    tiny = load_sweep(ABLATION_TINY)
    assert tiny.grid == study.grid and tiny.trial_count() == 8
    assert tiny.settings.gpus_per_trial == 0 and tiny.base["train"]["max_steps"] <= 20
    assert tiny.settings.evaluate.metrics == ["esc"]


def test_overrides_reach_the_base_and_the_sweep():
    spec = load_sweep(ABLATION_TINY, ["data.source=/elsewhere", "sweep.seeds=[3,4]", "sweep.grid.train.loss=[l2]"])
    assert spec.base["data"]["source"] == "/elsewhere"
    assert spec.grid["train.loss"] == ["l2"] and spec.settings.seeds == [3, 4]
    assert spec.trial_count() == 1 * 2 * 2 * 2
    config = spec.trial_config({"train.loss": "l2", "model.attention": False, "data.normalize": True, "seed": 4})
    assert (config.train.loss, config.model.attention, config.data.normalize, config.seed) == ("l2", False, True, 4)
    assert config.train.max_steps == spec.base["train"]["max_steps"]


def test_any_config_key_is_an_axis_and_space_needs_random_search(tmp_path: Path):
    sweep = tmp_path / "lr.yaml"
    sweep.write_text(
        f"base: {REPO / 'configs' / 'tiny.yaml'}\n"
        "sweep:\n  name: lr\n  search: random\n  num_samples: 3\n"
        "  grid: {train: {learning_rate: [1.0e-4, 3.0e-4]}}\n"
        "  space: {train.warmup_steps: {randint: [0, 10]}, sample.scheduler: {choice: [ddim, ddpm]}}\n"
    )
    spec = load_sweep(sweep)
    assert spec.grid == {"train.learning_rate": [1e-4, 3e-4]}
    assert spec.space == {"train.warmup_steps": {"randint": [0, 10]}, "sample.scheduler": {"choice": ["ddim", "ddpm"]}}
    assert spec.axes == ["train.learning_rate", "train.warmup_steps", "sample.scheduler"]
    assert spec.trial_count() == 2 * 3 * 3  # grid x samples x seeds
    with pytest.raises(UserError, match="sweep.search=random or asha"):
        load_sweep(sweep, ["sweep.search=grid"])
    with pytest.raises(UserError, match=r"sweep.space.train.warmup_steps': randint needs numbers low < high"):
        load_sweep(sweep, ["sweep.space.train.warmup_steps={randint: [10, 0]}"])
    with pytest.raises(UserError, match=r"loguniform needs numbers low < high, both > 0"):
        load_sweep(sweep, ["sweep.space.train.weight_decay={loguniform: [0, 1.0e-3]}"])


def test_draws_from_the_space_are_seeded_valid_and_shared_by_a_draws_seeds(tmp_path: Path):
    from ray.tune.search.variant_generator import generate_variants

    from tuning.sweep import draw_samples, param_space

    sweep = tmp_path / "lr.yaml"
    sweep.write_text(
        f"base: {REPO / 'configs' / 'tiny.yaml'}\n"
        "sweep:\n  name: lr\n  search: random\n  num_samples: 4\n  seeds: [0, 1]\n"
        "  space: {train.learning_rate: {loguniform: [1.0e-5, 1.0e-3]}, train.warmup_steps: {randint: [0, 10]}}\n"
    )
    spec = load_sweep(sweep)
    drawn = draw_samples(spec)
    assert drawn == draw_samples(load_sweep(sweep))  # the same file draws the same values
    assert drawn != draw_samples(load_sweep(sweep, ["sweep.sample_seed=1"]))
    assert len(drawn) == 4 and len({d["train.learning_rate"] for d in drawn}) == 4
    assert all(1e-5 <= d["train.learning_rate"] <= 1e-3 and type(d["train.learning_rate"]) is float for d in drawn)
    assert all(0 <= d["train.warmup_steps"] < 10 and type(d["train.warmup_steps"]) is int for d in drawn)

    # Tune's own resolution of the search space: each draw runs with every seed, with the same values.
    trials = [config for _, config in generate_variants(param_space(spec))]
    assert len(trials) == spec.trial_count() == 4 * 2
    assert sorted((c["sample_index"], c["seed"]) for c in trials) == [(i, s) for i in range(4) for s in (0, 1)]
    for config in trials:
        assert config["train.learning_rate"] == drawn[config["sample_index"]]["train.learning_rate"]
        spec.trial_config(config)  # the index is not a config key: a trial's config still validates


@pytest.mark.parametrize(
    ("override", "culprit"),
    [
        ("sweep.grid.train.losss=[l1]", "train.losss"),  # not a config key
        ("sweep.grid.train.loss=[l1,l3]", "train.loss"),  # a value the config rejects
        ("sweep.grid.model.attention=true", "sweep.grid.model.attention"),  # not a list
        ("sweep.search=bayes", "sweep.search"),
        ("sweep.mode=lowest", "sweep.mode"),
        ("sweep.seeds=[]", "sweep.seeds"),
        ("sweep.cpus_per_trial=0", "sweep.cpus_per_trial"),
        ("sweep.gpus_per_trial=many", "gpus_per_trial"),
        ("sweep.colour=blue", "colour"),
        ("sweep.grid.seed=[1,2]", "sweep.seeds"),
        ("model.block_channels=[16,32,36]", "model.norm_groups"),  # a base override that breaks the base
        # Found by fuzzing load_sweep with hypothesis (they raised TypeError and yaml's ReaderError):
        ("sweep.seeds={}", "sweep.seeds"),
        ("sweep.asha={stages: [1]}", "sweep.asha.stages"),
        ("sweep.name=\x1f", "sweep.name=\\x1f"),
        # The evaluation protocol, checked before Ray starts: options it rejects, a model trained on everything.
        ("sweep.evaluate.options={real_row: true}", "real_row"),
        ("sweep.evaluate.options={bootstrap: -1}", "bootstrap"),
        ("data.holdout_recordings=0", "data.holdout_recordings"),
        # Named configurations: keys, values and the baseline checked like the grid's.
        ("sweep.variants={odd: {train.colour: red}}", "sweep.variants.odd.train.colour"),
        ("sweep.variants={odd: {train.prediction: bogus}}", "train.prediction"),
        ("sweep.variants={'a,b': {}}", "variant name"),
        ("sweep.variants={odd: {train.loss: l1}}", "sweep.variants.odd"),  # a key the grid sweeps
        ("sweep.variants={odd: 3}", "sweep.variants.odd"),
        ("sweep.baseline=variant=l2", "sweep.baseline"),  # this sweep has no variants
        ("sweep.baseline=loss=l3", "sweep.baseline"),
        ("sweep.baseline=loss=l2", "name model.attention, data.normalize too"),  # several configurations
    ],
)
def test_bad_keys_and_values_exit_2_naming_the_culprit(override: str, culprit: str, capsys):
    from tuning.sweep import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(ABLATION_TINY), override])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and culprit in error and "\n" not in error


def test_missing_file_and_unknown_section(tmp_path: Path):
    with pytest.raises(UserError, match="not found"):
        load_sweep(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: tiny.yaml\nswept: {}\n")
    with pytest.raises(UserError, match="swept"):
        load_sweep(bad)


def test_trial_keys_are_stable_and_distinct():
    a = {"train.loss": "l1", "model.attention": True, "seed": 0}
    assert trial_key(a) == trial_key(dict(reversed(list(a.items()))))  # order does not matter
    assert trial_key(a) != trial_key({**a, "seed": 1}) != trial_key({**a, "train.loss": "l2"})
    assert "/" not in trial_key({"data.source": "/a/b", "seed": 0})


def test_relative_store_uris_are_pinned(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_store_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert absolute_store_uri("mlruns") == f"file://{tmp_path / 'mlruns'}"
    assert absolute_store_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_pin_paths_makes_trial_paths_absolute(tmp_path: Path, monkeypatch):
    from tuning.sweep import pin_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    spec = load_sweep(ABLATION_TINY, ["data.source=./data", "data.cache_dir=.cache/x"])
    pin_paths(spec)
    assert spec.base["data"]["source"] == str(tmp_path / "data")
    assert spec.base["data"]["cache_dir"] == str(tmp_path / ".cache" / "x")
    assert Path(spec.settings.evaluate.cache_dir).is_absolute()


def test_trial_slots_count_whole_bundles_per_node():
    nodes = [{"CPU": 8.0, "GPU": 2.0}, {"CPU": 3.0}]
    assert trial_slots(nodes, cpus=2, gpus=0) == 4 + 1
    assert trial_slots(nodes, cpus=2, gpus=1) == 2  # the GPU-less node holds none
    assert trial_slots(nodes, cpus=4, gpus=0.5) == 2  # CPU-bound on the GPU node


def test_the_sweep_splits_one_quoted_overrides_argument_as_training_does(capsys):
    """`mlflow run . -e sweep -P overrides="a=1 b=2"` passes one argument; it was read as train.max_steps='6 ...'."""
    from tuning.sweep import main

    with pytest.raises(SystemExit) as exit_info:  # a bad search stops it before Ray starts: the split is what we test
        main(["--config", str(ABLATION_TINY), "train.max_steps=6 train.log_every=2", "sweep.search=bogus"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "'sweep.search'" in error and "train.max_steps" not in error


def test_variants_are_named_configurations_run_with_every_seed():
    study = load_sweep(REPO / "configs" / "study_cpu.yaml")
    assert study.axes == ["variant"] and study.trial_count() == len(study.variants) * 3
    assert study.settings.baseline == "variant=l2" and study.variants["l2"] == {}
    # The seed's three ablations and, on the baseline, the recipe's axes one at a time.
    assert {"l1", "no_attention", "no_normalization", "v_min_snr", "cosine", "zero_snr", "cfg_g2", "cfg_g4",
            "mel64", "level_fixed"} <= set(study.variants)  # fmt: skip
    config = study.trial_config({"variant": "cfg_g4", "seed": 2})
    assert (config.model.class_dropout, config.sample.guidance_scale, config.seed) == (0.1, 4.0, 2)
    assert config.train.loss == "l2" and config.model.attention and config.data.normalize  # the rest: the base
    mel = study.trial_config({"variant": "mel64", "seed": 0}).data
    assert (mel.mel_bins, mel.frames) == (64, 32)
    assert trial_key({"variant": "cosine", "seed": 1}).startswith("variant=cosine,seed=1-")
    assert [c["variant"] for c in study.configurations()] == list(study.variants)

    variants = ["sweep.variants={a: {}, b: {train.warmup_steps: 3}}",
                "sweep.baseline=variant=b,loss=l2,attention=True,normalize=True"]  # fmt: skip
    crossed = load_sweep(ABLATION_TINY, variants)
    assert crossed.trial_count() == 2 * 8 and crossed.axes[0] == "variant"  # with every grid point too


def test_a_sweep_without_address_starts_its_own_ray_even_where_one_is_advertised(tmp_path: Path):
    """RAY_ADDRESS (left by another Ray in the environment) or a `ray start` cluster on the machine: ray.init()
    would join it and refuse num_cpus; the sweep's own local Ray is what no --address means."""
    import os
    import subprocess
    import sys

    code = ("import ray; from tuning.cluster import connect; assert connect(None, 1); "
            "print('cpus', ray.cluster_resources()['CPU']); ray.shutdown()")  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}  # nothing listens there
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                               timeout=180)  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "cpus 1.0" in completed.stdout
