"""``python -m graftune.reproduce``: the entry point; the command lives in graftune.commands.reproduce."""

import sys

from graftune.commands.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
