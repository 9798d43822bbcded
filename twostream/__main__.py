"""``python -m twostream <command> ...``: the ``twostream`` console command (``torchrun -m twostream train ...``)."""

import sys

from twostream.commands import main

if __name__ == "__main__":
    sys.exit(main())
