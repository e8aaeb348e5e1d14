"""``python -m amuse_lightning.cli``: the same as the ``amuse-lightning`` command."""

import sys

from amuse_lightning.cli.commands import main

if __name__ == "__main__":
    sys.exit(main())
