"""`python -m distlab` and the `distlab` command.

The fork server that local ranks are forked from (runtime/prestart.py) and the process that
draws partition.png (drawer.py) start before the CLI's imports, so that their imports
overlap the command's.
"""

import sys

import distlab.drawer as drawer
from distlab.runtime.environ import launched
from distlab.runtime.prestart import prestart


def main() -> None:
    launched()  # the origin of start-up and wall seconds, taken before anything else runs
    prestart(sys.argv[1:])
    drawer.start(sys.argv[1:])
    from distlab.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
