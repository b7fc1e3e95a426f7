"""C{python -m twistkv.cli ...}: the same as the C{twistkv} script."""

import sys

from twistkv.cli import main

if __name__ == "__main__":
    sys.exit(main())
