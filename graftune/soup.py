"""``python -m graftune.soup``: the entry point; the command lives in graftune.commands.soup."""

import sys

from graftune.commands.soup import main

if __name__ == "__main__":
    sys.exit(main())
