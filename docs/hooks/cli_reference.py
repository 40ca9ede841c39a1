"""mkdocs hook: fill ``reference/cli.md`` with the help of every sub-command, generated from
the parser (so the reference cannot drift from the code)."""

from __future__ import annotations

import argparse


def _sub_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_markdown() -> str:
    from saeprobe.cli import COMMANDS, build_parser

    parser = build_parser()
    subs = _sub_parsers(parser)
    out = ["```text", parser.format_help().rstrip(), "```"]
    for name in COMMANDS:
        cmd = name.replace("_", "-")
        sub = subs.get(cmd) or subs.get(name)
        if sub is None:
            continue
        out += [f"## saeprobe {cmd}", "", "```text", sub.format_help().rstrip(), "```", ""]
        for inner_name, inner in _sub_parsers(sub).items():
            out += [
                f"### saeprobe {cmd} {inner_name}",
                "",
                "```text",
                inner.format_help().rstrip(),
                "```",
                "",
            ]
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 - mkdocs API
    if page.file.src_uri == "reference/cli.md":
        return markdown.replace("{{ cli_reference }}", cli_markdown())
    return markdown
