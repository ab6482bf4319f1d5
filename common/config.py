"""Config: a flat dict of defaults at the top of each stage, a YAML file, then `key=value` overrides.

    cfg = load_config(DEFAULTS, "configs/toy/refine.yaml", ["lr=1e-5", "objective=rafa"])

Unknown keys fail with the closest valid key (did you mean ...?) and the list of valid ones; values are parsed with
yaml.safe_load and checked against the type of the default, so a typo never silently becomes a new setting.
"""
import argparse
import ast
import datetime
import difflib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import tokenize
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
    elif isinstance(default, (list, tuple)) and all(isinstance(v, str) for v in default) and isinstance(value, str) \
            and value and not any(c.isspace() for c in value):
        return [part for part in value.split(",") if part]  # names as users type them: short,long
    elif isinstance(default, dict) and isinstance(value, dict):
        return value
    if isinstance(default, (list, tuple)):
        raise ConfigError(f"{source}: {key}={value!r} should be a list, written [a,b] (or a,b for names without "
                          f"spaces; in YAML also [a, b]); default {show_value(default)}")
    raise ConfigError(f"{source}: {key}={value!r} should be a {type(default).__name__} "
                      f"(default {default!r}); fix the value")


def _merge(cfg, defaults, updates, source):
    for key, value in updates.items():
        if key not in defaults:
            valid = ", ".join(sorted(defaults))
            close = difflib.get_close_matches(str(key), defaults, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            raise ConfigError(f"{source}: unknown key {key!r}{hint} Valid keys: {valid}")
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


def configs_of_seeds(cfg, folder_key, seeded_keys):
    """-> the configs of the runs cfg asks for: [cfg], or with seeds=[...] one per seed, run in turn by one process
    (the imports, seconds each, are paid once per row): seed set, seeds=[] and "{seed}" replaced in every key of
    `seeded_keys`. The folder every run writes (`folder_key`: run_dir, out_dir) must hold "{seed}", so that no two
    seeds write one folder; each seed's config is then the one a run of that seed alone has."""
    folder = getattr(cfg, folder_key)
    if not cfg.seeds:
        if "{seed}" in folder:
            raise ConfigError(f"{folder_key}={folder}: \"{{seed}}\" is replaced only with seeds=[...] (e.g. "
                              f"seeds=[0,1,2]); pass the seeds, or a plain {folder_key}")
        return [cfg]
    if not isinstance(cfg.seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in cfg.seeds) \
            or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"seeds={cfg.seeds}: give distinct integers, e.g. seeds=[0,1,2]")
    if "{seed}" not in folder:
        raise ConfigError(f"seeds={cfg.seeds} with {folder_key}={folder}: every seed would write there; put "
                          f"\"{{seed}}\" in it, e.g. {folder_key}={folder.rstrip('/')}/seed{{seed}}")
    return [types.SimpleNamespace(**{**vars(cfg), "seeds": [], "seed": seed, **{
        key: getattr(cfg, key).replace("{seed}", str(seed)) for key in seeded_keys}}) for seed in cfg.seeds]


