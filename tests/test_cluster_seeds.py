"""The one parser of a seed's host:port (node/config.py), used by the
configuration's checks and by the cluster when it resolves its seeds."""

from __future__ import annotations

import pytest

from node.config import ConfigError, load, parse_seed


@pytest.mark.parametrize("text, expected", [
    ("10.0.0.1:7946", ("10.0.0.1", 7946)),
    ("h3:1", ("h3", 1)),
    ("web-1.example.org:65535", ("web-1.example.org", 65535)),
    ("[::1]:7946", ("::1", 7946)),
    ("::1:7946", ("::1", 7946)),  # the port is after the last colon
    ("h:007", ("h", 7)),
])
def test_a_seed_is_host_and_port(text, expected):
    assert parse_seed(text) == expected


@pytest.mark.parametrize("text", [
    "", "nonsense", "h:", ":7946", "[]:7946", "h:0", "h:65536", "h:notaport",
    "h:-1", "h:+1", "h: 1", "h:1_0", "h:1.5", "h:\N{SUPERSCRIPT TWO}", "h:\N{FULLWIDTH DIGIT ONE}",
    # brackets: only one matching pair around the whole host
    "[h:1", "h]:1", "[[h]]:1", "[h]]:1", "[[h]:1", "[h]x:1", "x[h]:1", "[::1:7946", "::1]:7946", "[]]:1", "[:1",
])
def test_anything_else_is_a_value_error(text):
    with pytest.raises(ValueError):
        parse_seed(text)


@pytest.mark.parametrize("seed", ["[]:7946", "[h:1", "h]:1", "[[h]]:1", "h:0", "h:\N{SUPERSCRIPT TWO}", "h:65536"])
def test_the_configuration_refuses_what_the_parser_refuses(seed):
    # (A superscript digit passed str.isdigit() and then crashed int().)
    with pytest.raises(ConfigError, match="must be host:port"):
        load(env={"MSESSION_SEEDS": f"ok:1,{seed}"})


def test_the_configuration_keeps_the_seeds_as_written():
    assert load(env={"MSESSION_SEEDS": "[::1]:7946, h:2"}).seeds == ["[::1]:7946", "h:2"]
