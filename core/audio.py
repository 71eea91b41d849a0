"""Audio in and out: decoding clips to a fixed length and rate, the log-mel transform and its inverse.

The forward transform is librosa's; the inverse (mel -> linear power -> Griffin-Lim) runs in torch
so that a whole batch of generated spectrograms is inverted at once, on the GPU when there is one.
Both use the same STFT settings, so an inverted clip maps back to (nearly) the same spectrogram.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse
import soundfile
import torch

from core.errors import UserError
from core.rng import seeded


class BadAudioError(UserError):
    """A clip that cannot be used; the message names the file and the reason."""


def decode_audio(
    source: str | os.PathLike | bytes, sample_rate: int, seconds: float, name: str = "", info: dict | None = None
) -> np.ndarray:
    """Read a clip as mono float32 at `sample_rate`, padded with silence or trimmed to `seconds`.

    Fixed here: other sample rates (resampled with soxr), several channels (averaged), other
    lengths (padded or trimmed). Rejected, naming the file: unreadable, empty or truncated files,
    non-finite samples, pure silence.
    """
    name = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    if not isinstance(source, bytes):
        _check_regular_file(source, name)
    decoded = _read_16_bit_flac(source)
    samples, native_rate = decoded if decoded is not None else _read_with_libsndfile(source, name)
    if samples.shape[0] == 0:
        raise BadAudioError(f"audio file {name} is empty (0 samples)")
    from_integers = decoded is not None or samples.dtype == np.int16  # finite by construction: 0.1 ms saved
    if not from_integers and not np.isfinite(samples).all():
        raise BadAudioError(f"audio file {name} contains NaN or infinite samples")
    if info is not None:  # what was fixed, for the scan's summary
        info.update(rate=native_rate, channels=samples.shape[1], seconds=samples.shape[0] / native_rate)
    mono = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32)  # ESC-50 is mono
    if not mono.any():
        raise BadAudioError(f"audio file {name} is pure silence")
    if samples.dtype == np.int16:  # scaled as libsndfile scales 16-bit PCM to float: the same samples
        mono = np.multiply(mono, np.float32(1 / 32768), dtype=np.float32)
    elif not from_integers:
        peak = float(np.abs(mono).max())
        if peak > 1.0:  # a float clip beyond full scale (1e35): scaled to full scale, or resampling overflows to inf
            mono = mono / np.float32(peak)
    if native_rate != sample_rate:
        import soxr  # imported here: only needed when rates differ

        mono = soxr.resample(mono, native_rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
    return fix_length(mono, round(sample_rate * seconds))


def _check_regular_file(path: str | os.PathLike, name: str) -> None:
    """What a path that is not a readable file is, named (libsndfile says "System error." for all of them, and
    opening a FIFO would block)."""
    import errno
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise BadAudioError(f"audio file not found: {name}") from None
    except OSError as error:
        what = "is a symlink loop" if error.errno == errno.ELOOP else f"cannot be read ({error.strerror})"
        raise BadAudioError(f"audio file {name} {what}") from None
    if stat.S_ISDIR(mode):
        raise BadAudioError(f"audio file {name} is a directory, not a file")
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise BadAudioError(f"audio file {name} is {kind}, not a regular file")
    if not os.access(path, os.R_OK):
        raise BadAudioError(f"audio file {name} cannot be read (permission denied)")


def _read_with_libsndfile(source: str | os.PathLike | bytes, name: str) -> tuple[np.ndarray, int]:
    """(frames, channels) samples and the file's rate; int16 for 16-bit PCM (WAV: 0.1 ms per ESC-50 clip
    instead of libsndfile's 0.45 ms conversion to float), float32 otherwise."""
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else source
        with soundfile.SoundFile(handle) as audio_file:
            dtype = "int16" if audio_file.subtype == "PCM_16" else "float32"
            samples, native_rate = audio_file.read(dtype=dtype, always_2d=True), audio_file.samplerate
            decoder_log = audio_file.extra_info
    except FileNotFoundError:
        raise BadAudioError(f"audio file not found: {name}") from None
    except Exception as error:  # soundfile raises LibsndfileError/RuntimeError with varying texts
        reason = " ".join(str(error).split()) or type(error).__name__
        raise BadAudioError(f"cannot decode audio file {name}: {reason}") from None
    # libsndfile reads a WAV cut short without complaint; its log shows the declared data size.
    sizes = re.search(r"^data\s*:\s*(\d+) \(should be (\d+)\)", decoder_log, re.MULTILINE)
    declared, present = (int(sizes.group(1)), int(sizes.group(2))) if sizes else (0, 0)
    if declared not in (0, 0xFFFFFFFF) and declared > present + 1:  # 0 / 0xFFFFFFFF: streamed, length unknown
        raise BadAudioError(f"audio file {name} is truncated ({present} of {declared} data bytes present)")
    return samples, native_rate


