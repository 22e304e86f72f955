"""``python -m graftune.run``: the entry point; the command lives in graftune.commands.run."""

import sys

from graftune.commands.run import main

if __name__ == "__main__":
    sys.exit(main())
