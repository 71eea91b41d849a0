"""`make demo`: the whole tool on a tiny model, on the CPU, in a few minutes.

Finds ESC-50 (given, beside the project, or fetched into data/), trains configs/tiny.yaml,
generates clips of every class, scores them with the offline scorer (and VGGish/CLAP when their
weights are present), logs it all to MLflow and says how to look at it.
"""

from __future__ import annotations

import argparse
import time
import urllib.request
import zipfile
from pathlib import Path

from core.config import load_config, sample_seed
from core.errors import UserError, exit_on_user_error
from core.esc50 import is_esc50_folder

REPO = Path(__file__).resolve().parent
BESIDE = REPO.parent / "shared" / "data" / "esc50-mini"
FETCHED = REPO / "data" / "ESC-50-master"
ARCHIVE_URL = "https://github.com/karoldvl/ESC-50/archive/master.zip"
HUB_ID = "ashraq/esc50"


def find_data(given: str | None) -> str:
    """A user's source, else esc50-mini beside the project, else ESC-50 fetched into data/."""
    if given:
        return given
    for folder in (BESIDE, FETCHED):
        if is_esc50_folder(str(folder)):
            return str(folder)
    print(f"No ESC-50 found; fetching the official archive into {FETCHED.parent} ...")
    try:
        FETCHED.parent.mkdir(parents=True, exist_ok=True)
        archive = FETCHED.parent / "ESC-50-master.zip"
        urllib.request.urlretrieve(ARCHIVE_URL, archive)
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(FETCHED.parent)
        return str(FETCHED)
    except Exception as error:
        print(f"  could not fetch it ({' '.join(str(error).split())[:100]}); trying the hub dataset {HUB_ID}")
    try:
        from core.esc50 import read_clips

        read_clips(HUB_ID)
        return HUB_ID
    except UserError:
        raise UserError(
            "no ESC-50 data and no way to fetch it (offline?): pass --data PATH_TO_ESC-50 (a folder with audio/ and "
            f"meta/esc50.csv), put ESC-50 at {FETCHED}, or run online so the demo fetches it"
        ) from None


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="ESC-50 folder or hub dataset id (default: ../shared/data/esc50-mini)")
    parser.add_argument("--steps", type=int, default=1500, help="training steps (default 1500, a few CPU minutes)")
    parser.add_argument("--per-class", type=int, default=2, help="generated clips per class (default 2)")
    args = parser.parse_args(argv)

    from evaluation.evaluate import EvaluationRequest, evaluate
    from evaluation.scoring import EvalOptions
    from training.train import train

    source = find_data(args.data)
    run_dir = REPO / "outputs" / "demo" / time.strftime("%Y%m%d-%H%M%S")
    config = load_config(
        REPO / "configs" / "tiny.yaml",
        [f"output_dir={run_dir}", f"data.source={source}", f"train.max_steps={args.steps}", "train.sample_every=200"],
    )
    print(f"\n== 1/2 training {run_dir} on {source}")
    result = train(config)
    print(f"\n== 2/2 generating {args.per_class} clips of each of the 50 classes and scoring them against real clips")
    print("   the model never heard (offline scorer; VGGish/CLAP need their weights)")
    # Stochastic DDPM sampling (configs/tiny.yaml's sample.scheduler): on a model this small and briefly
    # trained, deterministic DDIM drifts to the average spectrogram (seen here: a third of the real data's spread).
    outcome = evaluate(
        EvaluationRequest(
            model=str(result.model_dir),
            generated=str(run_dir / "generated"),
            generation={"per_class": args.per_class, "steps": 100, "seed": sample_seed(config)},
            reference=source,
            metrics=["esc", "fad", "clap"],
            out=str(run_dir / "evaluation"),
            run_id=result.run_id,
            options=EvalOptions(optional_metrics=True),
        )
    )
    from core.tracking import where_to_look

    print(f"\ndemo done. output: {run_dir} (model/, samples/, generated/; tables and figures in {outcome.out_dir})")
    print(where_to_look(result.run_id, "MLflow run (samples/, model/, evaluation/ with tables, figures and clips)"))


if __name__ == "__main__":
    main()