def _read_16_bit_flac(source: str | os.PathLike | bytes) -> tuple[np.ndarray, int] | None:
    """16-bit FLAC decoded by dr_flac (miniaudio) to (frames, channels) float32 and the file's rate:
    exactly libsndfile's float samples (FLAC is lossless, and both scale by 1/32768), in 1.35 ms per
    5 s ESC-50 clip against libsndfile's 2.5 ms.

    dr_flac's streaming API (miniaudio's cffi `lib`) decodes straight into a numpy array sized from the
    header. miniaudio's one-call `flac_read_file_s16` decodes into a C buffer and copies that into a
    Python array (1.68 ms against 1.35 ms, side by side), and its int16 then needed a pass to float
    (0.1 ms per clip more in the pipeline).
    None for anything else, and for any file dr_flac does not decode completely: it skips frames that
    fail their checksum where libsndfile stops, so those files go to libsndfile, which names the fault.
    """
    if isinstance(source, bytes):
        if source[:4] != b"fLaC":
            return None
    elif not str(source).lower().endswith(".flac"):
        return None
    from miniaudio import ffi, lib  # imported here: only FLAC needs it

    encoded = ffi.from_buffer(source) if isinstance(source, bytes) else None  # alive while dr_flac reads it
    if encoded is not None:
        flac = lib.ma_dr_flac_open_memory(encoded, len(source), ffi.NULL)
    else:
        flac = lib.ma_dr_flac_open_file(os.fsencode(source), ffi.NULL)
    if flac == ffi.NULL:  # missing, unreadable or not FLAC after all
        return None
    try:
        frames, channels = flac.totalPCMFrameCount, flac.channels  # frames 0: the length is not in the header
        if flac.bitsPerSample != 16 or frames == 0:
            return None
        try:
            samples = np.empty((frames, channels), dtype=np.float32)
        except MemoryError:  # a damaged header's length: libsndfile reports the file
            return None
        decoded = lib.ma_dr_flac_read_pcm_frames_f32(flac, frames, ffi.cast("float *", ffi.from_buffer(samples)))
        return (samples, flac.sampleRate) if decoded == frames else None
    finally:
        lib.ma_dr_flac_close(flac)


def fix_length(samples: np.ndarray, length: int) -> np.ndarray:
    if samples.shape[-1] >= length:
        return np.ascontiguousarray(samples[..., :length])
    pad = [(0, 0)] * (samples.ndim - 1) + [(0, length - samples.shape[-1])]
    return np.pad(samples, pad)


