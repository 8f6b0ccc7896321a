"""`python -m distlab` and the `distlab` command.

The fork server that local ranks are forked from starts before the CLI's imports
(runtime/prestart.py), so that its imports overlap the command's.
"""

import sys

from distlab.runtime.prestart import prestart


def main() -> None:
    prestart(sys.argv[1:])
    from distlab.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
