import re
from pathlib import Path

import pytest

from node.config import FIELDS, NOT_NODE_OPTIONS, Config, ConfigError, load


def test_defaults():
    cfg = load(env={})
    assert (cfg.bind, cfg.port, cfg.session_timeout) == ("127.0.0.1", 8086, 1440)


def test_file_then_environment_then_flags(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('port = 9000\nsession-timeout = 60\nlock_lease = 5\nplugins = ["stats"]\n')
    cfg = load(str(f), env={"MSESSION_PORT": "9001", "MSESSION_PLUGINS": "stats,x:Y", "OTHER": "1"}, overrides={"port": 9002, "bind": None})
    assert cfg.port == 9002
    assert cfg.session_timeout == 60
    assert cfg.lock_lease == 5.0
    assert cfg.plugins == ["stats", "x:Y"]
    assert cfg.bind == "127.0.0.1"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"MSESSION_PORT": "http"}, "cannot use"),
        ({"MSESSION_PORT": "70000"}, "port must be"),
        ({"MSESSION_NOPE": "1"}, "unknown option"),
        ({"MSESSION_MAX_FRAME": "10"}, "max_frame"),
        ({"MSESSION_SESSION_TIMEOUT": "0"}, "must be positive"),
        ({"MSESSION_LOG_LEVEL": "loud"}, "log_level"),
    ],
)
def test_bad_values_are_clear_errors(env, message):
    with pytest.raises(ConfigError, match=message):
        load(env=env)


def test_unreadable_or_invalid_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load(str(tmp_path / "missing.toml"), env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("port = = 3")
    with pytest.raises(ConfigError, match="bad.toml"):
        load(str(bad), env={})


def test_client_variables_are_not_server_options():
    assert load(env={"MSESSION_NODES": "a:1", "MSESSION_CONFIG": "x"}) == Config()


def test_the_php_handlers_environment_does_not_stop_a_node():
    """A node may run where the PHP handler's MSESSION_* settings are exported:
    those that are not node options are ignored (they made serve exit 2);
    LOCK_LEASE and LOCK_WAIT mean the same for both and set the node's too."""
    php = {"MSESSION_MODE": "merge", "MSESSION_TIMEOUT": "5", "MSESSION_ROUTE": "0",
           "MSESSION_PERSISTENT": "1", "MSESSION_SID_LENGTH": "40"}
    assert load(env=php) == Config()
    assert load(env={**php, "MSESSION_LOCK_LEASE": "60", "MSESSION_LOCK_WAIT": "10"}) == Config(lock_lease=60.0, lock_wait=10.0)
    # every setting the handler reads from the environment is either ignored or a node option
    handler = (Path(__file__).resolve().parent.parent / "clients/php/src/SessionHandler.php").read_text()
    names = set(re.findall(r"'(MSESSION_[A-Z_]+)'", handler))
    assert names and all(n in NOT_NODE_OPTIONS or n[len("MSESSION_"):].lower() in FIELDS for n in names), names


@pytest.mark.parametrize(
    "env",
    [
        {"MSESSION_LOCK_WAIT": "400"},
        {"MSESSION_LOCK_LEASE": "4000"},
        {"MSESSION_MAX_UNIQ_LEN": "300"},
        {"MSESSION_SESSION_TIMEOUT": "99999999999"},
    ],
)
def test_defaults_must_fit_their_limits(env):
    with pytest.raises(ConfigError, match="must not exceed"):
        load(env=env)


def test_a_loaded_config_is_frozen_and_changes_by_replacement():
    import dataclasses

    cfg = load(env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_timeout = 10
    other = dataclasses.replace(cfg, max_timeout=10, session_timeout=10).validate()
    assert (other.max_timeout, cfg.max_timeout) == (10, 365 * 86400)
    with pytest.raises(ConfigError, match="must not exceed"):
        dataclasses.replace(cfg, max_timeout=10).validate()
