"""The config: YAML + dotted overrides through OmegaConf, validation naming the key."""

from __future__ import annotations

import subprocess
import sys

import pytest

from core.config import Config, config_hash, flatten, load_config, to_yaml
from core.errors import UserError
from tests.conftest import REPO, TINY_CONFIG


@pytest.mark.parametrize("name", ["tiny.yaml", "esc50_64.yaml", "esc50_256.yaml"])
def test_shipped_configs_load_and_validate(name: str) -> None:
    config = load_config(REPO / "configs" / name)
    assert isinstance(config, Config)
    assert config.data.resolution in (32, 64, 256)


def test_dotted_overrides_win_over_yaml_with_types_converted() -> None:
    config = load_config(TINY_CONFIG, ["train.loss=l1", "model.attention=false", "data.normalize=false", "seed=7"])
    assert (config.train.loss, config.model.attention, config.data.normalize, config.seed) == ("l1", False, False, 7)
    assert config.data.resolution == 32  # from the YAML
    assert config.train.adam_beta2 == 0.999  # from the defaults


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.lossy=l1", "train.lossy"),
        ("train.loss=l3", "train.loss"),
        ("train.max_steps=-5", "train.max_steps"),
        ("train.max_steps=many", "train.max_steps"),
        ("data.resolution=48", "data.resolution"),
        ("train.mixed_precision=fp8", "train.mixed_precision"),
        ("model.norm_groups=7", "model.norm_groups"),
        ("data.folds=[0]", "data.folds"),
    ],
)
def test_bad_values_name_their_key(override: str, key: str) -> None:
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        load_config(TINY_CONFIG, [override])


def test_output_dir_is_required() -> None:
    with pytest.raises(UserError, match="output_dir"):
        load_config(None, [])


def test_missing_config_file_is_named(tmp_path) -> None:
    with pytest.raises(UserError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_round_trip_through_yaml_and_hash_ignores_output_dir(tmp_path) -> None:
    config = load_config(TINY_CONFIG, ["train.loss=l1"])
    saved = tmp_path / "resolved.yaml"
    saved.write_text(to_yaml(config))
    assert load_config(saved) == config
    moved = load_config(TINY_CONFIG, ["train.loss=l1", "output_dir=elsewhere"])
    assert config_hash(moved) == config_hash(config)
    assert config_hash(load_config(TINY_CONFIG, ["train.loss=l2"])) != config_hash(config)
    assert flatten(config)["train.loss"] == "l1"


def test_unknown_key_on_the_command_line_exits_2_with_one_line(tmp_path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.train",
            "--config",
            str(TINY_CONFIG),
            "train.bogus=1",
            f"output_dir={tmp_path}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "train.bogus" in result.stderr
    assert not (tmp_path / "config.yaml").exists()  # checked before any work


def test_overrides_are_split_the_same_way_everywhere_and_a_value_with_spaces_stays_whole() -> None:
    from core.config import split_overrides

    assert split_overrides(["train.max_steps=6 train.log_every=2", "seed=1"]) == [
        "train.max_steps=6", "train.log_every=2", "seed=1",
    ]  # fmt: skip
    assert split_overrides(["sweep.asha={stages: [1]}"]) == ["sweep.asha={stages: [1]}"]
    assert split_overrides(["model.block_channels=[8, 16]"]) == ["model.block_channels=[8, 16]"]
