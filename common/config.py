"""Config: a flat dict of defaults at the top of each stage, a YAML file, then `key=value` overrides.

    cfg = load_config(DEFAULTS, "configs/toy/refine.yaml", ["lr=1e-5", "objective=rafa"])

Unknown keys fail with the list of valid ones; values are parsed with yaml.safe_load and checked against the
type of the default, so a typo never silently becomes a new setting.
"""
import datetime
import os
import subprocess
import sys
import types

import yaml

from common.checkpoints import atomic_write_text


class UserError(Exception):
    """Bad input, or a state the user must act on: run_cli prints it as one line, without a traceback."""


class ConfigError(UserError, ValueError):
    pass


def run_cli(main, prog=None):
    """Run a command's main(). Errors the user can cause (bad config, files, data; see USER_ERRORS) are printed as
    one line `PROG: error: ...` with exit status 2; POSTCLIP_DEBUG=1 shows the full traceback instead."""
    prog = prog or os.path.basename(sys.argv[0])
    try:
        return main()
    except USER_ERRORS as e:
        if os.environ.get("POSTCLIP_DEBUG") == "1":
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _coerce(key, value, default, source):
    """Make `value` the type of `default` where that is unambiguous; YAML reads `1e-6` as a string."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float) and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    elif isinstance(default, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif isinstance(default, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    elif isinstance(default, str) and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    elif isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return list(value)
    elif isinstance(default, dict) and isinstance(value, dict):
        return value
    raise ConfigError(f"{source}: {key}={value!r} should be a {type(default).__name__} "
                      f"(default {default!r}); fix the value")


def _merge(cfg, defaults, updates, source):
    for key, value in updates.items():
        if key not in defaults:
            valid = ", ".join(sorted(defaults))
            raise ConfigError(f"{source}: unknown key {key!r}. Valid keys: {valid}")
        cfg[key] = _coerce(key, value, defaults[key], source)


def parse_overrides(overrides):
    """['lr=1e-5', 'epochs=2'] -> {'lr': 1e-05, 'epochs': 2}: each value parsed as YAML. Config keys are given
    only as key=value; a `--key` is refused, naming the key=value form."""
    parsed = {}
    for item in overrides:
        if item.startswith("-"):
            key = item.lstrip("-").split("=", 1)[0].replace("-", "_")
            raise ConfigError(f"command line: {item!r} is not an option; config keys are given as key=value "
                              f"({key}=VALUE)")
        if "=" not in item:
            raise ConfigError(f"command line: {item!r} is not key=value (e.g. lr=1e-5)")
        key, value = item.split("=", 1)
        parsed[key] = yaml.safe_load(value) if value != "" else ""
    return parsed


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key written twice is an error (plain YAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"key {key!r} appears twice (line {key_node.start_mark.line + 1}); keep one")
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path):
    """A YAML file as Python data (safe: plain data only), with one-line errors naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=_UniqueKeyLoader) or {}
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None


def load_config(defaults, config_path=None, overrides=()):
    """defaults <- YAML file <- command-line overrides (key=value strings, or a dict parse_overrides returned).
    Returns a SimpleNamespace."""
    cfg = dict(defaults)
    if config_path:
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"config file {config_path} not found; see configs/ for the presets")
        from_file = read_yaml(config_path)
        if not isinstance(from_file, dict):
            raise ConfigError(f"{config_path}: expected a mapping of key: value, got {type(from_file).__name__}")
        _merge(cfg, defaults, from_file, config_path)
    updates = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    _merge(cfg, defaults, updates, "command line")
    return types.SimpleNamespace(**cfg)


USER_ERRORS = (UserError, ValueError, OSError)  # OSError: missing or unreadable files, a full disk


def git_sha():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        sha = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_resolved_config(cfg, out_dir, name="config.yaml"):
    """Write the resolved config, the git SHA and the command line next to a run's outputs (atomically)."""
    os.makedirs(out_dir, exist_ok=True)
    record = dict(vars(cfg))
    record["_git_sha"] = git_sha()
    record["_command"] = " ".join(sys.argv)
    record["_time"] = datetime.datetime.now().isoformat(timespec="seconds")
    path = os.path.join(out_dir, name)
    atomic_write_text(path, yaml.safe_dump(record, sort_keys=True))
    return path
