"""Credentials in URLs never reach what the tool prints: every form of them, and tracebacks too."""

from __future__ import annotations

import pytest

from core.errors import UserError, exit_on_user_error
from core.secrets import has_credentials, redact_text, without_userinfo

SECRET = "s3cr3t"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"http://alice:{SECRET}@host:5000/x", "http://***@host:5000/x"),  # user:password
        (f"https://{SECRET}@host", "https://***@host"),  # token-only
        ("http://alice@host", "http://***@host"),  # user-only
        (f"http://host/api?run=1&token={SECRET}&x=2", "http://host/api?run=1&token=***&x=2"),
        (f"http://host/?access_token={SECRET}", "http://host/?access_token=***"),
        (f"s3://bucket/k?X-Amz-Signature={SECRET}", "s3://bucket/k?X-Amz-Signature=***"),
        (f"failed: 'http://a:{SECRET}@h/api/2.0' then http://b:{SECRET}@g", "failed: 'http://***@h/api/2.0' then http://***@g"),
        (f"http://alice:p@{SECRET}@host/x", "http://***@host/x"),  # an @ in the password
        (f"http://host/?pwd={SECRET}", "http://host/?pwd=***"),
    ],
)  # fmt: skip
def test_every_form_of_url_credential_is_redacted(text, shown):
    assert redact_text(text) == shown and SECRET not in redact_text(text)
    assert has_credentials(text)


def test_only_certain_credentials_stop_a_command():
    # Hidden in messages all the same, but not reasons to refuse (and erase a run): look-alikes.
    for text in ("http://example.org/?keyword=a&author=b", "ssh://git@github.com/o/r", "http://h/?design=x"):
        assert not has_credentials(text), text


def test_text_without_credentials_is_left_as_it_is():
    for text in ("http://127.0.0.1:5000/#/experiments/1", "sqlite:///tmp/mlflow.db", "user@example.org wrote",
                 "train.loss=l1 data.source=/data/esc50"):  # fmt: skip
        assert redact_text(text) == text and not has_credentials(text)
    assert without_userinfo(f"http://alice:{SECRET}@host:5000/x") == "http://host:5000/x"


def test_entry_points_print_errors_and_tracebacks_without_credentials(capsys):
    @exit_on_user_error
    def fails_with(error: Exception) -> None:
        raise error

    with pytest.raises(SystemExit) as stop:
        fails_with(UserError(f"cannot reach http://alice:{SECRET}@host"))
    assert stop.value.code == 2
    with pytest.raises(SystemExit) as stop:  # an unexpected error (MLflow's own) keeps its traceback, redacted
        fails_with(RuntimeError(f"API request to http://{SECRET}@host/api/2.0/mlflow/runs/create failed"))
    assert stop.value.code == 1
    printed = capsys.readouterr().err
    assert "Traceback" in printed and "RuntimeError" in printed and "http://***@host/api" in printed
    assert SECRET not in printed