# --- what --help shows: every key, its default and the comment its line carries ----------------------------------
def documented_keys(path, name="DEFAULTS"):
    """The `NAME = dict(...)` block of the Python file `path`, read as written -> (groups, bases).

    groups: [(heading, [(key, comment)])]: the first heading is the comment above the block, and a comment on a
    line of its own inside the block starts a new group headed by it. A key's comment is the one at the end of its
    line, with the comment-only lines below it that are indented further (its continuation). bases: [(path, name)]
    of the dicts merged in first (`dict(TRAIN_DEFAULTS | PROCLIP_DEFAULTS, key=...)`), found through the file's
    `from MODULE import NAME` lines."""
    with open(path, encoding="utf-8") as f:
        source = f.read()
    tree = ast.parse(source)
    block = next((node.value for node in tree.body if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                  and [getattr(t, "id", None) for t in node.targets] == [name]), None)
    if block is None:
        raise ValueError(f"{path}: no `{name} = dict(...)` block")
    comments = {}  # line number -> (column, text) of its comment
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = (token.start[1], token.string.lstrip("#").strip())
    lines = source.splitlines()
    own_line = lambda n: n in comments and not lines[n - 1][:comments[n][0]].strip()

    above, n = [], block.lineno - 1  # the comment lines right above `NAME = dict(`
    while own_line(n):
        above.insert(0, comments[n][1])
        n -= 1
    groups = [(_joined(above), [])]
    keywords = [k for k in block.keywords if k.arg]
    for i, keyword in enumerate(keywords):
        start = keywords[i - 1].end_lineno + 1 if i else block.lineno + 1
        heading = [comments[n][1] for n in range(start, keyword.lineno)
                   if own_line(n) and comments[n][0] <= keyword.col_offset]
        if heading:
            groups.append((_joined(heading), []))
        text = [comments[n][1] for n in range(keyword.lineno, keyword.end_lineno + 1)
                if n in comments and not own_line(n)]
        n = keyword.end_lineno + 1
        while text and own_line(n) and comments[n][0] > keyword.col_offset:  # its continuation lines
            text.append(comments[n][1])
            n += 1
        groups[-1][1].append((keyword.arg, _joined(text)))

    imported = {alias.asname or alias.name: node.module for node in tree.body if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    bases = []
    for arg in block.args:
        for base in (n.id for n in ast.walk(arg) if isinstance(n, ast.Name)):
            if base in imported:
                bases.append((importlib.util.find_spec(imported[base]).origin, base))
            else:  # defined in the same file
                bases.append((path, base))
    return [g for g in groups if g[1]], bases


def _joined(comments):
    return " ".join(c for c in comments if c.strip("-")).strip()


def key_comments(path, name="DEFAULTS"):
    """{key: comment} of a `NAME = dict(...)` block and of the blocks merged into it (the block's own win)."""
    groups, bases = documented_keys(path, name)
    found = {}
    for base_path, base_name in bases:
        found.update(key_comments(base_path, base_name))
    found.update({key: text for _, entries in groups for key, text in entries if text})
    return found


def show_value(value):
    """A value as it is typed in key=value (YAML): true, "", [short, long], 1e-06."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, str):
        return value if value and _yaml_reads(value) == value else json.dumps(value)
    if isinstance(value, (list, tuple, dict)):
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return repr(value)


def _yaml_reads(text):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def config_help(defaults, path, name="DEFAULTS"):
    """Every key of `defaults` (the `NAME = dict(...)` block of the file `path`) as key=DEFAULT and its comment,
    grouped as the file writes them: the block's own keys first, then each dict merged into it, under its heading.
    A key the block sets again is listed with the block's keys; its comment is the block's, else the merged one's.
    The text of a --help epilog."""
    comments = key_comments(path, name)
    width = max(80, min(shutil.get_terminal_size((120, 24)).columns, 140))
    out = ["config keys, given as key=value (DEFAULTS <- the --config file <- key=value); default, then what it is:"]
    listed = set()

    def add_groups(file, block):
        groups, bases = documented_keys(file, block)
        where = f"{os.path.relpath(file, _ROOT) if file.startswith(_ROOT) else file} {block}"
        for i, (heading, entries) in enumerate(groups):
            entries = [(key, text) for key, text in entries if key in defaults and key not in listed]
            if not entries:
                continue
            if i == 0:
                out.extend(["", *textwrap.wrap(f"{where}: {heading}" if heading else where, width,
                                               subsequent_indent="  ")])
            else:  # a heading inside the block, as the file writes it
                out.extend(textwrap.wrap(heading, width, initial_indent="  # ", subsequent_indent="  # "))
            for key, _ in entries:
                listed.add(key)
                out.extend(_key_line(key, defaults[key], comments.get(key, ""), width))
        for base_file, base_name in bases:
            add_groups(base_file, base_name)

    add_groups(path, name)
    rest = [key for key in defaults if key not in listed]  # keys the block does not spell out (none, by a test)
    if rest:
        out.extend(["", "other keys"] + [line for key in rest for line in _key_line(key, defaults[key], "", width)])
    return "\n".join(out)


class KeysHelpParser(argparse.ArgumentParser):
    """An ArgumentParser whose --help ends with every config key of `defaults` (config_help of the block `name` in
    the file `path`), read from the source only when the help is shown."""

    def __init__(self, *args, defaults, path, name="DEFAULTS", **kwargs):
        self._keys_of = (defaults, path, name)
        super().__init__(*args, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    @property
    def epilog(self):
        return config_help(*self._keys_of)

    @epilog.setter
    def epilog(self, value):  # argparse sets it; the keys are the epilog
        pass


def _key_line(key, value, comment, width, column=34):
    setting = f"  {key}={show_value(value)}"
    if not comment:
        return [setting]
    if len(setting) > column - 2:
        return [setting, *textwrap.wrap(comment, width, initial_indent=" " * column, subsequent_indent=" " * column)]
    return textwrap.wrap(comment, width, initial_indent=setting.ljust(column), subsequent_indent=" " * column)


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
