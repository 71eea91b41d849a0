"""FAD through the frechet_audio_distance package, offline: random-weight PANN and EnCodec checkpoints
written where the package looks for them, so its real loading and embedding code runs without a download."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch

from core.errors import UserError
from evaluation.fad import (
    ENCODEC_FILES,
    PANN_FILES,
    load_fad_model,
    per_class_distances,
    reference_cache_key,
    reference_embeddings,
)

SECONDS = 1.0  # short clips keep the CPU tests fast; the tool's default is 5.0 s


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-weight PANN (16 kHz) and EnCodec (24 kHz) checkpoints under the names the package loads."""
    from encodec import EncodecModel
    from frechet_audio_distance.models.pann import Cnn14_16k

    folder = tmp_path_factory.mktemp("fad-weights")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        pann = Cnn14_16k(
            sample_rate=16000, window_size=512, hop_size=160, mel_bins=64, fmin=50, fmax=8000, classes_num=527
        )
        torch.save({"model": pann.state_dict()}, folder / PANN_FILES[16000])
        write_encodec(folder, seed=0)
    del pann, EncodecModel
    return folder


def write_encodec(folder: Path, seed: int) -> None:
    from encodec import EncodecModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        path = folder / ENCODEC_FILES[24000]
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(EncodecModel.encodec_model_24khz(pretrained=False).state_dict(), path)


def tone_clips(folder: Path, sample_rate: int, noise: float, count: int = 4) -> pd.DataFrame:
    """Decaying tones of different pitches (one per class), plus white noise of the given level."""
    folder.mkdir(parents=True, exist_ok=True)
    time = np.arange(int(sample_rate * SECONDS)) / sample_rate
    rows = []
    for i in range(count):
        rng = np.random.default_rng(i)
        clip = 0.5 * np.sin(2 * np.pi * (200 + 150 * i) * time) * np.exp(-time * (1 + i))
        clip += 0.01 * rng.normal(size=time.size) + noise * np.random.default_rng(100 + i).normal(size=time.size)
        path = folder / f"{i}.wav"
        soundfile.write(path, np.clip(clip, -1, 1).astype(np.float32), sample_rate, subtype="FLOAT")
        rows.append({"filename": path.name, "target": i % 3, "category": "x", "source": str(path)})
    return pd.DataFrame(rows)


def test_pann_fad_through_the_package_is_zero_for_the_same_set_and_grows_with_noise(ckpt_dir, tmp_path):
    model = load_fad_model("pann", ckpt_dir=ckpt_dir)
    assert model.metric == "fad_pann" and model.sample_rate == 16000
    reference = tone_clips(tmp_path / "reference", 16000, noise=0.0)
    stats = reference_embeddings(model, reference, tmp_path / "cache", SECONDS, show_progress=False)
    assert stats.embeddings.shape == (4, 2048)  # one 2048-d row per clip, not the package's flattened 1-D array

    distances = []
    for noise in (0.0, 0.05, 0.5):
        embeddings, owners = model.embed(tone_clips(tmp_path / f"noisy{noise}", 16000, noise), SECONDS, False)
        assert owners.tolist() == list(range(4))
        distances.append(model.distance(stats.embeddings, embeddings))
    same, slightly, very = distances
    assert abs(same) < 1e-6 * very
    assert 0 < slightly < very


def test_our_fad_equals_the_packages_own_score_on_the_same_files(ckpt_dir, tmp_path):
    model = load_fad_model("encodec", ckpt_dir=ckpt_dir)
    reference = tone_clips(tmp_path / "background", 24000, noise=0.0)
    generated = tone_clips(tmp_path / "eval", 24000, noise=0.2)
    stats = reference_embeddings(model, reference, tmp_path / "cache", SECONDS, show_progress=False)
    embeddings, owners = model.embed(generated, SECONDS, False)
    assert len(embeddings) == 4 * 75 and set(owners) == set(range(4))  # EnCodec: 75 frames per second, all clips
    ours = model.distance(stats.embeddings, embeddings)

    theirs = model.fad.score(str(tmp_path / "background"), str(tmp_path / "eval"))
    assert theirs > 0
    assert ours == pytest.approx(theirs, rel=1e-4)

    # Per class, where a class has enough clips on both sides (class 0: clips 0 and 3).
    targets = generated["target"].to_numpy()
    per_class = per_class_distances(model, stats, embeddings, owners, targets, min_clips=2)
    assert list(per_class) == [0] and per_class[0] > 0


