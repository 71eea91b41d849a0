"""Run under torchrun: records which spectrograms each process draws in epoch 0 (see test_training)."""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from pathlib import Path

from core.config import load_config
from training.train import build_data, make_accelerator

if __name__ == "__main__":
    config_path, out_dir, *overrides = sys.argv[1:]
    config = load_config(config_path, overrides)
    accelerator = make_accelerator(config)
    stream, loader, batches_per_epoch, _ = build_data(config, accelerator)
    stream.set_epoch(0)
    seen = [
        hashlib.sha1(spectrogram.numpy().tobytes()).hexdigest()
        for batch in itertools.islice(loader, batches_per_epoch)
        for spectrogram in batch["spectrogram"]
    ]
    record = {"world_size": accelerator.num_processes, "batches": batches_per_epoch, "seen": seen}
    Path(out_dir, f"rank{accelerator.process_index}.json").write_text(json.dumps(record))
