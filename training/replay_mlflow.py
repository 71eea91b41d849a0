"""Send what a training job could not send to its MLflow run (the server failed past tracking.deadline_seconds).

    python -m training.replay_mlflow OUTPUT_DIR

Reads OUTPUT_DIR/mlflow_unsent.json (metrics by step, artifact uploads, tags, the run's status), sends it in
order, and removes the file; what still fails stays in it. `--resume latest` does the same first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.errors import UserError, exit_on_user_error
from core.tracking import UNSENT_FILE, configure_tracking, replay_unsent, where_to_look


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.replay_mlflow", description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", help="the training output_dir holding mlflow_unsent.json")
    parser.add_argument(
        "--tracking-uri", default="", help="default: the run's tracking.tracking_uri, else $MLFLOW_TRACKING_URI"
    )
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir)
    unsent = output_dir / UNSENT_FILE
    if not unsent.is_file():
        raise UserError(f"nothing to send: {unsent} does not exist")
    uri = args.tracking_uri
    if not uri and (output_dir / "config.yaml").is_file():
        from core.config import load_config

        recorded = load_config(output_dir / "config.yaml").tracking.tracking_uri
        uri = "" if "***" in recorded else recorded  # a redacted URI: give it with --tracking-uri
    configure_tracking(uri)
    print(replay_unsent(unsent))
    print(where_to_look(json.loads((output_dir / "run.json").read_text())["mlflow_run_id"]))


if __name__ == "__main__":
    main()
