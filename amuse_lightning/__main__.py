"""``python -m amuse_lightning fit --config ...``: the same as the ``amuse-lightning`` command."""

import sys

from amuse_lightning.cli import main

if __name__ == "__main__":
    sys.exit(main())
