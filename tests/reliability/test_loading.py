"""Loading what is not a model or a checkpoint: a clear error; nothing is ever unpickled into running code."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from core.diffusion.model import DiffusionModel, resolve_model_folder
from core.errors import UserError
from training.checkpoints import MARKER, complete_checkpoints, verify_checkpoint


class Payload:
    """Unpickling this runs code (it creates a file): what a tampered checkpoint would do."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_wrong_folder_is_not_a_model(tmp_path):
    with pytest.raises(UserError, match="no model at"):
        resolve_model_folder(str(tmp_path))
    with pytest.raises(UserError, match="is not a saved model"):
        DiffusionModel.load(tmp_path)


def test_truncated_weights_are_a_clear_error(trained_tiny_model, tmp_path):
    model = shutil.copytree(trained_tiny_model / "model", tmp_path / "model")
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match=f"cannot load the model in {model}"):
        DiffusionModel.load(model)


def test_model_weights_are_never_unpickled(trained_tiny_model, tmp_path):
    """With the safetensors file gone and a pickle in its place, loading refuses instead of running it."""
    model = shutil.copytree(trained_tiny_model / "model", tmp_path / "model")
    (model / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    ran = tmp_path / "payload-ran"
    torch.save({"weight": Payload(ran)}, model / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(UserError, match="cannot load the model"):
        DiffusionModel.load(model)
    assert not ran.exists()


@pytest.fixture
def checkpoint(trained_tiny_model, tmp_path):
    (original,) = complete_checkpoints(trained_tiny_model)[-1:]
    return shutil.copytree(original, tmp_path / "checkpoints" / original.name)


def test_a_complete_checkpoint_verifies(checkpoint):
    verify_checkpoint(checkpoint)
    assert json.loads((checkpoint / MARKER).read_text())["files"].keys() >= {"model.safetensors", "optimizer.bin"}


def test_pickled_code_in_a_checkpoint_is_refused_before_accelerate_unpickles_it(checkpoint, tmp_path):
    """Accelerate loads registered objects (our EMA) with weights_only=False: we check them with weights_only=True."""
    ran = tmp_path / "payload-ran"
    marker = json.loads((checkpoint / MARKER).read_text())
    marker.pop("files")  # as an older checkpoint, or one whose marker was rewritten to match
    (checkpoint / MARKER).write_text(json.dumps(marker))
    torch.save({"shadow_params": Payload(ran)}, checkpoint / "custom_checkpoint_0.pkl")
    with pytest.raises(ValueError, match="custom_checkpoint_0.pkl is not a plain tensor file"):
        verify_checkpoint(checkpoint)
    assert not ran.exists()


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_checkpoint_file_is_detected(checkpoint, damage):
    target = checkpoint / "random_states_0.pkl"  # accelerate itself ignores a bad one silently
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:100])
    else:
        target.unlink()
    with pytest.raises(ValueError, match="random_states_0.pkl is (truncated|missing)"):
        verify_checkpoint(checkpoint)


def test_resume_from_a_folder_that_is_not_a_checkpoint_exits_2(trained_tiny_model, tmp_path, capsys):
    from tests.conftest import TINY_CONFIG
    from tests.reliability.conftest import FAST, error_lines
    from training.train import main

    not_a_checkpoint = trained_tiny_model / "model"
    overrides = [f"output_dir={tmp_path / 'run'}", f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", *FAST]
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(TINY_CONFIG), "--resume", str(not_a_checkpoint), *overrides])
    assert exit_info.value.code == 2
    (error,) = error_lines(capsys.readouterr().err)
    assert f"--resume {not_a_checkpoint} is not a complete checkpoint folder" in error
