"""docs/tpu.md as a user reads it: its `minigpt` commands (code blocks and inline code), the
config fields and flags it names, and a checker that parses each with the CLI's own flags.
tests/tpu_doc_test.py checks the page; tests/multihost_test.py runs its two-machine command."""

from __future__ import annotations

import re
import shlex

from conftest import ROOT

DOC = ROOT / "docs/tpu.md"
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)
SECTIONS = ("data", "model", "opt", "train", "sample", "mesh", "dist")
# Placeholders the page asks the reader to fill, and what a parse puts there.
PLACEHOLDERS = {"--config.dist.process_id=N": "--config.dist.process_id=0"}
GCLOUD_FLAGS = {"--worker"}  # inline flags of gcloud's, not of minigpt's


def sections(doc: str) -> dict[str, str]:
    """'## N. Title' -> the text under it (the text before the first heading under '')."""
    parts = re.split(r"^## (.+)$", doc, flags=re.M)
    return {"": parts[0], **dict(zip(parts[1::2], parts[2::2], strict=True))}


def inline_code(doc: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", FENCE.sub("", doc))


def commands(doc: str) -> list[list[str]]:
    """Every `minigpt ...` command in the bash blocks and the inline code, as argv (no
    'minigpt'), cut where the shell takes over (a redirect, &&, &, a closing quote)."""
    texts = [body for lang, body in FENCE.findall(doc) if lang == "bash"]
    texts += [span for span in inline_code(doc) if span.startswith("minigpt ")]
    found = []
    for text in texts:
        lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))  # continuation lines
        for line in joined.splitlines():
            for m in re.finditer(r"(?:^|[\s/])minigpt (\w.*)", line):
                found.append(shlex.split(re.split(r"\s(?:>|&&|&|\|)|['\"]", m.group(1))[0]))
    return found


def _command_name(argv: list[str]) -> tuple[str, list[str]]:
    if argv[0] == "bench" or argv[:2] == ["sweep", "report"]:
        return f"{argv[0]} {argv[1]}", argv[2:]
    return argv[0], argv[1:]


def check_command(argv: list[str]) -> str | None:
    """None if `minigpt ARGV` parses with the CLI's own flags and its config (file, variant and
    every --config.x.y=v override) loads and validates; else what is wrong."""
    from absl import flags

    from minigpt_jax import cli_flags, config_file
    from minigpt_jax import config as config_lib
    from minigpt_jax.errors import UsageError

    name, rest = _command_name(argv)
    if name not in cli_flags.DEFINE:
        return f"no command {name!r}"
    rest = [PLACEHOLDERS.get(a, a) for a in rest]
    args = [f"minigpt {name}", *rest]
    try:
        FLAGS = cli_flags.define(name, args)
        FLAGS(args)
        config = FLAGS["config"].value if "config" in FLAGS else None
        if isinstance(config, config_file.UnloadableConfig):
            raise config.error
        if config is not None:
            config_lib.validate(config)
    except (flags.Error, UsageError, AttributeError, KeyError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def problems(doc: str) -> list[str]:
    """What on the page would not run as written: each command, each inline --config.x.y=v
    and bare flag, each inline section.field name."""
    from minigpt_jax import cli_flags, config

    found = []
    for argv in commands(doc):
        if (why := check_command(argv)) is not None:
            found.append(f"minigpt {shlex.join(argv)}: {why}")
    base = config.base_config()
    defined = [cli_flags.define(c, ["x"]) for c in cli_flags.DEFINE]
    all_flags = {f"--{n}" for f in defined for n in f}
    all_flags |= {f"--no{n}" for f in defined for n in f if f[n].boolean}  # absl's negation
    for span in inline_code(doc):
        if span.startswith("minigpt "):
            continue  # a command: checked above
        for flag in re.findall(r"--config\.[\w.*]+(?:=\S+)?", span):
            if "=" in flag:  # a value too: parse it as an override of a train command
                argv = ["train", "--config", "configs/tpu.py:char", "--workdir", "w", flag]
                if (why := check_command(argv)) is not None:
                    found.append(f"`{span}`: {why}")
            elif flag.removeprefix("--config.") not in _fields(base):
                found.append(f"`{span}`: no config field {flag.removeprefix('--config.')}")
        bare = re.match(r"(--\w+)(?:[= ]|$)", span)
        if bare and bare.group(1) not in all_flags | GCLOUD_FLAGS:
            found.append(f"`{span}`: no minigpt command has the flag {bare.group(1)}")
        if re.fullmatch(rf"(?:{'|'.join(SECTIONS)})\.\w+", span) and span not in _fields(base):
            found.append(f"`{span}`: no config field {span}")
    return found


def _fields(c) -> set[str]:
    return {f"{s}.{f}" for s in SECTIONS for f in c[s]} | {f"{s}.*" for s in SECTIONS}


def with_flag(argv: list[str], flag: str, value: str) -> list[str]:
    """argv with `flag VALUE` (or `flag=VALUE`) given another value; the flag must be there."""
    i = next(i for i, a in enumerate(argv) if a == flag or a.startswith(f"{flag}="))
    if argv[i] == flag:
        return [*argv[: i + 1], value, *argv[i + 2 :]]
    return [*argv[:i], f"{flag}={value}", *argv[i + 1 :]]


def two_machine_command() -> list[str]:
    """The page's one command that names a coordinator: the multi-machine launch of section 7."""
    [argv] = [a for a in commands(DOC.read_text()) if any("dist.coordinator=" in x for x in a)]
    return argv