def write_wav_atomic(path: str | os.PathLike, samples: np.ndarray, sample_rate: int) -> None:
    """Write a 16-bit WAV under a temporary name, then rename: no half-written clip is ever seen."""
    import uuid

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")  # unique per writer
    # Encoded in memory, written by Python: a full disk is an OSError naming its cause (ENOSPC), where
    # libsndfile writing the file itself says only "System error.".
    encoded = io.BytesIO()
    soundfile.write(encoded, np.clip(samples, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    try:
        with open(temporary, "wb") as stream:
            stream.write(encoded.getbuffer())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


LEVELS = ("peak", "fixed")  # data.level: each clip's own loudest bin is 0 dB, or one reference for every clip
SCALES = ("db", "ln")  # power in dB (this tool's), or natural-log magnitude (AudioLDM's HiFi-GAN)
LN_FLOOR = math.log(1e-5)  # AudioLDM's log-magnitude floor


@dataclass(frozen=True)
class MelSettings:
    """The representation: how a clip becomes a spectrogram in [0, 1] of (mel bins x frames).

    `resolution` alone (the first keys below) is the N x N setting of earlier versions, with its window
    rule; `mel_bins`/`frames` (0 = `resolution`) set the two sides apart, and then the window defaults to
    4 hops. Keys at their defaults are left out of `to_json`, so earlier caches' keys and models' mel
    settings mean what they meant.
    """

    sample_rate: int = 22050
    clip_seconds: float = 5.0
    resolution: int = 64
    n_fft: int = 0
    top_db: float = 80.0
    mel_bins: int = 0
    frames: int = 0
    hop: int = 0  # 0 = the hop whose frames cover the whole clip
    f_min: float = 0.0
    f_max: float = 0.0  # 0 = Nyquist
    level: str = "peak"
    scale: str = "db"

    @property
    def clip_samples(self) -> int:
        return round(self.sample_rate * self.clip_seconds)

    @property
    def n_mels(self) -> int:
        return self.mel_bins or self.resolution

    @property
    def n_frames(self) -> int:
        return self.frames or self.resolution

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_mels, self.n_frames)

    @property
    def square_legacy(self) -> bool:
        """Set by `resolution` only, as every setting was before mel bins and frames were apart."""
        return not (self.mel_bins or self.frames or self.hop)

    @property
    def hop_length(self) -> int:
        # With centred frames librosa yields 1 + samples // hop frames; this hop gives exactly
        # `n_frames` frames spanning the whole clip (teticio's 64x64 setting covers only 2.97 s).
        return self.hop or math.ceil(self.clip_samples / self.n_frames)

    @property
    def window_length(self) -> int:
        if self.n_fft:
            return self.n_fft
        if self.square_legacy:
            # Earlier rule: at least two hops (windows overlapping by half), rounded up to a power of two.
            return max(1024, 1 << math.ceil(math.log2(2 * self.hop_length)))
        # Four hops, to the nearest power of two: Griffin-Lim needs the overlap (issue 14's measurements).
        return 1 << round(math.log2(4 * self.hop_length))

    def to_json(self) -> str:
        values = asdict(self)
        for key, default in _NEW_KEY_DEFAULTS.items():
            if values[key] == default:
                del values[key]
        return json.dumps(values, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MelSettings:
        return cls(**json.loads(text))


_NEW_KEY_DEFAULTS = {"mel_bins": 0, "frames": 0, "hop": 0, "f_min": 0.0, "f_max": 0.0, "level": "peak", "scale": "db"}


class MelTransform:
    """Clip <-> log-mel spectrogram in [0, 1], shape (mel bins, frames)."""

    def __init__(self, settings: MelSettings):
        import librosa

        self.settings = settings
        self._filters = librosa.filters.mel(
            sr=settings.sample_rate, n_fft=settings.window_length, n_mels=settings.n_mels, fmin=settings.f_min,
            fmax=settings.f_max or None,
        ).astype(np.float32)  # fmt: skip
        # Each FFT bin falls under at most two mel triangles: as a sparse matrix the projection is 4x faster.
        self._sparse_filters = scipy.sparse.csr_matrix(self._filters)
        self._window = torch.hann_window(settings.window_length, periodic=True)  # librosa's default window
        # data.level=fixed (and scale=ln): one reference for every clip, so loudness stays in the data.
        self.fixed_reference = self._full_scale_reference()

    def _full_scale_reference(self) -> float:
        """The mel value (power for db, magnitude for ln) of a full-scale sine at the centre of the strongest band."""
        s = self.settings
        band, bin_index = np.unravel_index(np.argmax(self._filters), self._filters.shape)
        t = np.arange(s.window_length) / s.sample_rate
        sine = np.sin(2 * np.pi * (bin_index * s.sample_rate / s.window_length) * t).astype(np.float32)
        magnitude = np.abs(np.fft.rfft(sine * self._window.numpy()))
        return float(self._filters[band] @ (magnitude if s.scale == "ln" else magnitude**2))

    def spectrogram(self, samples: np.ndarray) -> np.ndarray:
        """Log-mel of one clip (or a batch, leading axes kept), scaled to [0, 1].

        librosa's power mel spectrogram (centred Hann frames, zero padding), equal to it within 1e-5,
        computed for the frames kept only: 0.9 ms per 5 s clip against librosa's 3.6 ms (one thread).
        `scale=db`: 0 = `top_db` below the reference (each clip's peak, or the fixed one); `scale=ln`:
        natural-log magnitude, 0 = AudioLDM's floor ln(1e-5), 1 = the fixed reference.
        """
        s = self.settings
        samples = fix_length(np.asarray(samples, dtype=np.float32), s.clip_samples)
        peak_amplitude = np.abs(samples).max(axis=-1, keepdims=True)  # NaN and inf carry through the max
        if not np.isfinite(peak_amplitude).all():
            raise BadAudioError("samples contain NaN or infinite values")
        if np.any(peak_amplitude > 1.0):  # beyond full scale: the power would overflow float32 (the scale drops out)
            samples = samples / np.maximum(peak_amplitude, 1.0)
        half_window = s.window_length // 2
        bins, count = s.shape
        with torch.inference_mode():  # torch's real FFT: 0.24 ms for a clip's frames, numpy's 1.0 ms
            padded = torch.nn.functional.pad(torch.from_numpy(samples.reshape(-1, s.clip_samples)), (half_window,) * 2)
            frames = padded.unfold(-1, s.window_length, s.hop_length)[:, :count]  # (clips, frames, window)
            if frames.shape[1] < count:  # a hop given (data.preset) whose frames end before the clip does
                frames = torch.nn.functional.pad(frames, (0, 0, 0, count - frames.shape[1]))
            spectrum = torch.fft.rfft(frames * self._window).numpy()
        magnitude = np.abs(spectrum.reshape(-1, spectrum.shape[-1]))  # numpy's complex abs: 5x faster than torch's
        power = magnitude if s.scale == "ln" else magnitude**2
        mel = (self._sparse_filters @ power.T).reshape(bins, -1, count).transpose(1, 0, 2)
        mel = mel.reshape(samples.shape[:-1] + (bins, count))
        if s.scale == "ln":
            ceiling = math.log(self.fixed_reference)
            return ((np.log(np.maximum(mel, 1e-5)) - LN_FLOOR) / (ceiling - LN_FLOOR)).clip(0, 1).astype(np.float32)
        if s.level == "peak":  # per-clip peak reference, as teticio's Mel: loudness is not what the model learns
            reference = np.maximum(mel.max(axis=(-2, -1), keepdims=True), 1e-10)
        else:
            reference = self.fixed_reference
        db = 10.0 * np.log10(np.maximum(mel, 1e-10) / reference)
        return ((np.clip(db, -s.top_db, 0.0) + s.top_db) / s.top_db).astype(np.float32)

    def magnitude_mel(self, spectrograms: torch.Tensor) -> torch.Tensor:
        """The inverse of the [0, 1] scaling: mel magnitudes (ln scale) or powers (db scale), same shape."""
        s = self.settings
        batch = spectrograms.clamp(0, 1)
        if s.scale == "ln":
            return torch.exp(batch * (math.log(self.fixed_reference) - LN_FLOOR) + LN_FLOOR)
        power = torch.pow(10.0, (batch * s.top_db - s.top_db) / 10.0)
        return power if s.level == "peak" else power * self.fixed_reference

    def audio(
        self, spectrograms: torch.Tensor | np.ndarray, iterations: int = 32, seed: int = 0, momentum: float = 0.99
    ) -> np.ndarray:
        """Invert a batch (B, bins, frames) or one spectrogram in [0, 1] to clips of exactly clip_seconds.

        Griffin-Lim with `momentum` (Perraudin et al. 2013's fast Griffin-Lim; torchaudio's default 0.99,
        which every earlier version used; 0 = the original algorithm). `level=peak` clips come out at a
        0.9 peak (the spectrogram carries no absolute loudness); `level=fixed` ones at the level they encode.
        """
        import torchaudio

        s = self.settings
        batch = torch.as_tensor(spectrograms, dtype=torch.float32)
        single = batch.dim() == 2
        batch = batch[None] if single else batch
        device = batch.device
        mel = self.magnitude_mel(batch)
        # Least-squares inverse of the mel filter bank, clamped to valid (non-negative) values.
        filters = torch.from_numpy(self._filters).to(device)
        pinv = torch.linalg.pinv(filters)
        linear = (pinv @ mel).clamp_min(0.0)
        frames = 1 + s.clip_samples // s.hop_length
        if linear.shape[-1] < frames:  # the forward transform dropped trailing frames
            linear = torch.nn.functional.pad(linear, (0, frames - linear.shape[-1]), mode="replicate")
        griffin_lim = torchaudio.transforms.GriffinLim(
            n_fft=s.window_length,
            hop_length=s.hop_length,
            power=1.0 if s.scale == "ln" else 2.0,
            n_iter=iterations,
            momentum=momentum,
            length=s.clip_samples,
            rand_init=True,
        ).to(device)
        # Griffin-Lim starts from random phase (drawn on `device`): seed that one generator and restore it,
        # leaving every other stream alone (training samples mid-run and must stay bit-for-bit resumable).
        with seeded(seed, device), torch.inference_mode():
            clips = griffin_lim(linear[..., :frames])
        if s.level == "peak" and s.scale == "db":
            peak = clips.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8)
            clips = clips / peak * 0.9
        clips = clips.clamp(-1.0, 1.0).cpu().numpy()
        return clips[0] if single else clips
