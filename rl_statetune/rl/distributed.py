"""``python -m rl_statetune.rl.distributed --config X.yaml``: an alias of ``rl-statetune rl --ray``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from rl_statetune.cli import main as cli_main

    return cli_main(["rl", "--ray", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