def test_reference_embeddings_are_cached_and_the_key_follows_reference_and_model(ckpt_dir, tmp_path):
    cache = tmp_path / "cache"
    model = load_fad_model("encodec", ckpt_dir=ckpt_dir)
    reference = tone_clips(tmp_path / "reference", 24000, noise=0.0)
    first = reference_embeddings(model, reference, cache, SECONDS, show_progress=False)
    second = reference_embeddings(model, reference, cache, SECONDS, show_progress=False)
    assert not first.from_cache and second.from_cache and first.path == second.path
    np.testing.assert_array_equal(first.embeddings, second.embeddings)

    key = reference_cache_key(model, reference, SECONDS)
    assert reference_cache_key(model, reference.iloc[:3], SECONDS) != key  # a clip fewer
    soundfile.write(reference["source"][0], np.zeros(24000, np.float32) + 0.1, 24000)  # a file rewritten
    assert reference_cache_key(model, reference, SECONDS) != key
    assert reference_cache_key(model, reference, 5.0) != reference_cache_key(model, reference, SECONDS)
    third = reference_embeddings(model, reference, cache, SECONDS, show_progress=False)
    assert not third.from_cache and not np.allclose(third.embeddings, first.embeddings)

    other_weights = tmp_path / "other-weights"
    write_encodec(other_weights, seed=1)
    retrained = load_fad_model("encodec", ckpt_dir=other_weights)
    assert reference_cache_key(retrained, reference, SECONDS) != reference_cache_key(model, reference, SECONDS)

    third.path.write_bytes(b"not an npz file")  # a damaged cache entry is recomputed, not trusted
    assert not reference_embeddings(model, reference, cache, SECONDS, show_progress=False).from_cache


def test_a_clip_the_package_fails_to_embed_stops_the_score(ckpt_dir, tmp_path):
    model = load_fad_model("encodec", ckpt_dir=ckpt_dir)
    clips = tone_clips(tmp_path / "clips", 24000, noise=0.0)
    encoder = model.fad.model.encoder

    class FailsOnLoudClips(torch.nn.Module):  # the package's loop catches this, prints it and skips the clip
        def forward(self, audio):
            if audio.abs().max() > 0.45:
                raise RuntimeError("cannot embed this clip")
            return encoder(audio)

    model.fad.model.encoder = FailsOnLoudClips()
    with pytest.raises(UserError, match=r"encodec embedded \d of 4 clips: 0.wav \(.*cannot embed this clip"):
        model.embed(clips, SECONDS, False)


def test_batched_pann_gives_the_packages_clip_by_clip_embeddings_and_still_names_a_failing_clip(ckpt_dir, tmp_path):
    model = load_fad_model("pann", ckpt_dir=ckpt_dir)
    clips = tone_clips(tmp_path / "clips", 16000, noise=0.1, count=5)
    batched, owners = model.embed(clips, SECONDS, False)
    assert batched.shape == (5, 2048) and owners.tolist() == list(range(5))
    samples = [soundfile.read(path, dtype="float32")[0] for path in clips["source"]]
    with contextlib.redirect_stdout(io.StringIO()):
        package = np.stack([model.fad.get_embeddings([clip], sr=16000) for clip in samples])
    np.testing.assert_allclose(batched, package, rtol=1e-4, atol=1e-6)
    assert model._frozen is None  # 5 clips: not worth tracing

    model.freeze_min_clips = 0  # the frozen trace (CPU), its batch padded from 5 to 16 clips
    frozen, _ = model.embed(clips, SECONDS, False)
    assert model._frozen is not None and model._frozen[0][1] == round(SECONDS * 16000)
    np.testing.assert_allclose(frozen, package, rtol=1e-4, atol=1e-6)
    model.freeze_min_clips = 100

    network = model.fad.model
    loud = np.random.default_rng(0).uniform(-0.9, 0.9, 16000).astype(np.float32)
    soundfile.write(clips["source"][2], loud, 16000, subtype="FLOAT")

    class FailsOnNoise(torch.nn.Module):  # a failing batch falls back to clip by clip, which names the clip
        def forward(self, audio, mixup_lambda=None):
            if audio.abs().mean(dim=1).max() > 0.3:
                raise RuntimeError("cannot embed this clip" if len(audio) == 1 else "cannot embed this batch")
            return network(audio, mixup_lambda)

    model.fad.model = FailsOnNoise()
    with pytest.raises(UserError, match=r"^pann embedded 4 of 5 clips: 2.wav \(.*cannot embed this clip\)$"):
        model.embed(clips, SECONDS, False)


