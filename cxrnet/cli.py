"""The ``cxrnet`` command: ``cxrnet <command> [Hydra overrides ...]``, the same as ``python -m cxrnet.<module>``.

::

    cxrnet train +experiment=quickstart
    cxrnet predict checkpoint=<ckpt> input=<folder> output_dir=<out>
    cxrnet evaluate checkpoint=<ckpt> data=<name> data.root=<dir>
    cxrnet --completion bash >> ~/.bashrc     # tab completion of commands, config groups and keys

Each command runs its module exactly as ``python -m`` would (its own ``__main__`` block, exit code and
logging), with the remaining arguments as its command line, so every override, ``--help``, ``--cfg job`` and
``-m`` (multirun) works the same. Completion after the command word is Hydra's own (``-sc query=bash``).
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Sequence

from cxrnet import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("cxrnet.train", "train a model (python -m cxrnet.train)"),
    "predict": ("cxrnet.predict", "predict over files or folders: CSV/JSONL rows and overlays"),
    "evaluate": ("cxrnet.evaluate", "metrics with confidence intervals, plots and reports on a split"),
    "calibrate": ("cxrnet.calibrate", "temperature scaling on the validation split, into a new checkpoint"),
    "export": ("cxrnet.export", "export a checkpoint (ONNX, TorchScript, a shareable folder)"),
    "explain": ("cxrnet.explain.evaluate", "score the native explanation and the CAM family on a split"),
    "check": ("cxrnet.data.check", "inspect a dataset: counts per split and class, every problem found"),
    "serve": ("cxrnet.serve", "local web viewer: upload radiographs or browse a predict run (127.0.0.1:8765)"),
}

# Completion in bash (and zsh after `autoload -U bashcompinit && bashcompinit`): the command word from
# COMMANDS, then Hydra's completion for that command, asked with the line as `python -m` would see it.
_BASH_COMPLETION = """\
_cxrnet_completion()
{{
    local cur="${{COMP_WORDS[COMP_CWORD]}}"
    if (( COMP_CWORD == 1 )); then
        COMPREPLY=( $(compgen -W "{commands}" -- "$cur") )
        return
    fi
    local line="${{COMP_LINE#*cxrnet }}"
    local point=$(( COMP_POINT - ${{#COMP_LINE}} + ${{#line}} ))
    local choices
    choices=$(COMP_POINT=$point COMP_LINE="$line" cxrnet "${{COMP_WORDS[1]}}" -sc query=bash 2>/dev/null)
    COMPREPLY=( $(compgen -o nospace -o default -W "$choices" -- "$cur") )
}}
COMP_WORDBREAKS=${{COMP_WORDBREAKS//=}}
complete -o nospace -o default -F _cxrnet_completion cxrnet
"""

USAGE = """\
usage: cxrnet <command> [overrides ...]     (cxrnet <command> --help for its options)
       cxrnet --completion bash|zsh          print a shell completion script
       cxrnet --version

commands:
{commands}

Research software, not a medical device."""


def completion_script(shell: str) -> str:
    """The completion script for ``shell`` (``bash`` or ``zsh``)."""
    script = _BASH_COMPLETION.format(commands=" ".join(COMMANDS))
    if shell == "zsh":
        return "autoload -U +X bashcompinit && bashcompinit\n" + script
    if shell != "bash":
        raise ValueError(f"no completion for shell {shell!r}; choose bash or zsh")
    return script


def usage() -> str:
    width = max(map(len, COMMANDS))
    return USAGE.format(commands="\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cxrnet <command> ...``; returns the exit code of the dispatcher's own errors (a command exits
    with its own code)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"cxrnet {__version__}")
        return 0
    if args[0] == "--completion":
        try:
            print(completion_script(args[1] if len(args) > 1 else "bash"), end="")
        except ValueError as exc:
            print(f"cxrnet: {exc}", file=sys.stderr)
            return 2
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"cxrnet: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = COMMANDS[command][0]
    sys.argv = [f"cxrnet {command}", *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
