"""Parsing of the `picserve` command line (no server, no database)."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from picserve import cli
from picserve.cli.generate import lora_ref

runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(cli.app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "worker", "keys", "models", "generate", "demo"):
        assert command in result.output


@pytest.mark.parametrize(
    ("item", "ref"),
    [
        ("style", {"ModelCode": "style"}),
        ("style:0.5", {"ModelCode": "style", "InferenceParams": {"LoraWeight": 0.5}}),
        ("x:-1", {"ModelCode": "x", "InferenceParams": {"LoraWeight": -1.0}}),
    ],
)
def test_lora_values(item, ref):
    assert lora_ref(item) == ref


@pytest.mark.parametrize("item", ["style:heavy", ":0.5"])
def test_bad_lora_values_are_refused(item):
    with pytest.raises(typer.BadParameter):
        lora_ref(item)


def test_generate_refuses_a_bad_lora_before_any_network():
    args = ["generate", "cat", "--url", "http://127.0.0.1:9", "--public-key", "p", "--private-key", "k"]
    result = runner.invoke(cli.app, [*args, "--model", "m", "--lora", "style:heavy"])
    assert result.exit_code == 2 and "must be a number" in result.output


def test_generate_reports_an_unreachable_server():
    args = ["generate", "cat", "--url", "http://127.0.0.1:9", "--public-key", "p", "--private-key", "k"]
    result = runner.invoke(cli.app, [*args, "--model", "m"])
    assert result.exit_code == 3 and "unreachable:" in result.output  # exit codes: see picserve/cli/watch.py
