"""``python -m steerlab.cli``: the same as the ``steerlab`` command."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