def test_missing_weights_offline_name_what_to_provide(tmp_path):
    with pytest.raises(UserError, match=r"vggish weights missing offline: put harritaylor_torchvggish_master.*"):
        load_fad_model("vggish", ckpt_dir=tmp_path)
    with pytest.raises(UserError, match=str(tmp_path)):
        load_fad_model("vggish", ckpt_dir=tmp_path)
    with pytest.raises(UserError, match=r"Cnn14_8k_mAP%3D0.416.pth"):
        load_fad_model("pann", sample_rate=8000, ckpt_dir=tmp_path)
    with pytest.raises(UserError, match="--fad-sample-rate 22050 is not supported by vggish"):
        load_fad_model("vggish", sample_rate=22050, ckpt_dir=tmp_path)
    # The torchvggish clone without its weights: the package's own loader fails, and says where it looked.
    (tmp_path / "harritaylor_torchvggish_master").mkdir()
    for name in ("vggish-10086976.pth", "vggish_pca_params-970ea276.pth"):
        (tmp_path / "checkpoints").mkdir(exist_ok=True)
        (tmp_path / "checkpoints" / name).write_bytes(b"")
    with pytest.raises(UserError, match=f"cannot load the vggish FAD model from {tmp_path}"):
        load_fad_model("vggish", ckpt_dir=tmp_path)


def test_cli_exits_2_naming_the_missing_weights(tmp_path, esc50_mini, capsys):
    from evaluation.evaluate import main

    generated = tmp_path / "generated"
    tone_clips(generated / "dog", 22050, noise=0.0, count=1)
    (generated / "manifest.csv").write_text("file,target,category\ndog/0.wav,0,dog\n")
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["--generated", str(generated), "--reference", str(esc50_mini), "--metrics", "fad",
             "--ckpt-dir", str(tmp_path / "empty"), "--no-mlflow", "--no-progress", "--trained-on-none"]
        )  # fmt: skip
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: vggish weights missing offline") and str(tmp_path / "empty") in error
    assert len(error.splitlines()) == 1


def test_fad_gets_an_interval_fad_infinity_and_the_memorization_share(ckpt_dir, tmp_path):
    """Through the evaluator, as for any backbone: PANN (random weights) on tone clips of three classes."""
    from evaluation.metrics.memorization import FLAG_SHARE
    from evaluation.protocol import ReferenceSplit
    from evaluation.scoring import EvalOptions, Evaluator

    def clips(name: str, noise: float, count: int) -> pd.DataFrame:
        table = tone_clips(tmp_path / name, 16000, noise, count)
        return table.assign(filename=[f"{name}-{n}" for n in table["filename"]])

    training = clips("training", 0.05, 8)  # 8 clips: enough for FD-infinity
    split = ReferenceSplit("tones", clips("reference", 0.02, 12), clips("held-out", 0.03, 10), "test", [0, 1, 2],
                           training=training)  # fmt: skip
    options = EvalOptions(fad_model="pann", ckpt_dir=str(ckpt_dir), clip_seconds=SECONDS, bootstrap=50, peak=0)
    evaluator = Evaluator(split, ["fad"], options, tmp_path / "cache", sample_rate=16000, show_progress=False)
    copies = evaluator.score(training, generated=True).metrics  # a generator replaying its training clips
    assert copies["fad_pann_ci_low"] <= copies["fad_pann"] <= copies["fad_pann_ci_high"]
    assert np.isfinite(copies["fad_pann_inf"])
    assert copies["memorization_fad"] == 1.0
    noise = evaluator.score(clips("noise", 0.8, 9), generated=True).metrics  # nothing like the training clips
    assert noise["memorization_fad"] < FLAG_SHARE
