"""Write the settings reference of docs/configuration.md from the one table,
`carbonspan.config.Settings`.

    python docs/gen_settings.py           # rewrite the table in place
    python docs/gen_settings.py --check   # exit 1 if it is out of date

The table lies between the two marker lines below; everything else in the
page is prose.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from carbonspan.config import ENV_PREFIX, Settings

PAGE = Path(__file__).with_name("configuration.md")
BEGIN = "<!-- settings table: written by docs/gen_settings.py -->"
END = "<!-- end of settings table -->"


def table() -> str:
    """The reference table, one row per setting, in the table's order."""
    rows = [
        "| keyword | environment variable | type | default | accepted values |",
        "|---|---|---|---|---|",
    ]
    for f in fields(Settings):
        meta = f.metadata
        env = f"`{ENV_PREFIX}{f.name.upper()}`" if meta["parse"] else "keyword only"
        rows.append(
            f"| `{f.name}` | {env} | {meta['kind']} | {meta['shown']} "
            f"| {meta['accepted']} |"
        )
    return "\n".join(rows)


def written(page: str) -> str:
    """`page` with its table replaced by the current one."""
    head, rest = page.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    page = PAGE.read_text(encoding="utf-8")
    new = written(page)
    if args.check:
        if new != page:
            print(f"{PAGE} is out of date: run python docs/gen_settings.py")
            return 1
        return 0
    PAGE.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
