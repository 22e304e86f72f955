"""``python -m graftune.tune``: the entry point; the command lives in graftune.commands.tune."""

import sys

from graftune.commands.tune import main

if __name__ == "__main__":
    sys.exit(main())
